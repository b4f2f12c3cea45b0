"""The webhook ships a code trainer's folder at the pushed commit, as `tweakline submit` ships it from disk.

The files come from the Bitbucket fake's `src` endpoint, which answers a directory with Bitbucket's
documented paginated listing (`commit_directory` / `commit_file` entries, paths from the
repository's root, `next` links) and a file with its raw bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.webhook.bitbucket_fake import FakeBitbucket
from tests.webhook.test_webhook import (
    REPO,
    SECRET,
    TOKEN,
    _secret_file,
    branch_change,
    commit,
    deliver,
    push_payload,
    submitted_for,
)
from tweakline.ml.trainers.bundles import bundle_digest, pack_code, unpack_code
from tweakline.proto.permissions import Identity
from tweakline.runtime.bus import connect
from tweakline.runtime.objects import get_dataset
from tweakline.webhook.app import Webhook, WebhookSettings, build

TRAINER = """\
apiVersion: tweakline/v1
kind: Experiment
metadata: {name: own-code}
spec:
  dataset: {source: "sklearn:iris"}
  model:
    trainer: {callable: "train.py:fit", steps: 2}
  search:
    algorithm: random
    space: {lr: {type: float, low: 0.001, high: 0.1, log: true}}
  objective: {metric: accuracy}
  budget: {max_trials: 2}
"""

CODE = {
    "train.py": b"from lib.helpers import scale\n\ndef fit(params, ctx):\n    return scale(ctx)\n",
    "lib/helpers.py": b"def scale(ctx):\n    return ctx\n",
    "lib/__init__.py": b"",
    "README.md": b"# the model's own code\n",
}


@pytest.fixture
async def code_webhook(nats, bitbucket: FakeBitbucket, tmp_path: Path) -> AsyncIterator[Webhook]:
    """The webhook of a platform whose operators allow code trainers for this repository."""
    hook = WebhookSettings(
        webhook_port=0,
        webhook_secret=SecretStr(SECRET),
        bitbucket_api_url=f"{bitbucket.url}/2.0",
        bitbucket_token_file=_secret_file(tmp_path, TOKEN),
        webhook_report_dir=tmp_path / "reports",
        webhook_tweak_paths=[],
    )
    settings = nats.settings(Identity.WEBHOOK).model_copy(update={"code_trainers": [REPO]})
    app, service = build(settings, hook)
    async with app.broker:
        await app.broker.start()
        await service.start()
        yield service
        await service.stop()


def push(bitbucket: FakeBitbucket, files: dict[str, bytes]) -> tuple[str, str]:
    new, old = commit(), commit()
    for path, data in files.items():
        bitbucket.files[(REPO, new, path)] = data
    bitbucket.diffstats[(REPO, f"{new}..{old}")] = [("modified", "models/own.tweak.yaml")]
    return new, old


async def test_a_pushed_code_trainer_is_shipped_as_the_bundle_submit_would_make(
    nats, code_webhook: Webhook, bitbucket: FakeBitbucket, tmp_path: Path
) -> None:
    files = {"models/own.tweak.yaml": TRAINER.encode()} | {f"models/{k}": v for k, v in CODE.items()}
    files["models/__pycache__/train.cpython-311.pyc"] = b"\x00stale"  # left out, as a bundle leaves it out
    files["models/link.py"] = b"../../etc/passwd"  # a symbolic link: listed with the link attribute, left out
    files["other/secret.txt"] = b"not part of the code folder"
    new, old = push(bitbucket, files)
    bitbucket.links.add((REPO, new, "models/link.py"))

    response = await deliver(code_webhook, "repo:push", push_payload(branch_change("main", new, old)))
    assert response.status_code == 202, response.text
    [message] = await submitted_for(nats, {new})
    code = message.tweak.spec.model.trainer.code
    digest = bundle_digest(code)
    assert digest is not None, code

    # the same folder (the tweak file is in it) packed from disk, as `tweakline submit` does: the same hash
    folder = CODE | {"own.tweak.yaml": TRAINER.encode()}
    local = tmp_path / "checkout"
    for relative, data in folder.items():
        (local / relative).parent.mkdir(parents=True, exist_ok=True)
        (local / relative).write_bytes(data)
    assert pack_code(local)[1] == digest

    # and the runners find it in the object store by that hash, with exactly the code folder's files
    nc = await connect(nats.settings(Identity.ADMIN), "test-code")
    try:
        stored = await get_dataset(nc.jetstream(), digest)
    finally:
        await nc.close()
    unpacked = unpack_code(stored, digest, tmp_path / "cache")
    assert sorted(p.relative_to(unpacked).as_posix() for p in unpacked.rglob("*") if p.is_file()) == sorted(folder)

    listed = [c for c in bitbucket.calls_to(f"/src/{new}/") if c.path.endswith("/")]
    assert {c.path for c in listed} == {
        f"/2.0/repositories/{REPO}/src/{new}/models/",
        f"/2.0/repositories/{REPO}/src/{new}/models/lib/",
    }
    assert any("page=2" in c.query for c in listed)  # the listing's pages were followed
    assert not bitbucket.calls_to("__pycache__") and not bitbucket.calls_to("link.py") and not bitbucket.calls_to("other/")


async def test_a_code_folder_missing_at_the_commit_fails_the_build_and_submits_nothing(
    nats, code_webhook: Webhook, bitbucket: FakeBitbucket
) -> None:
    tweak = TRAINER.replace("steps: 2}", "steps: 2, code: ../trainers}")
    new, old = push(bitbucket, {"models/own.tweak.yaml": tweak.encode(), "models/train.py": CODE["train.py"]})
    response = await deliver(code_webhook, "repo:push", push_payload(branch_change("main", new, old)))
    assert response.status_code == 200, response.text  # answered, nothing submitted
    [invalid] = response.json()["invalid"]
    assert invalid["problems"] == [f"spec.model.trainer.code: no folder trainers at commit {new[:12]}"]
    assert await submitted_for(nats, {new}) == []
    [status] = await bitbucket.wait_for(f"/commit/{new}/statuses/build", "POST")
    assert status.json["state"] == "FAILED"
    assert "spec.model.trainer.code" in status.json["description"] and "no folder trainers" in status.json["description"]
