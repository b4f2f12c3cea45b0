"""The experiment state's JSON assembled from cached entries is exactly ``model_dump_json()``."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from tests.factories import make_tweak
from tweakline.proto.messages import (
    ExperimentState,
    ExperimentStatus,
    Source,
    TrialCompleted,
    TrialRecord,
    TrialStatus,
    WarmStartReport,
)
from tweakline.scheduler.engine import ExperimentRun
from tweakline.scheduler.snapshot import StateJson

SPACE = {
    "C": {"type": "float", "low": 1e-3, "high": 1e3, "log": True},
    "kernel": {"type": "categorical", "choices": ["rbf", "linear"]},
}


def _state(**fields: object) -> ExperimentState:
    return ExperimentState(experiment_id="snap-1", tweak=make_tweak("snap", search={"space": SPACE}), **fields)


def _record(number: int, **fields: object) -> TrialRecord:
    values: dict[str, object] = {
        "number": number,
        "params": {"C": 0.5 + number, "kernel": "rbf"},
        "status": TrialStatus.OK,
        "score": 0.5 + number / 100,
        "metrics": {"accuracy": 0.5},
        "fold_scores": [0.4, 0.6],
    }
    values.update(fields)
    return TrialRecord(**values)


def _same(encoder: StateJson, state: ExperimentState, *, parses: bool = True) -> bytes:
    data = encoder.dump(state)
    assert data == state.model_dump_json().encode()
    if parses:  # (non-finite floats are written as null, which pydantic does not read back as a float)
        assert ExperimentState.model_validate_json(data) == state
    return data


def test_an_empty_state_and_a_growing_one_serialise_as_pydantic_does() -> None:
    state, encoder = _state(), StateJson()
    _same(encoder, state)
    for number in range(5):
        state.issued[number] = {"C": 1.0 + number, "kernel": "linear"}
        _same(encoder, state)
        state.results[number] = _record(number)
        _same(encoder, state)


def test_every_field_set_non_ascii_and_non_finite_values_serialise_as_pydantic_does() -> None:
    """NaN and infinities become null as pydantic writes them; non-ASCII text stays UTF-8, unescaped."""
    state = _state(
        source=Source(repository="équipe/modèle", branch="main", commit="abc", author="Zoë ☃", pull_request=7),
        status=ExperimentStatus.CANCELLED,
        finished_at=datetime(2026, 12, 1, 2, 3, 4, tzinfo=UTC),
        message="cancelled by ops: «stale» \u2028 line",
        superseded_by="snap-2",
        submitted_at=datetime(2026, 12, 1, tzinfo=UTC),
        warm_trials=[_record(90, runner="r-ü"), _record(91, status=TrialStatus.FAILED, score=None, error="boom\n")],
        warm_start=WarmStartReport(lineage="équipe/snap", available=2, reused=2, reasons={"espace": 1}),
        traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
    )
    state.issued = {0: {"C": math.nan, "kernel": "ünïcode"}, 1: {"C": math.inf}, 2: {"C": -math.inf, "kernel": None}}
    state.results = {
        1: _record(1, score=math.nan, metrics={"accuracy": math.inf, "loss": -math.inf}, fold_scores=[math.nan]),
        0: _record(0, status=TrialStatus.PRUNED, score=None, rung_scores=[0.1, math.inf], error="ça a échoué"),
    }
    data = _same(StateJson(), state, parses=False)
    assert "équipe".encode() in data and b'"C":null' in data


def test_a_replaced_entry_is_serialised_again_and_a_removed_one_disappears() -> None:
    state, encoder = _state(), StateJson()
    for number in range(4):
        state.issued[number] = {"C": float(number), "kernel": "rbf"}
        state.results[number] = _record(number)
    _same(encoder, state)
    state.results[2] = state.results[2].model_copy(update={"status": TrialStatus.FAILED, "error": "changed"})
    assert b"changed" in _same(encoder, state)
    state.issued[1] = {"C": 42.0}
    assert b'"1":{"C":42.0}' in _same(encoder, state)
    del state.results[0]
    del state.issued[0]
    _same(encoder, state)
    state.warm_trials = [_record(7)]
    _same(encoder, state)
    state.warm_trials = [_record(8), _record(7, error="again")]
    _same(encoder, state)
    state.warm_trials = []
    _same(encoder, state)


def test_entries_re_inserted_in_another_order_serialise_in_the_new_order() -> None:
    state, encoder = _state(), StateJson()
    state.results = {n: _record(n) for n in range(3)}
    _same(encoder, state)
    state.results = {n: state.results[n] for n in (2, 0, 1)}  # the same objects, other order
    _same(encoder, state)
    state.issued = {n: {"C": 1.0} for n in range(3)}
    _same(encoder, state)
    state.issued = {n + 10: params for n, params in state.issued.items()}  # the same objects, other keys
    assert b'"10":{"C":1.0}' in _same(encoder, state)


def test_an_engine_runs_an_experiment_saving_its_state_after_every_round() -> None:
    """Results, a redelivery, a warm-started state rebuilt from the saved JSON, and a cancel."""
    tweak = make_tweak("snap", search={"space": SPACE, "seed": 3}, budget={"max_trials": 24, "parallelism": 4})
    warm = [_record(n, score=0.9 - n / 100) for n in range(3)]
    run = ExperimentRun(ExperimentState(experiment_id="snap-2", tweak=tweak, warm_trials=warm))
    saved = run.dump()
    for round_ in range(3):
        for number, params in run.next_trials():
            result = TrialCompleted(
                experiment_id="snap-2",
                trial_id=f"snap-2.{number}",
                number=number,
                params=params,
                status=TrialStatus.OK if number % 3 else TrialStatus.FAILED,
                score=0.5 + number / 100 if number % 3 else None,
                metrics={"accuracy": 0.5},
            )
            assert run.record(result)
            assert not run.record(result)  # redelivered: recorded once
        saved = run.dump()
        assert saved == run.state.model_dump_json().encode(), f"round {round_}"
    # a restart rebuilds the run from the saved JSON; its own first save is the same document
    again = ExperimentRun(ExperimentState.model_validate_json(saved))
    assert again.dump() == saved
    again.state.status = ExperimentStatus.CANCELLED
    again.state.message = "cancelled"
    assert again.dump() == again.state.model_dump_json().encode()


@pytest.mark.parametrize("trials", [0, 1, 50])
def test_the_cached_json_parses_back_to_the_same_state(trials: int) -> None:
    state, encoder = _state(), StateJson()
    for number in range(trials):
        state.issued[number] = {"C": number / 7, "kernel": "rbf"}
        state.results[number] = _record(number, score=number / 3)
    assert ExperimentState.model_validate_json(encoder.dump(state)) == state
