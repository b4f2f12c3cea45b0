"""The batch envelopes: a request carrying several trials of one experiment, and their results, bounded in size."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.factories import make_spec
from tweakline.proto.messages import MAX_TRIAL_BATCH, BatchedTrial, TrialCompleted, TrialRecord, TrialRequested, TrialStatus


def _request(batch: list[BatchedTrial]) -> TrialRequested:
    return TrialRequested(experiment_id="exp-1", trial_id="exp-1.0", number=0, params={"C": 1.0}, spec=make_spec(), batch=batch)


def test_a_batch_expands_into_one_request_per_trial_in_order() -> None:
    request = _request([BatchedTrial(trial_id=f"exp-1.{n}", number=n, params={"C": float(n)}) for n in (1, 2)])
    decoded = TrialRequested.model_validate_json(request.model_dump_json())
    trials = decoded.trials()
    assert [(t.trial_id, t.number, t.params, t.batch) for t in trials] == [
        ("exp-1.0", 0, {"C": 1.0}, []),
        ("exp-1.1", 1, {"C": 1.0}, []),
        ("exp-1.2", 2, {"C": 2.0}, []),
    ]
    assert all(t.spec == request.spec and t.experiment_id == "exp-1" for t in trials)


@pytest.mark.parametrize(
    "trial",
    [BatchedTrial(trial_id="other.1", number=1, params={}), BatchedTrial(trial_id="exp-1.0", number=0, params={})],
    ids=["another experiment's trial", "the first trial again"],
)
def test_a_batch_holds_distinct_trials_of_its_own_experiment(trial: BatchedTrial) -> None:
    with pytest.raises(ValidationError, match=f"batch: trial '{trial.trial_id}' is not a distinct trial of experiment 'exp-1'"):
        _request([trial])


def test_a_batch_is_bounded() -> None:
    trials = [BatchedTrial(trial_id=f"exp-1.{n}", number=n, params={}) for n in range(1, MAX_TRIAL_BATCH + 1)]
    with pytest.raises(ValidationError, match=f"at most {MAX_TRIAL_BATCH - 1} items"):
        _request(trials)
    assert len(_request(trials[:-1]).trials()) == MAX_TRIAL_BATCH


def _results(batch: list[TrialRecord]) -> TrialCompleted:
    return TrialCompleted(
        experiment_id="exp-1", trial_id="exp-1.0", number=0, params={"C": 1.0}, status=TrialStatus.OK, score=0.5,
        runner="trial-runner-0", attempt=2, batch=batch,
    )  # fmt: skip


def test_a_batch_of_results_expands_into_one_result_per_trial_in_order() -> None:
    records = [
        TrialRecord(number=n, params={"C": float(n)}, status=TrialStatus.OK, score=n / 10, runner="trial-runner-0")
        for n in (1, 2)
    ]
    decoded = TrialCompleted.model_validate_json(_results(records).model_dump_json())
    results = decoded.results()
    assert [(r.trial_id, r.number, r.params, r.score, r.batch) for r in results] == [
        ("exp-1.0", 0, {"C": 1.0}, 0.5, []),
        ("exp-1.1", 1, {"C": 1.0}, 0.1, []),
        ("exp-1.2", 2, {"C": 2.0}, 0.2, []),
    ]
    assert all(r.experiment_id == "exp-1" and r.attempt == 2 and r.finished_at == decoded.finished_at for r in results)
    assert TrialCompleted.model_validate_json(results[2].model_dump_json()) == results[2], "each one is a valid result"


def test_a_batch_of_results_holds_distinct_trials_and_is_bounded() -> None:
    with pytest.raises(ValidationError, match="batch: trial 0 of experiment 'exp-1' appears twice"):
        _results([TrialRecord(number=0, params={}, status=TrialStatus.OK)])
    records = [TrialRecord(number=n, params={}, status=TrialStatus.OK) for n in range(1, MAX_TRIAL_BATCH + 1)]
    with pytest.raises(ValidationError, match=f"at most {MAX_TRIAL_BATCH - 1} items"):
        _results(records)
    assert len(_results(records[:-1]).results()) == MAX_TRIAL_BATCH
