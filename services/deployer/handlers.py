"""The deployer's message handling: record the promoted revision and make it live on its target."""

from __future__ import annotations

import logging

from faststream.nats import NatsMessage

from tweakline import telemetry
from tweakline.deployer.registry import target_for
from tweakline.deployer.releases import record_promotion
from tweakline.proto.messages import (
    Decision,
    DeploymentCompleted,
    DeploymentStatus,
    EvaluationCompleted,
    ReleaseHistory,
    msg_id,
)
from tweakline.proto.subjects import Bucket, Stream, Subject, subject_for
from tweakline.records import RecordStore
from tweakline.service import ServiceContext

log = logging.getLogger(__name__)


class Deployer:
    """Promotes models the evaluator accepted."""

    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx
        self.store: RecordStore[ReleaseHistory] | None = None

    async def start(self) -> None:
        """Bind to the release history bucket."""
        self.store = await RecordStore.open(self.ctx.js, Bucket.RELEASES.value, ReleaseHistory)

    async def on_evaluation_completed(self, msg: NatsMessage) -> None:
        """Deploy a promoted model; ignore rejections and errors (nothing to do)."""
        evaluation = await self.ctx.decode(msg, EvaluationCompleted)
        if evaluation is None:
            return
        if evaluation.decision is not Decision.PROMOTE or evaluation.release is None or evaluation.artifact is None:
            await msg.ack()
            return
        assert self.store is not None
        target = target_for(evaluation.target or "local")
        history, revision = await record_promotion(
            self.store, evaluation.release, target.name, evaluation, evaluation.estimator
        )
        status, message = DeploymentStatus.DEPLOYED, f"revision {revision.revision} is live"
        if evaluation.deploy is not None:
            try:
                attributes = {"tweakline.target": target.name, "tweakline.revision": revision.revision}
                with telemetry.span("deployment", attributes=attributes):
                    await target.deploy(evaluation.deploy, history, revision)
            except Exception as exc:
                status, message = DeploymentStatus.FAILED, f"{type(exc).__name__}: {exc}"
                log.exception("deployment of %s failed", evaluation.release)
        await self.ctx.publish(
            DeploymentCompleted(
                experiment_id=evaluation.experiment_id,
                release=evaluation.release,
                target=target.name,
                status=status,
                revision=revision.revision,
                message=message,
            ),
            subject_for(Subject.DEPLOYMENT_COMPLETED, evaluation.experiment_id),
            msg_id=msg_id("deployment", evaluation.experiment_id),
            stream=Stream.EVENTS,
        )
        await msg.ack()
        log.info("release %s: %s", evaluation.release, message)
