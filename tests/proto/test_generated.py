"""The generated contract documents are committed and must match the code that defines them."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tweakline.cli import generate
from tweakline.proto.messages import PAYLOADS
from tweakline.proto.subjects import Subject

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.tweak.yaml"))


def test_committed_artefacts_match_a_fresh_generation() -> None:
    stale = generate.stale_artefacts(ROOT)
    assert stale == [], f"regenerate with: python -m tweakline.cli.generate ({stale})"


def test_check_mode_reports_a_stale_artefact(tmp_path: Path) -> None:
    for relative, (render, _write) in generate.ARTEFACTS.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(render())
    assert generate.main(["--root", str(tmp_path), "--check"]) == 0
    (tmp_path / generate.ASYNCAPI).write_text("asyncapi: 3.0.0\n")
    assert generate.main(["--root", str(tmp_path), "--check"]) == 1


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_json_schema(example: Path) -> None:
    schema = json.loads((ROOT / generate.TWEAKFILE_SCHEMA).read_text())
    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(example.read_text()))


def test_json_schema_rejects_unknown_keys_and_wrong_kind() -> None:
    schema = json.loads((ROOT / generate.TWEAKFILE_SCHEMA).read_text())
    document = yaml.safe_load(EXAMPLES[0].read_text())
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors(document))
    assert list(validator.iter_errors({**document, "kind": "Deployment"}))
    assert list(validator.iter_errors({**document, "spec": {**document["spec"], "surprise": 1}}))


def test_asyncapi_describes_every_subject_family_and_who_may_use_it() -> None:
    doc = yaml.safe_load((ROOT / generate.ASYNCAPI).read_text())
    assert doc["asyncapi"].startswith("3.")
    # every address is <family>.{...}; trial requests carry the runner pool before the experiment id
    addresses = {channel["address"].rsplit(".", 1)[0].removesuffix(".{pool}") for channel in doc["channels"].values()}
    assert doc["channels"]["trials_requested"]["address"] == "tweakline.trials.requested.{pool}.{experiment_id}"
    assert addresses == {family.value for family in Subject} == {family.value for family in PAYLOADS}
    operations = {(op["summary"].split()[0], op["action"], op["channel"]["$ref"]) for op in doc["operations"].values()}
    assert ("trial-runner", "receive", "#/channels/trials_requested") in operations
    assert ("scheduler", "send", "#/channels/trials_requested") in operations
    assert ("deployer", "send", "#/channels/deployments_completed") in operations
    # least privilege shows in the document too: a runner never sends a deployment
    assert not any(who == "trial-runner" and ref.endswith("deployments_completed") for who, _, ref in operations)
    for message in doc["components"]["messages"].values():
        name = message["payload"]["$ref"].rsplit("/", 1)[-1]
        assert name in doc["components"]["schemas"]
