"""Defence in depth: the scheduler checks what arrives on the bus with the same entry point.

A submission that skipped validation (an older client, a hand-written message) is dead-lettered
with its reason, and the experiment fails with that reason in ``ExperimentCompleted`` (what the
CLI and the webhook show), exactly as a search algorithm this installation cannot run always did.
"""

from __future__ import annotations

import uuid

from nats.js.api import DeliverPolicy

from tests.factories import make_tweak
from tests.scheduler.test_handlers import Delivered, _tweak
from tweakline.proto.messages import DeadLetter, ExperimentCompleted, ExperimentStatus, ExperimentSubmitted
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Stream, Subject, subject_for
from tweakline.proto.tweakfile import TweakFile
from tweakline.runtime.bus import connect
from tweakline.scheduler.handlers import Scheduler
from tweakline.validation import problems_of


async def test_an_invalid_submission_is_dead_lettered_and_fails_with_its_reason(nats, scheduler: Scheduler) -> None:
    exp_id = f"invalid-{uuid.uuid4().hex[:8]}"
    data = _tweak(parallelism=2).model_dump(exclude_unset=True)
    data["spec"]["model"] = {"estimator": "sklearn.svm.SVC", "fixed": {"nonsense": 1}}  # structurally fine
    tweak = TweakFile.model_validate(data)
    body = ExperimentSubmitted(experiment_id=exp_id, tweak=tweak).model_dump_json().encode()
    admin = await connect(nats.settings(Identity.ADMIN), "test-invalid-intake")
    try:
        js = admin.jetstream()
        letters = await js.subscribe(
            f"{Subject.DEAD_LETTER.value}.scheduler",
            stream=Stream.DEAD_LETTERS.value,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
        )
        completed = await js.subscribe(
            subject_for(Subject.EXPERIMENT_COMPLETED, exp_id), stream=Stream.EVENTS.value, ordered_consumer=True
        )
        intake = Delivered(body, subject_for(Subject.EXPERIMENT_SUBMITTED, exp_id))
        await scheduler.on_submitted(ExperimentSubmitted.model_validate_json(body), intake)
        assert intake.acked
        letter = DeadLetter.model_validate_json((await letters.next_msg(timeout=30)).data)
        assert letter.subject == subject_for(Subject.EXPERIMENT_SUBMITTED, exp_id)
        assert "spec.model.fixed.nonsense: SVC has no parameter 'nonsense'" in letter.reason
        done = ExperimentCompleted.model_validate_json((await completed.next_msg(timeout=30)).data)
        assert done.status is ExperimentStatus.FAILED
        assert done.trials == []  # nothing was issued
        assert done.message is not None and done.message.startswith("spec.model.fixed.nonsense: SVC has no parameter")
        assert exp_id not in scheduler.runs
    finally:
        await admin.close()


async def test_a_host_path_from_the_bus_is_refused_and_the_scheduler_keeps_scheduling(nats, scheduler: Scheduler) -> None:
    """``csv:/etc/passwd`` sent raw to a platform: dead-lettered with its reason, no trial issued, next one runs."""
    assert not scheduler.ctx.settings.allow_host_paths  # a platform's scheduler, not `tweakline run`'s
    exp_id, good_id = f"hostpath-{uuid.uuid4().hex[:8]}", f"after-{uuid.uuid4().hex[:8]}"
    data = _tweak(parallelism=2).model_dump(exclude_unset=True)
    data["spec"]["dataset"] = {**data["spec"]["dataset"], "source": "csv:/etc/passwd", "target": "shell"}
    body = ExperimentSubmitted(experiment_id=exp_id, tweak=TweakFile.model_validate(data)).model_dump_json().encode()
    good = ExperimentSubmitted(experiment_id=good_id, tweak=_tweak(parallelism=2)).model_dump_json().encode()
    admin = await connect(nats.settings(Identity.ADMIN), "test-hostpath-intake")
    try:
        js = admin.jetstream()
        letters = await js.subscribe(
            f"{Subject.DEAD_LETTER.value}.scheduler",
            stream=Stream.DEAD_LETTERS.value,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
        )
        completed = await js.subscribe(
            subject_for(Subject.EXPERIMENT_COMPLETED, exp_id), stream=Stream.EVENTS.value, ordered_consumer=True
        )
        intake = Delivered(body, subject_for(Subject.EXPERIMENT_SUBMITTED, exp_id))
        await scheduler.on_submitted(ExperimentSubmitted.model_validate_json(body), intake)
        assert intake.acked
        letter = DeadLetter.model_validate_json((await letters.next_msg(timeout=30)).data)
        assert "spec.dataset.source: 'csv:/etc/passwd' reads the platform's own disk" in letter.reason
        assert "root:" not in letter.reason  # never the file's content
        done = ExperimentCompleted.model_validate_json((await completed.next_msg(timeout=30)).data)
        assert done.status is ExperimentStatus.FAILED and done.trials == []
        # the scheduler goes on: the next submission gets its trials (and the refused one none)
        await scheduler.on_submitted(
            ExperimentSubmitted.model_validate_json(good), Delivered(good, subject_for(Subject.EXPERIMENT_SUBMITTED, good_id))
        )
        assert exp_id not in scheduler.runs
        run, _revision = scheduler.runs[good_id]
        assert len(run.state.issued) == 2  # its first trials went out
    finally:
        await admin.close()


def test_only_tweakline_runs_own_stack_accepts_host_paths() -> None:
    tweak = make_tweak(dataset={"source": "csv:/proc/self/environ", "target": "x", "seed": 0})
    refused = problems_of(tweak, ["sklearn."])
    assert [p.path for p in refused] == ["spec.dataset.source"] and "'csv:/proc/self/environ'" in refused[0].message
    assert problems_of(tweak, ["sklearn."], host_paths=True) == []


async def test_a_code_trainer_is_refused_by_a_shared_platform(nats, scheduler: Scheduler) -> None:
    """Code trainers are off unless TWEAKLINE_CODE_TRAINERS allows the repository: what `submit` sees."""
    from tweakline.proto.messages import Source

    assert scheduler.ctx.settings.code_trainers == []  # the shared platform's default
    exp_id = f"trainer-{uuid.uuid4().hex[:8]}"
    data = _tweak(parallelism=2).model_dump(exclude_unset=True)
    data["spec"]["model"] = {"trainer": {"callable": "train.py:fit"}}
    tweak = TweakFile.model_validate(data)
    submitted = ExperimentSubmitted(experiment_id=exp_id, tweak=tweak, source=Source(repository="team/models"))
    body = submitted.model_dump_json().encode()
    admin = await connect(nats.settings(Identity.ADMIN), "test-trainer-intake")
    try:
        js = admin.jetstream()
        completed = await js.subscribe(
            subject_for(Subject.EXPERIMENT_COMPLETED, exp_id), stream=Stream.EVENTS.value, ordered_consumer=True
        )
        intake = Delivered(body, subject_for(Subject.EXPERIMENT_SUBMITTED, exp_id))
        await scheduler.on_submitted(ExperimentSubmitted.model_validate_json(body), intake)
        done = ExperimentCompleted.model_validate_json((await completed.next_msg(timeout=30)).data)
        assert done.status is ExperimentStatus.FAILED and done.trials == []
        assert done.message is not None
        assert "spec.model.trainer: code trainers are switched off on this platform for repository 'team/models'" in done.message
    finally:
        await admin.close()
