"""The Bitbucket webhook on a real nats-server (mTLS) and a local server playing the Bitbucket API.

Deliveries are built from Bitbucket Cloud's documented payloads and posted over HTTP to the
running intake; what reaches the bus is read back from the JetStream event log, and every call
to "Bitbucket" is checked for its path, headers and body.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sklearn.datasets import load_wine

from tests.webhook.bitbucket_fake import FakeBitbucket
from tweakline.proto.messages import (
    Decision,
    DeploymentCompleted,
    DeploymentStatus,
    EvaluationCompleted,
    ExperimentCompleted,
    ExperimentStatus,
    ExperimentSubmitted,
    Source,
    TrialRecord,
    TrialStatus,
    msg_id,
)
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Stream, Subject, all_of, subject_for
from tweakline.proto.tweakfile import DeploySpec
from tweakline.runtime.bus import connect
from tweakline.webhook.app import Webhook, WebhookSettings, build, signature_ok

SECRET = "s3cret-for-tests"
TOKEN = "bb-token-for-tests"
REPO = "acme/models"

IRIS = """\
apiVersion: tweakline/v1
kind: Experiment
metadata: {name: iris-knn}
spec:
  dataset: {source: "sklearn:iris"}
  model: {estimator: sklearn.neighbors.KNeighborsClassifier}
  search:
    algorithm: random
    space: {n_neighbors: {type: int, low: 1, high: 15}}
  objective: {metric: accuracy, cv: 3}
  budget: {max_trials: 4}
"""
WINE = """\
apiVersion: tweakline/v1
kind: Experiment
metadata: {name: wine-lr}
spec:
  dataset: {source: "csv:data/wine.csv", target: cultivar}
  model: {estimator: sklearn.linear_model.LogisticRegression, fixed: {max_iter: 300}}
  search:
    algorithm: random
    space: {C: {type: float, low: 0.01, high: 10, log: true}}
  objective: {metric: accuracy, cv: 3}
  budget: {max_trials: 4}
"""
BROKEN = IRIS.replace("iris-knn", "broken").replace("sklearn.neighbors.KNeighborsClassifier", "os.system")


def wine_csv() -> bytes:
    data = load_wine()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*data.feature_names, "cultivar"])
    for row, label in zip(data.data, data.target, strict=True):
        writer.writerow([*row, int(label)])
    return out.getvalue().encode()


def commit() -> str:
    return (uuid.uuid4().hex + uuid.uuid4().hex)[:40]


# ----------------------------------------------------------------------- documented payloads


def branch_change(name: str, new: str | None, old: str | None, kind: str = "branch") -> dict[str, Any]:
    def ref(hash_: str) -> dict[str, Any]:
        return {
            "type": kind,
            "name": name,
            "target": {
                "type": "commit",
                "hash": hash_,
                "author": {"raw": "Jane Doe <jane@acme.test>", "user": {"display_name": "Jane Doe", "type": "user"}},
                "message": "tune the models\n",
            },
            "links": {"html": {"href": f"https://bitbucket.org/{REPO}/branch/{name}"}},
        }

    return {
        "new": ref(new) if new else None,
        "old": ref(old) if old else None,
        "created": old is None,
        "closed": new is None,
        "forced": False,
        "commits": [{"hash": new, "type": "commit"}] if new else [],
        "truncated": False,
    }


def push_payload(*changes: dict[str, Any]) -> dict[str, Any]:
    return {
        "actor": {"type": "user", "display_name": "CI Robot", "nickname": "robot"},
        "repository": {"type": "repository", "name": "models", "full_name": REPO, "is_private": True},
        "push": {"changes": list(changes)},
    }


def pr_payload(number: int, head: str, branch: str = "feature/tune") -> dict[str, Any]:
    return {
        "actor": {"type": "user", "display_name": "Jane Doe"},
        "repository": {"type": "repository", "name": "models", "full_name": REPO},
        "pullrequest": {
            "id": number,
            "title": "Tune the iris model",
            "state": "OPEN",
            "author": {"type": "user", "display_name": "Jane Doe"},
            "source": {"branch": {"name": branch}, "commit": {"hash": head}, "repository": {"full_name": REPO}},
            "destination": {"branch": {"name": "main"}, "commit": {"hash": "0" * 12}, "repository": {"full_name": REPO}},
        },
    }


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture
async def bitbucket() -> AsyncIterator[FakeBitbucket]:
    fake = FakeBitbucket()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def webhook(nats, bitbucket: FakeBitbucket, tmp_path: Path) -> AsyncIterator[Webhook]:
    hook = WebhookSettings(
        webhook_port=0,
        webhook_secret=SecretStr(SECRET),
        bitbucket_api_url=f"{bitbucket.url}/2.0",
        bitbucket_token_file=_secret_file(tmp_path, TOKEN),
        webhook_public_url="https://tweakline.acme.test",
        webhook_report_dir=tmp_path / "reports",
        webhook_tweak_paths=[],
    )
    app, service = build(nats.settings(Identity.WEBHOOK), hook)
    async with app.broker:
        await app.broker.start()
        await service.start()
        yield service
        await service.stop()


def _secret_file(tmp_path: Path, value: str) -> Path:
    path = tmp_path / "token"
    path.write_text(value + "\n")
    return path


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def deliver(
    service: Webhook,
    event: str,
    payload: dict[str, Any] | bytes,
    *,
    request_id: str | None = None,
    signature: str | None | bool = True,
    timeout: float = 60.0,  # generous: the intake validates with scikit-learn on a loaded machine
) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Event-Key": event,
        "X-Request-UUID": request_id or "{" + str(uuid.uuid4()) + "}",
        "X-Hook-UUID": "{11111111-2222-3333-4444-555555555555}",
        "X-Attempt-Number": "1",
        "User-Agent": "Bitbucket-Webhooks/2.0",
    }
    if signature is True:
        headers["X-Hub-Signature"] = sign(body)
    elif isinstance(signature, str):
        headers["X-Hub-Signature"] = signature
    async with httpx.AsyncClient(timeout=timeout) as client:
        return await client.post(f"http://127.0.0.1:{service.port}/webhooks/bitbucket", content=body, headers=headers)


async def submitted_for(nats, commits: set[str]) -> list[ExperimentSubmitted]:
    """Every ExperimentSubmitted stored on the bus for these commits (read from the event log)."""
    nc = await connect(nats.settings(Identity.ADMIN), "test-reader")
    try:
        js = nc.jetstream()
        info = await js.stream_info(Stream.EVENTS.value, subjects_filter=all_of(Subject.EXPERIMENT_SUBMITTED))
        found = []
        for subject, count in (info.state.subjects or {}).items():
            assert count == 1, f"{subject} stored {count} times"
            msg = await js.get_last_msg(Stream.EVENTS.value, subject)
            try:
                message = ExperimentSubmitted.model_validate_json(msg.data)
            except ValueError:  # other tests on this shared server publish placeholders
                continue
            if message.source.commit in commits:
                found.append(message)
        return sorted(found, key=lambda m: m.source.path or "")
    finally:
        await nc.close()


def repo_with_push(bitbucket: FakeBitbucket, new: str, old: str) -> None:
    bitbucket.files[(REPO, new, "models/iris.tweak.yaml")] = IRIS.encode()
    bitbucket.files[(REPO, new, "models/wine.tweak.yaml")] = WINE.encode()
    bitbucket.files[(REPO, new, "models/data/wine.csv")] = wine_csv()
    bitbucket.diffstats[(REPO, f"{new}..{old}")] = [
        ("modified", "models/iris.tweak.yaml"),
        ("modified", "README.md"),
        ("added", "models/wine.tweak.yaml"),
        ("removed", "models/old.tweak.yaml"),
    ]


# -------------------------------------------------------------------------------------- tests


def test_signature_check_is_hmac_sha256_of_the_raw_body() -> None:
    body = b'{"a": 1}'
    assert signature_ok(SECRET.encode(), body, sign(body))
    assert not signature_ok(SECRET.encode(), body + b" ", sign(body))
    assert not signature_ok(SECRET.encode(), body, sign(body, "other"))
    assert not signature_ok(SECRET.encode(), body, sign(body).replace("sha256=", "sha1="))
    assert not signature_ok(SECRET.encode(), body, None)


async def test_push_with_several_changes_submits_one_experiment_per_changed_tweak_file(
    nats, webhook: Webhook, bitbucket: FakeBitbucket
) -> None:
    new, old, tag, gone = commit(), commit(), commit(), commit()
    repo_with_push(bitbucket, new, old)
    payload = push_payload(
        branch_change("main", new, old),
        branch_change("v1.0", tag, None, kind="tag"),
        branch_change("old-feature", None, gone),
    )
    response = await deliver(webhook, "repo:push", payload)
    assert response.status_code == 202, response.text
    body = response.json()
    assert sorted(s["path"] for s in body["submitted"]) == ["models/iris.tweak.yaml", "models/wine.tweak.yaml"]
    reasons = {i["ref"]: i["reason"] for i in body["ignored"]}
    assert "tag push" in reasons["v1.0"] and "deleted" in reasons["old-feature"]

    stored = await submitted_for(nats, {new, old, tag, gone})
    assert [m.source.path for m in stored] == ["models/iris.tweak.yaml", "models/wine.tweak.yaml"]
    for message in stored:
        assert message.source.model_dump(exclude={"path"}) == {
            "repository": REPO,
            "branch": "main",
            "commit": new,
            "author": "Jane Doe",
            "pull_request": None,
            "trigger": "webhook",
        }
    iris, wine = stored
    assert iris.tweak.spec.dataset.source == "sklearn:iris"
    digest = hashlib.sha256(wine_csv()).hexdigest()
    assert wine.tweak.spec.dataset.source == f"object:csv:{digest}"  # uploaded by content

    # Bitbucket saw: the diffstat (two pages followed), the files at that commit, INPROGRESS statuses.
    assert {c.path for c in bitbucket.calls_to("/diffstat/")} == {f"/2.0/repositories/{REPO}/diffstat/{new}..{old}"}
    assert len(bitbucket.calls_to("/diffstat/")) == 4
    fetched = {c.path for c in bitbucket.calls_to("/src/")}
    assert fetched == {
        f"/2.0/repositories/{REPO}/src/{new}/models/{f}" for f in ("iris.tweak.yaml", "wine.tweak.yaml", "data/wine.csv")
    }
    statuses = bitbucket.calls_to(f"/commit/{new}/statuses/build", "POST")
    assert {s.json["key"] for s in statuses} == {"tweakline-models-iris", "tweakline-models-wine"}
    for call in statuses:
        assert call.json["state"] == "INPROGRESS"
        assert call.json["url"].startswith("https://tweakline.acme.test/reports/")
        assert call.headers["content-type"] == "application/json"
    for call in bitbucket.calls:
        assert call.headers["authorization"] == f"Bearer {TOKEN}"
    # Nothing but the new branch head was looked at.
    assert not [c for c in bitbucket.calls if tag in c.path or gone in c.path]


async def test_tag_push_and_branch_deletion_start_nothing(nats, webhook: Webhook, bitbucket: FakeBitbucket) -> None:
    tag, gone = commit(), commit()
    response = await deliver(webhook, "repo:push", push_payload(branch_change("v2.0", tag, None, kind="tag")))
    assert response.status_code == 200
    assert response.json()["submitted"] == [] and "tag push" in response.json()["ignored"][0]["reason"]
    response = await deliver(webhook, "repo:push", push_payload(branch_change("dead", None, gone)))
    assert response.status_code == 200
    assert response.json()["submitted"] == [] and "deleted" in response.json()["ignored"][0]["reason"]
    assert bitbucket.calls == []
    assert await submitted_for(nats, {tag, gone}) == []


async def test_signatures_are_required_and_checked(nats, webhook: Webhook, bitbucket: FakeBitbucket) -> None:
    new, old = commit(), commit()
    repo_with_push(bitbucket, new, old)
    payload = push_payload(branch_change("main", new, old))
    body = json.dumps(payload).encode()
    missing = await deliver(webhook, "repo:push", payload, signature=None)
    wrong_key = await deliver(webhook, "repo:push", payload, signature=sign(body, "not-the-secret"))
    tampered = await deliver(webhook, "repo:push", body.replace(b"main", b"mainx"), signature=sign(body))
    not_hex = await deliver(webhook, "repo:push", payload, signature="sha256=zz")
    assert [r.status_code for r in (missing, wrong_key, tampered, not_hex)] == [401, 401, 401, 401]
    assert "missing X-Hub-Signature" in missing.json()["error"]
    assert SECRET not in missing.text + wrong_key.text
    assert bitbucket.calls == [] and await submitted_for(nats, {new}) == []


async def test_replayed_request_id_is_ignored(nats, webhook: Webhook, bitbucket: FakeBitbucket) -> None:
    new, old = commit(), commit()
    repo_with_push(bitbucket, new, old)
    payload = push_payload(branch_change("main", new, old))
    request_id = "{" + str(uuid.uuid4()) + "}"
    first = await deliver(webhook, "repo:push", payload, request_id=request_id)
    calls = len(bitbucket.calls)
    again = await deliver(webhook, "repo:push", payload, request_id=request_id)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert len(bitbucket.calls) == calls  # nothing fetched or reported again
    assert len(await submitted_for(nats, {new})) == 2


async def test_unknown_event_and_bad_payloads_are_refused(nats, webhook: Webhook, bitbucket: FakeBitbucket) -> None:
    unknown = await deliver(webhook, "repo:fork", {"repository": {"full_name": REPO}})
    assert unknown.status_code == 400 and "unsupported event 'repo:fork'" in unknown.json()["error"]
    not_json = await deliver(webhook, "repo:push", b"{not json")
    assert not_json.status_code == 400
    shapeless = await deliver(webhook, "repo:push", {"repository": {"full_name": REPO}})
    assert shapeless.status_code == 400 and "push.changes" in shapeless.json()["error"]
    assert bitbucket.calls == []


async def test_invalid_tweak_file_is_refused_and_reported_to_the_commit(nats, webhook: Webhook, bitbucket: FakeBitbucket) -> None:
    new, old = commit(), commit()
    bitbucket.files[(REPO, new, "broken.tweak.yaml")] = BROKEN.encode()
    bitbucket.diffstats[(REPO, f"{new}..{old}")] = [("added", "broken.tweak.yaml")]
    response = await deliver(webhook, "repo:push", push_payload(branch_change("main", new, old)))
    assert response.status_code == 200  # handled (not retried): the FAILED status says why
    [invalid] = response.json()["invalid"]
    assert invalid["path"] == "broken.tweak.yaml"
    assert any("spec.model.estimator" in p and "os.system" in p for p in invalid["problems"])
    [status] = bitbucket.calls_to(f"/commit/{new}/statuses/build", "POST")
    assert status.json["state"] == "FAILED" and status.json["key"] == "tweakline-broken"
    assert status.json["description"].startswith("invalid tweak file: spec.model.estimator")
    assert await submitted_for(nats, {new}) == []


async def test_fetch_failure_answers_502_and_a_retry_of_the_same_delivery_succeeds(
    nats, webhook: Webhook, bitbucket: FakeBitbucket
) -> None:
    new, old = commit(), commit()
    repo_with_push(bitbucket, new, old)
    bitbucket.fail_diffstat = 1
    payload = push_payload(branch_change("main", new, old))
    request_id = "{" + str(uuid.uuid4()) + "}"
    failed = await deliver(webhook, "repo:push", payload, request_id=request_id)
    assert failed.status_code == 502 and "HTTP 500" in failed.json()["failures"][0]["error"]
    [status] = bitbucket.calls_to(f"/commit/{new}/statuses/build", "POST")
    assert status.json["state"] == "FAILED" and status.json["key"] == "tweakline-intake"
    retried = await deliver(webhook, "repo:push", payload, request_id=request_id)  # Bitbucket's retry
    assert retried.status_code == 202, retried.text
    assert len(await submitted_for(nats, {new})) == 2
    # The earlier FAILED status is replaced, so it does not block the merge.
    intake = [c.json for c in bitbucket.calls_to(f"/commit/{new}/statuses/build", "POST") if c.json["key"] == "tweakline-intake"]
    assert [s["state"] for s in intake] == ["FAILED", "SUCCESSFUL"]


async def test_pull_request_event_submits_with_the_pr_and_an_update_without_new_commits_does_not(
    nats, webhook: Webhook, bitbucket: FakeBitbucket
) -> None:
    full, number = commit(), 40 + uuid.uuid4().int % 1000
    head = full[:12]  # pull-request payloads carry short hashes
    bitbucket.files[(REPO, full, "models/iris.tweak.yaml")] = IRIS.encode()
    bitbucket.pr_diffstats[(REPO, number)] = [("modified", "models/iris.tweak.yaml"), ("modified", "train.py")]
    created = await deliver(webhook, "pullrequest:created", pr_payload(number, head))
    assert created.status_code == 202, created.text
    assert bitbucket.calls_to(f"/pullrequests/{number}/diffstat", "GET")
    [status] = bitbucket.calls_to("/statuses/build", "POST")
    assert status.path == f"/2.0/repositories/{REPO}/commit/{full}/statuses/build"  # resolved to the full hash
    edited = await deliver(webhook, "pullrequest:updated", pr_payload(number, head))  # e.g. a title change
    assert edited.status_code == 200 and "already handled" in edited.json()["ignored"][0]["reason"]
    [message] = await submitted_for(nats, {full})
    assert message.source.pull_request == number and message.source.branch == "feature/tune"
    assert message.source.author == "Jane Doe" and message.source.commit == full


# --------------------------------------------------------------------------------- reporting


async def _publish_outcome(nats, source: Source, decision: Decision, deployment: DeploymentCompleted | None, exp_id: str) -> None:
    import yaml

    from tweakline.proto.tweakfile import TweakFile

    tweak = TweakFile.model_validate(yaml.safe_load(IRIS))
    trials = [
        TrialRecord(number=1, params={"n_neighbors": 7}, status=TrialStatus.OK, score=0.97, duration_s=0.2),
        TrialRecord(number=0, params={"n_neighbors": 1}, status=TrialStatus.OK, score=0.93, duration_s=0.1),
    ]
    completed = ExperimentCompleted(
        experiment_id=exp_id,
        tweak=tweak,
        source=source,
        status=ExperimentStatus.COMPLETED,
        trials=trials,
        best=trials[0],
        started_at="2026-01-01T00:00:00Z",
    )
    evaluation = EvaluationCompleted(
        experiment_id=exp_id,
        decision=decision,
        metric="accuracy",
        reasons=["accuracy 0.9810 >= 0.9500"] if decision is Decision.PROMOTE else ["accuracy 0.9100 >= 0.9500 does not hold"],
        best_params={"n_neighbors": 7},
        candidate_metrics={"accuracy": 0.981 if decision is Decision.PROMOTE else 0.91},
        default_metrics={"accuracy": 0.95},
        production_metrics={"accuracy": 0.969},
        production_revision=6,
        deploy=DeploySpec(target="local", release="iris") if deployment is not None else None,
        source=source,
    )
    nc = await connect(nats.settings(Identity.ADMIN), "test-publisher")
    js = nc.jetstream()
    for family, message in (
        (Subject.EXPERIMENT_COMPLETED, completed),
        (Subject.EVALUATION_COMPLETED, evaluation),
        *([(Subject.DEPLOYMENT_COMPLETED, deployment)] if deployment else []),
    ):
        await js.publish(
            subject_for(family, exp_id),
            message.model_dump_json().encode(),
            headers={"Nats-Msg-Id": msg_id(family.value, exp_id)},
            stream=Stream.EVENTS.value,
        )
    await nc.close()


async def test_promotion_is_reported_as_build_status_and_pr_comment(
    nats, webhook: Webhook, bitbucket: FakeBitbucket, tmp_path: Path
) -> None:
    head, exp_id = commit(), f"iris-knn-{uuid.uuid4().hex[:8]}"
    source = Source(
        repository=REPO, branch="feature/tune", commit=head, pull_request=7, path="models/iris.tweak.yaml", trigger="webhook"
    )
    deployment = DeploymentCompleted(
        experiment_id=exp_id, release="iris", target="local", status=DeploymentStatus.DEPLOYED, revision=7
    )
    await _publish_outcome(nats, source, Decision.PROMOTE, deployment, exp_id)

    [status] = await bitbucket.wait_for(f"/commit/{head}/statuses/build", "POST")
    assert status.path == f"/2.0/repositories/{REPO}/commit/{head}/statuses/build"
    assert status.headers["authorization"] == f"Bearer {TOKEN}"
    assert status.json == {
        "key": "tweakline-models-iris",
        "state": "SUCCESSFUL",
        "name": "tweakline iris-knn",
        "description": "accuracy 0.981 (+0.012 vs production), promoted rev 7",
        "url": f"https://tweakline.acme.test/reports/{exp_id}",
    }
    [comment] = await bitbucket.wait_for("/pullrequests/7/comments", "POST")
    markdown = comment.json["content"]["raw"]
    assert "promoted" in markdown and "| accuracy (objective) | 0.9810 | 0.9500 | +0.0310 | 0.9690 | +0.0120 |" in markdown
    assert "| 1 | 1 | 0.9700 | ok | n_neighbors=7 |" in markdown  # the leaderboard
    # The same report as files, and served at the status link.
    report = tmp_path / "reports" / exp_id
    assert json.loads((report / "build-status.json").read_text()) == status.json
    assert (report / "report.md").read_text() == markdown
    async with httpx.AsyncClient() as client:
        served = await client.get(f"http://127.0.0.1:{webhook.port}/reports/{exp_id}")
    assert served.status_code == 200 and served.text == markdown


async def test_rejection_of_a_push_is_reported_failed_without_a_comment(nats, webhook: Webhook, bitbucket: FakeBitbucket) -> None:
    head, exp_id = commit(), f"iris-knn-{uuid.uuid4().hex[:8]}"
    source = Source(repository=REPO, branch="main", commit=head, path="models/iris.tweak.yaml", trigger="webhook")
    await _publish_outcome(nats, source, Decision.REJECT, None, exp_id)
    [status] = await bitbucket.wait_for(f"/commit/{head}/statuses/build", "POST")
    assert status.json["state"] == "FAILED"
    assert (
        status.json["description"] == "accuracy 0.910 (-0.059 vs production), rejected: accuracy 0.9100 >= 0.9500 does not hold"
    )
    assert bitbucket.calls_to("/comments") == []


async def test_experiments_not_from_the_webhook_are_not_reported(nats, webhook: Webhook, bitbucket: FakeBitbucket) -> None:
    cli_exp, hook_exp, head = f"iris-knn-{uuid.uuid4().hex[:8]}", f"iris-knn-{uuid.uuid4().hex[:8]}", commit()
    await _publish_outcome(
        nats, Source(path="x.tweak.yaml", trigger="cli", commit="f" * 40, repository=REPO), Decision.REJECT, None, cli_exp
    )
    await _publish_outcome(nats, Source(repository=REPO, commit=head, trigger="webhook"), Decision.REJECT, None, hook_exp)
    await bitbucket.wait_for(f"/commit/{head}/statuses/build", "POST")  # handled in order: the cli one came first
    assert bitbucket.calls_to("f" * 40) == []


def test_the_webhook_refuses_to_start_without_a_secret(nats, tmp_path: Path) -> None:
    from tweakline.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="TWEAKLINE_WEBHOOK_SECRET"):
        build(nats.settings(Identity.WEBHOOK), WebhookSettings(webhook_secret=None, webhook_secret_file=None))
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(ConfigurationError, match="is empty"):
        build(nats.settings(Identity.WEBHOOK), WebhookSettings(webhook_secret_file=empty))


async def test_oversized_bodies_and_unconfigured_branches(nats, webhook: Webhook, bitbucket: FakeBitbucket) -> None:
    big = b"{" + b" " * (webhook.hook.webhook_max_body_bytes + 1) + b"}"
    response = await deliver(webhook, "repo:push", big)
    assert response.status_code == 413
    webhook.hook.webhook_branches = ["main", "release/*"]
    new, old = commit(), commit()
    repo_with_push(bitbucket, new, old)
    response = await deliver(webhook, "repo:push", push_payload(branch_change("experiment/x", new, old)))
    assert response.status_code == 200
    assert "not configured" in response.json()["ignored"][0]["reason"]
    assert bitbucket.calls == []


async def test_pull_request_listing_failure_is_retried_with_the_same_delivery(
    nats, webhook: Webhook, bitbucket: FakeBitbucket
) -> None:
    full, number = commit(), 3000 + uuid.uuid4().int % 1000
    bitbucket.files[(REPO, full, "models/iris.tweak.yaml")] = IRIS.encode()
    bitbucket.pr_diffstats[(REPO, number)] = [("modified", "models/iris.tweak.yaml")]
    bitbucket.fail_diffstat = 1
    request_id = "{" + str(uuid.uuid4()) + "}"
    failed = await deliver(webhook, "pullrequest:created", pr_payload(number, full[:12]), request_id=request_id)
    assert failed.status_code == 502
    retried = await deliver(webhook, "pullrequest:created", pr_payload(number, full[:12]), request_id=request_id)
    assert retried.status_code == 202, retried.text
    assert len(await submitted_for(nats, {full})) == 1


async def test_a_dataset_larger_than_the_webhook_reads_is_refused_naming_the_limit(
    nats, webhook: Webhook, bitbucket: FakeBitbucket
) -> None:
    webhook.hook = webhook.hook.model_copy(update={"webhook_max_dataset_bytes": 1000})  # wine.csv is ~11 KB
    new, old = commit(), commit()
    bitbucket.files[(REPO, new, "models/wine.tweak.yaml")] = WINE.encode()
    bitbucket.files[(REPO, new, "models/data/wine.csv")] = wine_csv()
    bitbucket.diffstats[(REPO, f"{new}..{old}")] = [("added", "models/wine.tweak.yaml")]
    response = await deliver(webhook, "repo:push", push_payload(branch_change("main", new, old)))
    assert response.status_code == 200  # handled: the FAILED build status says why
    [invalid] = response.json()["invalid"]
    [problem] = invalid["problems"]
    assert "spec.dataset.source" in problem and "models/data/wine.csv" in problem, problem
    assert "1000 bytes" in problem and "TWEAKLINE_WEBHOOK_MAX_DATASET_BYTES" in problem, problem
    [status] = bitbucket.calls_to(f"/commit/{new}/statuses/build", "POST")
    assert status.json["state"] == "FAILED"
    assert await submitted_for(nats, {new}) == []
