"""Release history and manual rollback on a real nats-server: the records, and the CLI commands users type."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.conftest import run_cli
from tweakline.deployer.control import releases, rollback
from tweakline.deployer.releases import ReleaseError, previous_live, record_promotion
from tweakline.proto.messages import (
    ArtifactRef,
    Comparison,
    Decision,
    EvaluationCompleted,
    ReleaseAction,
    Source,
)
from tweakline.proto.permissions import Identity
from tweakline.runtime.bus import connect
from tweakline.runtime.objects import put_artifact


def evaluation(exp: str, release: str, accuracy: float, commit: str, artifact: ArtifactRef | None = None) -> EvaluationCompleted:
    return EvaluationCompleted(
        experiment_id=exp,
        decision=Decision.PROMOTE,
        reasons=[f"accuracy {accuracy:.4f} >= 0.8000"],
        candidate_metrics={"accuracy": accuracy},
        comparison=Comparison(
            metric="accuracy",
            candidate=accuracy,
            production=accuracy - 0.1,
            difference=0.1,
            required_gain=0.0,
            test="mcnemar-midp",
            alpha=0.05,
            n=45,
            p_value=0.001,
            exact_p_value=0.002,
            discordant={"candidate_only": 6, "production_only": 1},
            significant=True,
            supported=True,
            rule="r",
        ),
        artifact=artifact or ArtifactRef(bucket="tweakline-artifacts", name=f"models/{exp}.skops", sha256="0" * 64, size=1),
        release=release,
        target="local",
        source=Source(commit=commit * 8),
        features=["a", "b"],
    )


async def promote_three(nats, release: str) -> dict[int, ArtifactRef]:
    """Three promoted revisions whose models (stored by the evaluator, as in production) exist."""
    nc = await connect(nats.settings(Identity.DEPLOYER), "test")
    producer = await connect(nats.settings(Identity.EVALUATOR), "test-evaluator")
    refs = {}
    try:
        store = await releases(nc.jetstream())
        for n, acc in ((1, 0.8), (2, 0.85), (3, 0.9)):
            refs[n] = await put_artifact(producer.jetstream(), f"models/{release}-e{n}.skops", f"model {release} {n}".encode())
            await record_promotion(store, release, "local", evaluation(f"{release}-e{n}", release, acc, f"c{n}", refs[n]), "SVC")
        # a redelivered evaluation is recorded once
        await record_promotion(store, release, "local", evaluation(f"{release}-e3", release, 0.9, "c3", refs[3]), "SVC")
    finally:
        await nc.close()
        await producer.close()
    return refs


def env_for(nats) -> dict[str, str]:
    return {"TWEAKLINE_NATS_URL": nats.url, "TWEAKLINE_STATE_DIR": str(nats.pki.parent), "COLUMNS": "250"}


def history_json(nats, release: str) -> dict:
    done = run_cli("history", release, "--json", env=env_for(nats))
    assert done.code == 0, done.stderr
    return done.json()


def test_history_and_rollbacks_through_the_cli(nats) -> None:
    release = f"rel-{uuid.uuid4().hex[:6]}"
    asyncio.run(promote_three(nats, release))

    shown = run_cli("history", release, env=env_for(nats))
    assert shown.code == 0, shown.stderr
    assert f"Release {release} (local); live revision: 3" in shown.stdout
    assert "McNemar mid-p 0.001" in shown.stdout and "c3c3c3c3c3c3" in shown.stdout
    first = history_json(nats, release)
    assert first["current"] == 3 and [r["revision"] for r in first["revisions"]] == [1, 2, 3]
    assert [e["action"] for e in first["events"]] == ["promoted"] * 3

    back = run_cli("rollback", release, "--reason", "latency regression seen by on-call", env=env_for(nats))
    assert back.code == 0, back.stderr
    assert "revision 2 is live again (was 3)" in back.stderr
    to_one = run_cli("rollback", release, "--to", "1", "--json", env=env_for(nats))
    assert to_one.code == 0, to_one.stderr
    assert to_one.json() == {"release": release, "revision": 1, "previous": 2}

    after = history_json(nats, release)
    assert after["current"] == 1
    steps = [(e["action"], e["revision"], e["previous"], e["reason"]) for e in after["events"]]
    assert steps[3:] == [
        ("rolled_back", 2, 3, "latency regression seen by on-call"),
        ("rolled_back", 1, 2, "manual rollback"),
    ]
    assert all(e["by"] for e in after["events"])


def test_rollback_errors_are_clear(nats) -> None:
    release = f"rel-{uuid.uuid4().hex[:6]}"
    asyncio.run(promote_three(nats, release))
    missing = run_cli("rollback", release, "--to", "9", env=env_for(nats))
    assert missing.code == 2
    assert f"release {release} has no revision 9; revisions: 1, 2, 3" in missing.stderr
    live = run_cli("rollback", release, "--to", "3", env=env_for(nats))
    assert live.code == 2 and "revision 3 is already live" in live.stderr
    unknown = run_cli("history", "no-such-release", env=env_for(nats))
    assert unknown.code == 2 and "no release named 'no-such-release'" in unknown.stderr and release in unknown.stderr
    for done in (missing, live, unknown):
        assert "Traceback" not in done.stderr


async def test_plain_rollback_returns_to_the_revision_live_before(nats) -> None:
    release = f"rel-{uuid.uuid4().hex[:6]}"
    await promote_three(nats, release)
    nc = await connect(nats.settings(Identity.ADMIN), "test")
    try:
        js = nc.jetstream()
        await rollback(js, nats.settings(), release, to=1, reason="r1", by="t")
        done = await rollback(js, nats.settings(), release, to=None, reason="undo", by="t")
        # the revision live before 1 was 3 (rolled back from), not 0
        assert done.revision.revision == 3 and done.previous == 1
        assert done.history.events[-1].action is ReleaseAction.ROLLED_BACK
        assert previous_live(done.history) == 1
        with pytest.raises(ReleaseError, match="is live now, not 2"):
            await rollback(js, nats.settings(), release, to=1, reason="x", by="t", expect_current=2)
    finally:
        await nc.close()


async def _tamper(nats, ref: ArtifactRef, data: bytes | None) -> None:
    """What only an operator's credential can do: replace (or remove) a stored model."""
    nc = await connect(nats.settings(Identity.ADMIN), "test-tamper")
    try:
        store = await nc.jetstream().object_store(ref.bucket)
        if data is None:
            await store.delete(ref.name)
        else:
            await store.put(ref.name, data)
    finally:
        await nc.close()


def test_rollback_to_a_tampered_or_missing_revision_is_refused_and_nothing_moves(nats) -> None:
    release = f"rel-{uuid.uuid4().hex[:6]}"
    refs = asyncio.run(promote_three(nats, release))
    asyncio.run(_tamper(nats, refs[1], b"someone else's model"))
    tampered = run_cli("rollback", release, "--to", "1", env=env_for(nats))
    assert tampered.code == 2, tampered.stdout + tampered.stderr
    assert (
        f"release {release}: revision 1 cannot go live: artifact tweakline-artifacts/{refs[1].name} has sha256" in tampered.stderr
    )
    assert f"expected {refs[1].sha256[:12]}" in tampered.stderr and "Traceback" not in tampered.stderr
    asyncio.run(_tamper(nats, refs[2], None))
    missing = run_cli("rollback", release, env=env_for(nats))
    assert (
        missing.code == 2
        and f"revision 2 cannot go live: artifact tweakline-artifacts/{refs[2].name} not found" in missing.stderr
    )
    after = history_json(nats, release)
    assert after["current"] == 3 and [e["action"] for e in after["events"]] == ["promoted"] * 3
    checked = run_cli("history", release, "--verify", "--json", env=env_for(nats))
    assert checked.code == 0, checked.stderr
    checks = checked.json()["model_checks"]
    assert checks["3"] == "ok" and "has sha256" in checks["1"] and checks["2"].endswith("not found"), checks
