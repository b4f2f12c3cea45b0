"""A pull-request run never changes the production release; a run on the declared branch does (real NATS)."""

from __future__ import annotations

import uuid

from tweakline.deployer.control import releases
from tweakline.deployer.handlers import Deployer
from tweakline.proto.messages import ArtifactRef, Decision, DeploymentStatus, EvaluationCompleted, Source
from tweakline.proto.permissions import Identity
from tweakline.proto.tweakfile import DeploySpec
from tweakline.reporting.ci import BuildState, final_state, summary_line
from tweakline.runtime.bus import connect


def promotion(release: str, n: int, source: Source) -> EvaluationCompleted:
    return EvaluationCompleted(
        experiment_id=f"{release}-{n}",
        decision=Decision.PROMOTE,
        metric="accuracy",
        candidate_metrics={"accuracy": 0.9},
        release=release,
        target="local",
        deploy=DeploySpec(target="local", release=release, verify={"enabled": False}),
        artifact=ArtifactRef(bucket="tweakline-artifacts", name=f"models/{release}-{n}.skops", sha256="ab" * 32, size=1),
        features=["a"],
        source=source,
    )


async def test_a_pull_request_never_changes_production_and_the_declared_branch_does(nats) -> None:
    release = f"env-{uuid.uuid4().hex[:6]}"
    nc = await connect(nats.settings(Identity.DEPLOYER), "test")
    try:

        class Ctx:  # what the handler uses of ServiceContext, on a real connection
            js = nc.jetstream()
            settings = nats.settings(Identity.DEPLOYER)

        deployer = Deployer(Ctx())
        await deployer.start()
        store = await releases(nc.jetstream())

        main = await deployer._deploy(promotion(release, 1, Source(branch="main", commit="a1", trigger="webhook")))
        assert main[0] is DeploymentStatus.DEPLOYED and main[1] == 1

        pr = promotion(release, 2, Source(branch="feature/x", pull_request=5, commit="b2", trigger="webhook"))
        skipped = await deployer._deploy(pr)
        assert skipped[0] is DeploymentStatus.SKIPPED and skipped[1] == 1  # production still revision 1
        assert "production unchanged: pull request #5: judged, not deployed" in skipped[2]
        history = (await store.get(release))[0]
        assert history.current == 1 and [r.revision for r in history.revisions] == [1]  # nothing recorded

        branch = await deployer._deploy(promotion(release, 3, Source(branch="feature/y", commit="c3", trigger="pipeline")))
        assert branch[0] is DeploymentStatus.SKIPPED and "branch feature/y" in branch[2]

        again = await deployer._deploy(promotion(release, 4, Source(branch="main", commit="d4", trigger="pipeline")))
        assert again[0] is DeploymentStatus.DEPLOYED and again[1] == 2
        assert (await store.get(release))[0].current == 2

        # the decision is still reported: the PR's build passes (the gate held), with the reason
        from tweakline.proto.messages import DeploymentCompleted

        done = DeploymentCompleted(
            experiment_id=pr.experiment_id, release=release, target="local", status=skipped[0], revision=1, message=skipped[2]
        )
        assert final_state(pr, done) == BuildState.SUCCESSFUL
        assert "passed the gate, production unchanged: pull request #5" in summary_line(pr, done)
    finally:
        await nc.close()
