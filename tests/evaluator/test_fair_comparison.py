"""The evaluator compares with production only on rows production never trained on, and judges the defaults.

Production is fitted on the training rows of the benchmark's 700-row csv and recorded with its
holdout; the candidate is evaluated after the csv grew to 1000 rows. Under the same rule every
new test row is one production never saw; under another rule the rows production may have
trained on are left out and counted in the evidence.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from bench.search import generated_csv
from tests.factories import make_spec
from tweakline.evaluator.handlers import Evaluator
from tweakline.evaluator.scoring import Refit, holdout_record, refit_and_score
from tweakline.ml.datasets import load_dataset, split_dataset
from tweakline.promotion.gate import decide
from tweakline.proto.messages import Decision
from tweakline.proto.tweakfile import DatasetSpec

LOGREG = "sklearn.linear_model.LogisticRegression"


def rows_of(X: np.ndarray) -> set[bytes]:
    return {np.asarray(x, dtype=np.float64).tobytes() for x in X}


@pytest.fixture(scope="module")
def csvs(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("grown")
    return generated_csv(directory, rows=700), generated_csv(directory, rows=1000)


def spec_for(path, test_size: float = 0.25):
    return make_spec(
        dataset={"source": f"csv:{path}", "target": "label", "test_size": test_size, "seed": 0},
        model={"estimator": LOGREG},
        search={"space": {"C": {"type": "float", "low": 1e-3, "high": 1e3, "log": True}}},
    )


def production_on(path, test_size: float = 0.25):
    """A production model fitted on the training rows of ``path``, with the holdout it records."""
    spec = spec_for(path, test_size)
    split = split_dataset(load_dataset(spec.dataset), spec.dataset)
    model = LogisticRegression(C=0.01, max_iter=500).fit(split.X_train, split.y_train)
    return model, holdout_record(split), rows_of(split.X_train)


@pytest.mark.parametrize("production_test_size", [0.25, 0.15], ids=["same-rule", "other-rule"])
def test_after_the_csv_grows_production_is_scored_only_on_rows_it_never_trained_on(csvs, production_test_size) -> None:
    small, big = csvs
    model, holdout, trained_on = production_on(small, production_test_size)
    spec = spec_for(big)
    split = split_dataset(load_dataset(spec.dataset), spec.dataset)
    refit = refit_and_score(split, spec, {"C": 1.0}, ["sklearn."], "classification")
    _metrics, comparison = Evaluator._compare(spec, split, "classification", refit, model, holdout)
    used = list(range(len(split.y_test)))
    if production_test_size == 0.25:  # the same rule: production trained on none of today's test rows
        assert comparison.excluded == 0 and comparison.n == len(split.y_test)
        assert "same rule" in comparison.reference_holdout
    else:  # another rule: only the rows it also held out
        assert 0 < comparison.excluded < len(split.y_test)
        assert comparison.n + comparison.excluded == len(split.y_test)
        from tweakline.ml.holdout import HoldoutRule, held_out

        used = np.flatnonzero(held_out(split.test_keys, HoldoutRule(production_test_size, 0))).tolist()
    assert len(used) == comparison.n
    assert rows_of(split.X_test[used]).isdisjoint(trained_on)  # never a row production trained on
    assert comparison.n > 150  # about a quarter of 1000 rows: said in the evidence
    detail = decide(spec, refit.metrics, {"accuracy": comparison.production}, comparison).checks[-1].detail
    assert f"on {comparison.n} test rows both models were scored on" in detail


def test_a_production_without_a_recorded_holdout_is_said_to_be_unknown(csvs) -> None:
    """Without a recorded holdout rule (a release from before) the comparison says so."""
    small, big = csvs
    model, _holdout, _trained_on = production_on(small)
    spec = spec_for(big)
    split = split_dataset(load_dataset(spec.dataset), spec.dataset)
    refit = refit_and_score(split, spec, {"C": 1.0}, ["sklearn."], "classification")
    _metrics, comparison = Evaluator._compare(spec, split, "classification", refit, model, None)
    assert "unknown" in comparison.reference_holdout


def test_a_tuned_model_worse_than_the_defaults_is_rejected(csvs) -> None:
    """The issue's case: tuned below the defaults on the same rows is not promoted (on by default)."""
    _small, big = csvs
    spec = spec_for(big)
    split = split_dataset(load_dataset(spec.dataset), spec.dataset)
    # a crippled "best" configuration against the defaults (C=1.0)
    refit = refit_and_score(split, spec, {"C": 1e-4}, ["sklearn."], "classification")
    assert refit.metrics["accuracy"] < refit.default_metrics["accuracy"]
    defaults = Evaluator._against_defaults(spec, split, "classification", refit)
    result = decide(spec, refit.metrics, None, None, defaults)
    assert result.decision is Decision.REJECT
    (check,) = [c for c in result.checks if c.rule == "not_worse_than_defaults"]
    assert not check.passed and "worse than the default parameters" in check.detail
    assert f"on {len(split.y_test)} test rows" in check.detail
    switched_off = spec.model_copy(update={"gate": spec.gate.model_copy(update={"not_worse_than_defaults": False})})
    assert decide(switched_off, refit.metrics, None, None, defaults).decision is Decision.PROMOTE
    better = Refit(refit.default_model, refit.default_metrics, refit.default_metrics, "classification", refit.default_model)
    same = Evaluator._against_defaults(spec, split, "classification", better)
    assert decide(spec, better.metrics, None, None, same).decision is Decision.PROMOTE  # equal is not worse


def test_the_evaluation_records_what_it_held_out(csvs) -> None:
    small, _big = csvs
    spec = DatasetSpec(source=f"csv:{small}", target="label", test_size=0.25, seed=0)
    split = split_dataset(load_dataset(spec), spec)
    record = holdout_record(split)
    assert record.method == "row-sha256" and (record.test_size, record.seed) == (0.25, 0)
    assert record.test_rows == len(split.y_test) and record.train_rows == len(split.y_train)
    assert len(record.test_digest) == 64 and record.test_digest != record.train_digest
