"""One validation entry point: ``tweakline validate`` and the webhook's intake accept the same files.

The corpus (``corpus/``) holds good tweak files and bad ones covering structure, estimator,
search, dataset and deploy-target problems; each bad file says in its first line what is wrong with it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import run_cli
from tests.webhook.bitbucket_fake import FakeBitbucket
from tests.webhook.test_webhook import REPO, branch_change, commit, deliver, push_payload
from tweakline.cli.main import app as cli_app
from tweakline.webhook.app import Webhook

CORPUS = Path(__file__).parent / "corpus"
FILES = sorted(CORPUS.glob("*.tweak.yaml"))
GOOD = {f.name for f in FILES if f.name.startswith("good-")}
BAD = {f.name for f in FILES if f.name.startswith("bad-")}


def test_the_corpus_covers_every_kind_of_problem() -> None:
    assert len(GOOD) >= 3 and len(BAD) >= 12
    for kind in ("structure", "estimator", "search", "dataset", "deploy"):
        assert any(name.startswith(f"bad-{kind}-") for name in BAD), kind


def cli_accepts(path: Path) -> bool:
    """``tweakline validate PATH`` in this process (the command's own code; imports paid once)."""
    result = CliRunner().invoke(cli_app, ["validate", str(path)])
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code == 0


def test_validate_as_a_process_says_one_thing_per_problem_and_no_traceback() -> None:
    bad = run_cli("validate", str(CORPUS / "bad-mixed-structure-and-estimator.tweak.yaml"))
    good = run_cli("validate", str(CORPUS / sorted(GOOD)[0]))
    assert (bad.code, good.code) == (2, 0), (bad.stderr, good.stderr)
    assert "Traceback" not in bad.stderr + good.stderr


async def test_validate_and_the_webhook_accept_exactly_the_same_files(webhook: Webhook, bitbucket: FakeBitbucket) -> None:
    by_cli = {f.name for f in FILES if cli_accepts(f)}
    assert by_cli == GOOD

    # The same files pushed to a repository: the webhook fetches each at the commit and decides.
    new, old = commit(), commit()
    for path in CORPUS.rglob("*"):
        if path.is_file():
            bitbucket.files[(REPO, new, f"corpus/{path.relative_to(CORPUS).as_posix()}")] = path.read_bytes()
    bitbucket.diffstats[(REPO, f"{new}..{old}")] = [("modified", f"corpus/{f.name}") for f in FILES]
    response = await deliver(webhook, "repo:push", push_payload(branch_change("main", new, old)))
    assert response.status_code == 202, response.text  # handled: invalid files get a FAILED status, not a retry
    body = response.json()
    by_webhook = {Path(s["path"]).name for s in body["submitted"]}
    refused = {Path(i["path"]).name: i["problems"] for i in body["invalid"]}
    assert by_webhook == by_cli
    assert set(refused) == BAD
    assert all(refused.values()), refused  # every refusal says why


def test_validate_lists_structural_and_estimator_problems_together() -> None:
    result = run_cli("validate", str(CORPUS / "bad-mixed-structure-and-estimator.tweak.yaml"))
    assert result.code == 2
    said = " ".join(result.stderr.split())
    assert "3 problem(s)" in said, said
    assert "metadata.name: String should match pattern" in said and "got 'Mixed_Case'" in said  # structure
    assert "spec.budget.max_trials: Input should be greater than 0, got 0" in said  # structure
    assert "spec.model.fixed.nonsense: SVC has no parameter 'nonsense'" in said  # estimator (scikit-learn)


def test_a_section_that_fails_its_structure_is_not_checked_again(tmp_path: Path) -> None:
    # The broken section is reported once (by pydantic); the sound ones are still checked.
    from tweakline.validation import inspect

    text = (
        (CORPUS / "bad-estimator-unknown-param.tweak.yaml")
        .read_text()
        .replace("algorithm: random", "algorithm: random, sampler_options: {}")
        .replace("metric: accuracy", "metric: r2")
    )
    tweak, problems = inspect(text, ["sklearn."])
    assert tweak is None
    paths = [p.path for p in problems]
    assert paths[0] == "spec.search.sampler_options"  # structural: an unknown field of search
    assert "spec.objective.metric" in paths  # r2 for a classifier: needs scikit-learn to know
    assert "spec.search.space.gamma2" not in paths  # its section did not parse: not guessed at


def test_the_entry_point_refuses_a_search_this_installation_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # Until now the webhook ran check_spec only, so `algorithm: gp` without PyTorch was accepted
    # with a 202 and failed later in the scheduler. The one entry point runs check_search too.
    from tweakline.search.algorithms import GpSearch
    from tweakline.validation import inspect

    monkeypatch.setattr(GpSearch, "unavailable", lambda self: "gp needs PyTorch, which is not installed here")
    text = (CORPUS / "good-iris-knn.tweak.yaml").read_text().replace("algorithm: random", "algorithm: gp")
    _, problems = inspect(text, ["sklearn."], None, source="acme/models@abc:iris.tweak.yaml")
    assert [str(p) for p in problems] == ["spec.search.algorithm: gp needs PyTorch, which is not installed here"]


async def test_the_webhook_refuses_gp_without_pytorch_with_a_failed_status(
    webhook: Webhook, bitbucket: FakeBitbucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tweakline.search.algorithms import GpSearch

    monkeypatch.setattr(GpSearch, "unavailable", lambda self: "gp needs PyTorch, which is not installed here")
    new, old = commit(), commit()
    text = (CORPUS / "good-iris-knn.tweak.yaml").read_text().replace("algorithm: random", "algorithm: gp")
    bitbucket.files[(REPO, new, "iris.tweak.yaml")] = text.encode()
    bitbucket.diffstats[(REPO, f"{new}..{old}")] = [("modified", "iris.tweak.yaml")]
    response = await deliver(webhook, "repo:push", push_payload(branch_change("main", new, old)))
    assert response.status_code == 200, response.text  # handled; the commit gets a FAILED status
    assert response.json()["invalid"][0]["problems"] == ["spec.search.algorithm: gp needs PyTorch, which is not installed here"]
