"""The experiments bucket on a real bus: a state and the results segments it names.

The scheduler writes an experiment's state with its latest results and seals earlier ones into
segments of their own; every reader (here the submitter, as `tweakline experiments` and `report`
run) gets the whole state back, lists experiments without their segments, and is told plainly when
a segment a state names is gone.
"""

from __future__ import annotations

import uuid

import pytest

from tests.factories import make_tweak
from tweakline.client.api import TweaklineClient, summarize
from tweakline.proto.messages import (
    ExperimentState,
    ResultsSegment,
    SealedResults,
    TrialRecord,
    TrialStatus,
    is_state_key,
    results_key,
)
from tweakline.proto.permissions import Identity
from tweakline.runtime.bus import connect
from tweakline.runtime.records import ExperimentStore, MissingSegmentError


def _record(number: int, score: float | None) -> TrialRecord:
    status = TrialStatus.OK if score is not None else TrialStatus.FAILED
    return TrialRecord(number=number, params={"C": number / 10}, status=status, score=score)


def _sealed(exp_id: str, index: int, records: list[TrialRecord]) -> tuple[SealedResults, ResultsSegment]:
    segment = ResultsSegment(
        experiment_id=exp_id, issued={r.number: r.params for r in records}, results={r.number: r for r in records}
    )
    best = max((r.score for r in records if r.score is not None), default=None)
    return SealedResults(key=results_key(exp_id, index, uuid.uuid4().hex[:12]), trials=len(records), best_score=best), segment


async def _write(nats, exp_id: str, *, drop_segment: bool = False) -> None:
    """As the scheduler does: segments first, then the state naming them (two sealed, two in the state, one in flight)."""
    nc = await connect(nats.settings(Identity.SCHEDULER), "test-records-writer")
    try:
        store = await ExperimentStore.open_bucket(nc.jetstream())
        first = _sealed(exp_id, 0, [_record(0, 0.5), _record(2, None)])
        second = _sealed(exp_id, 1, [_record(1, 0.9), _record(3, 0.4)])
        for index, (ref, segment) in enumerate((first, second)):
            if not (drop_segment and index == 1):
                await store.put_segment(ref.key, segment)
        state = ExperimentState(
            experiment_id=exp_id,
            tweak=make_tweak("records", budget={"max_trials": 10, "parallelism": 2}),
            issued={4: {"C": 0.4}, 5: {"C": 0.5}, 6: {"C": 0.6}},
            results={5: _record(5, 0.7), 4: _record(4, 0.6)},
            sealed=[first[0], second[0]],
        )
        assert await store.create(exp_id, state) is not None
    finally:
        await nc.close()


async def test_a_reader_gets_the_whole_state_and_lists_experiments_without_their_segments(nats) -> None:
    exp_id = f"records-{uuid.uuid4().hex[:8]}"
    await _write(nats, exp_id)
    nc = await connect(nats.settings(Identity.SUBMITTER), "test-records-reader")
    try:
        store = await ExperimentStore.open_bucket(nc.jetstream())
        whole, revision = await store.get(exp_id)
        stored, stored_revision = await store.get_stored(exp_id)
        keys = await store.keys()
        client = TweaklineClient(nc)
        listed = {row.experiment_id: row for row in await client.experiments()}
        full = await client.state(exp_id)
    finally:
        await nc.close()

    assert revision == stored_revision
    assert list(whole.results) == [0, 2, 1, 3, 5, 4], "segments first, in order, then the state's own, as recorded"
    assert list(whole.issued) == [0, 1, 2, 3, 4, 5, 6] and not whole.sealed
    assert full == whole
    assert exp_id in keys and not any("." in key for key in keys)
    # A summary from the stored state alone (no segment read) counts and ranks the sealed results too.
    for summary in (summarize(stored), summarize(whole), listed[exp_id]):
        assert summary.trials_done == 6 and summary.running == 1 and summary.best_score == 0.9


async def test_a_missing_segment_is_named_not_silently_dropped(nats) -> None:
    exp_id = f"records-gone-{uuid.uuid4().hex[:8]}"
    await _write(nats, exp_id, drop_segment=True)
    nc = await connect(nats.settings(Identity.SUBMITTER), "test-records-reader")
    try:
        store = await ExperimentStore.open_bucket(nc.jetstream())
        with pytest.raises(
            MissingSegmentError,
            match=rf"experiment {exp_id}: its results segment '{exp_id}\.results\.1-\w+' \(2 trials\) is missing",
        ):
            await store.get(exp_id)
        stored, _ = await store.get_stored(exp_id)  # the summary still reads
        assert stored.trials_recorded == 6
    finally:
        await nc.close()


def test_a_segments_key_is_never_an_experiments_and_is_new_each_time() -> None:
    a, b = results_key("exp-1", 0, "aaaa"), results_key("exp-1", 0, "bbbb")
    assert a != b and a.startswith("exp-1.results.0-")
    assert is_state_key("exp-1") and not is_state_key(a)
