"""Trainers: the user's code in a scrubbed process; the platform keeps the split and the scoring.

Real trainer processes throughout (tests/ml/trainer_code holds the user code).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.factories import make_spec, make_tweak
from tweakline.errors import ArtifactError
from tweakline.ml.artifacts import load_trainer_model, pack_trainer_model
from tweakline.ml.datasets import DatasetCache
from tweakline.ml.trainers import check_trainer, refit_trainer, run_trainer_trial
from tweakline.ml.trainers.bundles import pack_code, unpack_code
from tweakline.proto.messages import TrialStatus
from tweakline.validation.trust import code_trainer_problems

CODE = Path(__file__).parent / "trainer_code"
SPACE = {"C": {"type": "float", "low": 0.01, "high": 10.0, "log": True}}


def trainer_spec(trainer: dict[str, Any], **sections: Any):
    return make_spec(model={"trainer": {"code": str(CODE), **trainer}}, search={"space": SPACE}, **sections)


@pytest.fixture(scope="module")
def split():
    return DatasetCache().get(make_spec().dataset)


def test_callable_trains_on_training_rows_reports_steps_and_is_scored_by_the_platform(split) -> None:
    spec = trainer_spec({"callable": "good.py:fit", "steps": 3})
    seen: list[tuple[int, float]] = []
    outcome = run_trainer_trial(split, spec, {"C": 1.0}, code_dir=CODE, on_fold=lambda i, v: seen.append((i, v)))
    assert outcome.status is TrialStatus.OK, outcome.error
    assert [i for i, _ in seen] == [0, 1, 2]  # each report with the objective is a stage for the pruners
    assert outcome.fold_scores == [v for _, v in seen]
    # The platform's own score of the validation predictions (the reports are 0.02 and 0.01 lower before the last)
    assert outcome.score == pytest.approx(outcome.metrics["accuracy"]) and 0.8 < outcome.score <= 1.0
    assert seen[-1][1] == pytest.approx(outcome.score)
    assert {"f1_macro", "precision_macro"} <= outcome.metrics.keys()


def test_trainer_never_gets_the_test_split(split) -> None:
    spec = trainer_spec({"callable": "good.py:fit", "steps": 1})
    rows: list[float] = []

    def on_fold(i: int, v: float) -> bool:
        return False

    from tweakline.ml.trainers import sandbox

    original = sandbox.run_trainer

    def spy(job, on_report, **kw):
        def report(step, metrics):
            rows.append(metrics["rows"])
            return on_report(step, metrics)

        return original(job, report, **kw)

    sandbox_run = pytest.MonkeyPatch()
    sandbox_run.setattr("tweakline.ml.trainers.trial.run_trainer", spy)
    try:
        outcome = run_trainer_trial(split, spec, {"C": 1.0}, code_dir=CODE, on_fold=on_fold)
    finally:
        sandbox_run.undo()
    assert outcome.status is TrialStatus.OK, outcome.error
    assert rows == [len(split.X_train)]  # training + validation rows: exactly the training split
    assert len(split.X_test) > 0


def test_a_pruned_trainer_stops_at_the_verdict(split) -> None:
    spec = trainer_spec({"callable": "good.py:fit", "steps": 5})
    outcome = run_trainer_trial(split, spec, {"C": 1.0}, code_dir=CODE, on_fold=lambda i, v: i == 1)
    assert outcome.status is TrialStatus.PRUNED
    assert len(outcome.fold_scores) == 2 and outcome.score == outcome.fold_scores[-1]


def test_own_data_trainer_is_scored_by_its_last_report(split) -> None:
    spec = trainer_spec({"callable": "good.py:own_data", "steps": 3, "data": "own"})
    outcome = run_trainer_trial(split, spec, {"C": 1.0}, code_dir=CODE)
    assert outcome.status is TrialStatus.OK, outcome.error
    assert outcome.score == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("trainer", "limits", "cause"),
    [
        ({"callable": "broken_import.py:fit"}, {}, "ModuleNotFoundError: No module named 'a_module_that_does_not_exist'"),
        ({"callable": "bad.py:boom"}, {}, "ValueError: the learning rate is not a number (at bad.py:"),
        ({"callable": "bad.py:silent", "steps": 3}, {}, "never reported the objective 'accuracy'"),
        ({"callable": "bad.py:wrong_shape"}, {}, "predictions have shape ("),
        ({"callable": "bad.py:slow"}, {"timeout": 3.0}, "exceeded its time limit of 3s"),
        ({"callable": "bad.py:greedy"}, {"memory_mb": 300}, "over its limit of 300 MiB"),
        ({"command": "python garbage.py"}, {}, "printed 2 lines that are not JSON metrics (first: 'epoch 1 done, loss=0.3')"),
    ],
    ids=["import-error", "exception", "no-objective", "wrong-shape", "too-slow", "too-much-memory", "garbage"],
)
def test_a_failing_trainer_is_a_failed_trial_naming_the_cause(split, trainer, limits, cause) -> None:
    spec = trainer_spec(trainer)
    outcome = run_trainer_trial(split, spec, {"C": 1.0}, code_dir=CODE, **limits)
    assert outcome.status is TrialStatus.FAILED
    assert cause in (outcome.error or ""), outcome.error


def test_prints_cannot_forge_reports(split) -> None:
    spec = trainer_spec({"callable": "bad.py:chatty", "steps": 1})
    seen: list[int] = []
    outcome = run_trainer_trial(split, spec, {"C": 1.0}, code_dir=CODE, on_fold=lambda i, v: seen.append(i))
    assert outcome.status is TrialStatus.OK, outcome.error
    assert seen == []


def test_command_trainer_gets_params_as_arguments_env_and_file(split) -> None:
    spec = trainer_spec({"command": "python script.py --alpha {C}", "steps": 3})
    seen: list[float] = []
    outcome = run_trainer_trial(split, spec, {"C": 0.5}, code_dir=CODE, on_fold=lambda i, v: seen.append(v))
    assert outcome.status is TrialStatus.OK, outcome.error
    assert seen == pytest.approx([0.3, 0.4, 0.5])
    assert 0.2 < outcome.score < 0.5  # the majority class of iris' validation rows, scored by the platform


def test_the_trainer_process_cannot_reach_the_bus_or_credentials(split, tmp_path, monkeypatch) -> None:
    tls = tmp_path / "pki" / "trial-runner"
    tls.mkdir(parents=True)
    (tls / "tls.key").write_text("secret")
    monkeypatch.setenv("TWEAKLINE_TLS_DIR", str(tls))
    monkeypatch.setenv("TWEAKLINE_BITBUCKET_TOKEN", "secret")
    listener = socket.socket()  # an open socket in the caller, as the runner's NATS connection is
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    found: dict[str, float] = {}

    def on_report(step, metrics):
        found.update(metrics)
        return False

    from tweakline.ml.trainers.sandbox import TrainerJob, run_trainer
    from tweakline.proto.tweakfile import TrainerSpec

    job = TrainerJob(
        trainer=TrainerSpec(callable="good.py:snoop"),
        params={},
        code_dir=CODE,
        X=split.X_train,
        y=split.y_train,
        X_eval=split.X_train[:5],
        y_eval=None,
        classes=[0, 1, 2],
        task="classification",
        objective="accuracy",
    )
    try:
        result = run_trainer(job, on_report)
    finally:
        listener.close()
    assert result.status == "ok"
    assert found["env"] == 0, "TWEAKLINE_*/TLS variables reached the trainer"
    assert found["sockets"] == 0, "a socket of the caller (a bus connection) reached the trainer"
    assert found["pipes"] == 2, "pipes beyond the trainer's own protocol reached it"
    assert found["certs"] == 0


def test_refit_predicts_the_test_rows_and_the_model_is_served_by_its_predict(split, tmp_path) -> None:
    spec = trainer_spec({"callable": "good.py:fit", "predict": "good.py:predict"})
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    fitted = refit_trainer(split, spec, {"C": 1.0}, code_dir=CODE, model_dir=model_dir)
    predictions = fitted.predict(split.X_test)
    assert predictions.shape == (len(split.X_test),)
    data, sha = pack_trainer_model(model_dir, CODE, "good.py:predict")
    assert pack_trainer_model(model_dir, CODE, "good.py:predict")[1] == sha  # same model, same hash
    served = load_trainer_model(data, sha, tmp_path / "cache")
    assert np.array_equal(served.predict(split.X_test), predictions)
    with pytest.raises(ArtifactError, match="hash mismatch"):
        load_trainer_model(data[:-1] + bytes([data[-1] ^ 1]), sha, tmp_path / "cache2")


def test_code_bundle_round_trip_and_a_tampered_bundle_is_refused(tmp_path) -> None:
    data, sha = pack_code(CODE)
    assert pack_code(CODE)[1] == sha
    folder = unpack_code(data, sha, tmp_path)
    assert (folder / "good.py").read_bytes() == (CODE / "good.py").read_bytes()
    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0xFF
    with pytest.raises(ArtifactError, match="tampered"):
        unpack_code(bytes(tampered), sha, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_validation_checks_the_entry_point_without_running_it() -> None:
    ok = trainer_spec({"callable": "good.py:fit", "predict": "good.py:predict"})
    assert check_trainer(ok, None) == []
    missing = trainer_spec({"callable": "good.py:nope"})
    assert [p.path for p in check_trainer(missing, None)] == ["spec.model.trainer.callable"]
    assert "defines no top-level 'nope'" in check_trainer(missing, None)[0].message
    outside = trainer_spec({"callable": "../test_trainers.py:fit"})
    assert "leaves the code folder" in check_trainer(outside, None)[0].message
    command = trainer_spec({"command": "python script.py --alpha {alpha}"})
    problem = check_trainer(command, None)[0]
    assert problem.path == "spec.model.trainer.command" and "['alpha']" in problem.message


def test_a_shared_platform_refuses_code_trainers_unless_the_repository_is_allowed() -> None:
    tweak = make_tweak(model={"trainer": {"callable": "train.py:fit"}}, search={"space": SPACE})
    refused = code_trainer_problems(tweak, [], "team/models")
    assert [p.path for p in refused] == ["spec.model.trainer"]
    assert "switched off" in refused[0].message and "team/models" in refused[0].message
    assert code_trainer_problems(tweak, ["team/*"], "team/models") == []
    assert code_trainer_problems(tweak, ["team/*"], "other/models") != []
    assert code_trainer_problems(tweak, ["*"], None) == []
    assert code_trainer_problems(make_tweak(), [], "team/models") == []  # estimators are always fine
