"""Experiments you can act on, on the real stack: cancel, supersede, and SIGTERM to ``submit --wait``.

Trials are the fault harness's SleepyClassifier (wall-clock time, no CPU), so "running" is a
state a test can hold an experiment in: each fold sleeps ``delay`` seconds, and a fold's
progress message says a runner is inside the trial.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import REPO
from tests.fault.conftest import WAIT, make_stack, tweak, watching  # noqa: F401 (make_stack is a fixture)
from tests.waiting import until
from tweakline.client import TweaklineClient
from tweakline.proto.messages import ExperimentStatus, Source, TrialCompleted, TrialStatus
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Stream, Subject, subject_for
from tweakline.runtime.bus import connect

pytestmark = pytest.mark.e2e

# Seconds per fold of the experiment that gets stopped: a trial takes 20 s or more. Every test waits
# for one fold before it acts, so this is paid once per test; the stop itself takes a few seconds on
# a loaded machine, well inside the second fold.
SLOW = 10.0


async def _client(stack, identity: Identity = Identity.ADMIN) -> TweaklineClient:
    return TweaklineClient(await connect(stack.settings_for(identity), "cancel-test"), identity=identity.value)


async def _results(watch, exp_id: str) -> list[TrialCompleted]:
    """Every trial result of ``exp_id`` as stored (a follower stops at the cancelled event; these go on)."""
    results: list[TrialCompleted] = []

    async def on_msg(msg) -> None:
        results.extend(TrialCompleted.model_validate_json(msg.data).results())
        await watch._notify()

    await watch.nc.jetstream().subscribe(
        subject_for(Subject.TRIAL_COMPLETED, exp_id), stream=Stream.EVENTS.value, ordered_consumer=True, cb=on_msg
    )
    return results


def _training(watch, exp_id: str) -> set[str]:
    return {p.trial_id for p in watch.progress if p.experiment_id == exp_id}


async def test_cancel_stops_a_running_experiment_frees_its_runners_and_nothing_follows(make_stack) -> None:  # noqa: F811
    stack = await make_stack(runners=2)
    async with watching(stack) as watch:
        slow = await watch.submit(tweak("slow", [SLOW], max_trials=6, parallelism=2))
        results = await _results(watch, slow)
        # Both runners are inside one of its trials (each has finished a fold of it).
        await watch.until(lambda: len(_training(watch, slow)) == 2, "both runners training the slow experiment")
        client = await _client(stack, Identity.SUBMITTER)  # a CI job's identity may cancel
        try:
            asked = time.monotonic()
            await client.cancel(slow, reason="stale", user="tester")
            outcome = watch.outcomes[slow]
            await watch.until(lambda: outcome.cancelled is not None, "the cancelled event", timeout=30)
            confirmed = time.monotonic() - asked
            # The running trials stop on their runners: their (pruned) results arrive within seconds,
            # well before a fold of SLOW seconds could finish.
            await watch.until(lambda: len(results) >= 2, "the stopped trials' results", timeout=SLOW)
            stopped = time.monotonic() - asked
            assert confirmed < 10, confirmed
            assert stopped < SLOW, stopped
            assert {t.status for t in results} == {TrialStatus.PRUNED}
            assert all("cancelled" in (t.error or "") for t in results), [t.error for t in results]
            assert sorted(outcome.cancelled.stopped_trials) == [0, 1]
            assert outcome.cancelled.status is ExperimentStatus.CANCELLED
            assert outcome.cancelled.requested_by == "submitter (tester)"
            summary = await client.experiment(slow)
            assert summary.status is ExperimentStatus.CANCELLED
            assert summary.trials_done == 0 and summary.running == 0  # nothing recorded after the cancel
            assert "stale" in (summary.message or "")

            # The runners take new work at once: a quick experiment runs to its decision.
            quick = await watch.submit(tweak("quick", [0.0], max_trials=2, parallelism=2))
            done = await watch.done(quick, timeout=WAIT)
            assert done.evaluation is not None and len(done.trials) == 2
            # The quick one's evaluation came after anything the evaluator could have done for the
            # cancelled one, in the same ordered stream: none came, and no deployment either.
            assert outcome.evaluation is None and outcome.deployment is None and outcome.completed is None
            assert len(results) == 2  # no further trial of it ran (queued ones were skipped)
            # Cancelling again changes nothing (idempotent) and is not confirmed twice.
            await client.cancel(slow, reason="again")
            assert (await client.experiment(slow)).message == summary.message
        finally:
            await client.close()


async def test_a_newer_push_of_the_same_branch_supersedes_the_running_one(make_stack) -> None:  # noqa: F811
    stack = await make_stack(runners=2)
    source = {"repository": "team/models", "branch": "main", "trigger": "webhook"}
    async with watching(stack) as watch:
        from tweakline.client.follow import submit

        older = await submit(watch.nc, tweak("churn", [SLOW], max_trials=6, parallelism=2), Source(commit="aaa", **source))
        watch.track(older, tweak("churn", [SLOW]))
        await watch.until(lambda: len(_training(watch, older)) >= 1, "the older push training")
        # Another branch's experiment of the same name is not affected.
        other = await submit(watch.nc, tweak("churn", [0.0], max_trials=1), Source(commit="ccc", **(source | {"branch": "dev"})))
        watch.track(other, tweak("churn", [0.0], max_trials=1))
        newer_tf = tweak("churn", [0.0], max_trials=2, parallelism=2)
        newer = await submit(watch.nc, newer_tf, Source(commit="bbb", **source))
        watch.track(newer, newer_tf)
        first = watch.outcomes[older]
        await watch.until(lambda: first.cancelled is not None, "the older push to be superseded", timeout=60)
        assert first.cancelled.status is ExperimentStatus.SUPERSEDED
        assert first.cancelled.superseded_by == newer
        assert (await watch.done(newer)).evaluation is not None
        assert (await watch.done(other)).evaluation is not None
        assert first.evaluation is None
        client = await _client(stack)
        try:
            rows = {r.experiment_id: r for r in await client.experiments(repository="team/models")}
            assert rows[older].status is ExperimentStatus.SUPERSEDED and rows[older].superseded_by == newer
            assert rows[newer].status is ExperimentStatus.COMPLETED
            assert rows[other].status is ExperimentStatus.COMPLETED
            assert [r.experiment_id for r in await client.experiments(status="superseded")] == [older]
        finally:
            await client.close()


async def test_sigterm_to_submit_wait_cancels_its_experiment(make_stack, tmp_path) -> None:  # noqa: F811
    stack = await make_stack(runners=1)
    file = tmp_path / "ci.yaml"
    file.write_text(
        yaml.safe_dump(
            tweak("ci-job", [SLOW], max_trials=3, parallelism=1).model_dump(mode="json", exclude_unset=True, by_alias=True)
        )
    )
    settings = stack.settings_for(Identity.SUBMITTER)
    env = os.environ | {
        "TWEAKLINE_NATS_URL": settings.nats_url,
        "TWEAKLINE_TLS_DIR": str(settings.tls_path()),
        "TWEAKLINE_IDENTITY": "submitter",
        "TWEAKLINE_ALLOWED_ESTIMATORS": json.dumps(["sklearn.", "tests.fault."]),
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "tweakline", "submit", str(file), "--wait"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        async with watching(stack) as watch:
            client = await _client(stack)
            try:
                running = await until(lambda: client.experiments(status="running"), "the CI job's experiment", timeout=WAIT)
                exp_id = running[0].experiment_id
                watch.track(exp_id, tweak("ci-job", [SLOW]))
                await watch.until(lambda: bool(_training(watch, exp_id)), "its first trial training")
                proc.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(proc.wait, 60)
                outcome = watch.outcomes[exp_id]
                await watch.until(lambda: outcome.cancelled is not None, "the experiment cancelled by the job", timeout=30)
                assert code == 128 + signal.SIGTERM, proc.stderr.read()
                assert outcome.cancelled.status is ExperimentStatus.CANCELLED
                assert "SIGTERM" in outcome.cancelled.reason
                assert outcome.cancelled.requested_by.startswith("submitter")
            finally:
                await client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
