"""Least privilege of the CI identities on a real nats-server: what the webhook and a pipeline may do."""

from __future__ import annotations

import pytest
from nats.errors import TimeoutError as NatsTimeoutError

from tweakline.proto.messages import CancelExperiment
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Bucket, Subject, subject_for
from tweakline.runtime.bus import connect

NO_RETRY = {"allow_reconnect": False, "max_reconnect_attempts": 0}


async def _refused(nats, identity: Identity, subject: str) -> None:
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = await connect(nats.settings(identity), "test", error_cb=on_error, **NO_RETRY)
    try:
        with pytest.raises(NatsTimeoutError):
            await nc.jetstream().publish(subject, b"{}", timeout=1)
    finally:
        await nc.close()
    assert any("permissions violation" in str(e).lower() for e in errors)


@pytest.mark.parametrize("identity", [Identity.WEBHOOK, Identity.SUBMITTER])
async def test_ci_identities_cannot_decide_or_deploy(nats, identity: Identity) -> None:
    await _refused(nats, identity, subject_for(Subject.EVALUATION_COMPLETED, "perm-x"))
    await _refused(nats, identity, subject_for(Subject.DEPLOYMENT_COMPLETED, "perm-x"))


async def test_a_pipeline_cannot_forge_webhook_replay_records(nats) -> None:
    await _refused(nats, Identity.SUBMITTER, f"$KV.{Bucket.WEBHOOK_DELIVERIES.value}.anything")


async def test_runner_cannot_write_datasets(nats) -> None:
    await _refused(nats, Identity.TRIAL_RUNNER, f"$O.{Bucket.DATASETS.value}.C.anything")


async def test_webhook_may_submit_and_remember_deliveries(nats) -> None:
    nc = await connect(nats.settings(Identity.WEBHOOK), "test", **NO_RETRY)
    try:
        js = nc.jetstream()
        ack = await js.publish(subject_for(Subject.EXPERIMENT_SUBMITTED, "perm-webhook"), b"{}", timeout=5)
        assert ack.stream == "TWEAKLINE_EVENTS"
        kv = await js.key_value(Bucket.WEBHOOK_DELIVERIES.value)
        assert await kv.create("perm-test-key", b"1") > 0
        await kv.delete("perm-test-key")
    finally:
        await nc.close()


@pytest.mark.parametrize("identity", [Identity.TRIAL_RUNNER, Identity.EVALUATOR, Identity.DEPLOYER, Identity.WEBHOOK])
async def test_only_submitters_and_operators_may_cancel(nats, identity: Identity) -> None:
    await _refused(nats, identity, subject_for(Subject.EXPERIMENT_CANCEL, "perm-x"))


async def test_a_pipeline_may_cancel_but_not_announce_the_cancellation(nats) -> None:
    nc = await connect(nats.settings(Identity.SUBMITTER), "test", **NO_RETRY)
    try:
        command = CancelExperiment(experiment_id="perm-unknown", reason="permission test")
        ack = await nc.jetstream().publish(
            subject_for(Subject.EXPERIMENT_CANCEL, "perm-unknown"), command.model_dump_json().encode(), timeout=5
        )
        assert ack.stream == "TWEAKLINE_EVENTS"
    finally:
        await nc.close()
    # Only the scheduler says an experiment ended cancelled.
    await _refused(nats, Identity.SUBMITTER, subject_for(Subject.EXPERIMENT_CANCELLED, "perm-x"))
