"""One release's stuck deployment never delays another's, and is itself failed at its time limit with the reason.

The deployer runs as its app (in this process) against the real mTLS nats-server; the stuck
deployment is the local target's upgrade hanging (an injected delay, as a helm upgrade waiting
on pods that never come up would).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from tweakline.deployer.app import create_app as deployer_app
from tweakline.deployer.local import LocalTarget
from tweakline.proto.messages import ArtifactRef, Decision, DeploymentCompleted, DeploymentStatus, EvaluationCompleted
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Stream, Subject, all_of, subject_for
from tweakline.proto.tweakfile import DeploySpec
from tweakline.runtime.bus import connect

TIME_LIMIT_S = 6.0


@pytest.fixture
async def deployer(nats, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    real = LocalTarget.deploy

    async def deploy(self, spec, history, revision):
        if spec.release.startswith("stuck-"):
            await asyncio.Event().wait()  # never returns: only the time limit ends it
        return await real(self, spec, history, revision)

    monkeypatch.setattr(LocalTarget, "deploy", deploy)
    app = deployer_app(nats.settings(Identity.DEPLOYER, deployment_timeout_s=TIME_LIMIT_S, deployer_concurrency=2))
    await app.start()
    try:
        yield
    finally:
        await app.stop()


def _promoted(exp_id: str, release: str) -> EvaluationCompleted:
    deploy = DeploySpec(release=release, verify={"enabled": False})
    return EvaluationCompleted(
        experiment_id=exp_id,
        decision=Decision.PROMOTE,
        release=release,
        target="local",
        deploy=deploy,
        artifact=ArtifactRef(bucket="tweakline-artifacts", name=f"models/{exp_id}.skops", sha256="0" * 64, size=1),
        estimator="sklearn.svm.SVC",
    )


async def test_a_stuck_deployment_does_not_delay_another_release(nats, deployer) -> None:
    run = uuid.uuid4().hex[:6]
    stuck, quick = f"stuck-{run}", f"quick-{run}"
    nc = await connect(nats.settings(Identity.ADMIN), "test-stuck-deployment")
    outcomes: dict[str, tuple[float, DeploymentCompleted]] = {}
    both = asyncio.Event()

    async def on_deployment(msg) -> None:
        done = DeploymentCompleted.model_validate_json(msg.data)
        if done.release in (stuck, quick):
            outcomes.setdefault(done.release, (time.monotonic(), done))
            if len(outcomes) == 2:
                both.set()

    await nc.subscribe(all_of(Subject.DEPLOYMENT_COMPLETED), cb=on_deployment)
    try:
        started = time.monotonic()
        for release in (stuck, quick):  # the stuck one first
            await nc.jetstream().publish(
                subject_for(Subject.EVALUATION_COMPLETED, f"exp-{release}"),
                _promoted(f"exp-{release}", release).model_dump_json().encode(),
                stream=Stream.EVENTS.value,
            )
        await asyncio.wait_for(both.wait(), 120)
    finally:
        await nc.close()

    quick_at, quick_done = outcomes[quick]
    stuck_at, stuck_done = outcomes[stuck]
    print(f"quick deployment after {quick_at - started:.1f} s, stuck one failed after {stuck_at - started:.1f} s")
    assert quick_done.status is DeploymentStatus.DEPLOYED, quick_done.message
    assert quick_at < stuck_at and quick_at - started < TIME_LIMIT_S
    # Nothing earlier to roll back to: failed, with the reason.
    assert stuck_done.status is DeploymentStatus.FAILED
    assert f"deployment exceeded its time limit of {TIME_LIMIT_S:g}s (TWEAKLINE_DEPLOYMENT_TIMEOUT_S)" in stuck_done.message
    assert stuck_at - started >= TIME_LIMIT_S
