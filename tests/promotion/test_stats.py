"""The paired statistics of the production comparison, on generated predictions with a known truth.

Three situations for each test: the candidate is clearly better, better only within noise, and
worse. The data is generated with a fixed seed so that the expected verdict is certain.
"""

from __future__ import annotations

import numpy as np
import pytest

from tweakline.promotion.gate import decide
from tweakline.promotion.stats import BOOTSTRAP, MCNEMAR, Outputs, compare, mcnemar, oriented
from tweakline.proto.messages import Decision
from tweakline.proto.tweakfile import ExperimentSpec

RNG_SEED = 7


def labels(n: int, classes: int = 3, seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n)


def with_accuracy(y: np.ndarray, accuracy: float, seed: int, classes: int = 3) -> np.ndarray:
    """Predictions right on a random ``accuracy`` fraction of the rows, wrong (another class) elsewhere."""
    rng = np.random.default_rng(seed)
    pred = y.copy()
    wrong = rng.permutation(y.size)[: int(round((1 - accuracy) * y.size))]
    pred[wrong] = (y[wrong] + rng.integers(1, classes, wrong.size)) % classes
    return pred


def flip_some(y: np.ndarray, pred: np.ndarray, fix: int, seed: int) -> np.ndarray:
    """``pred`` with ``fix`` more rows right than before (a tiny, noise-sized improvement)."""
    out = pred.copy()
    wrong = np.flatnonzero(out != y)
    idx = np.random.default_rng(seed).choice(wrong, fix, replace=False)
    out[idx] = y[idx]
    return out


def accuracy_compare(y, cand, prod, required=0.0, alpha=0.05):
    return compare(
        "accuracy",
        y,
        Outputs(cand),
        Outputs(prod),
        "classification",
        candidate_value=float(np.mean(cand == y)),
        production_value=float(np.mean(prod == y)),
        required_gain=required,
        alpha=alpha,
        resamples=300,
    )


# ------------------------------------------------------------------------------------ McNemar


def test_mcnemar_counts_discordant_rows_and_matches_the_binomial_tail() -> None:
    y = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    cand = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1])  # wrong on 8, 9
    prod = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 1])  # wrong on 0-4, 9
    b, c, mid, exact = mcnemar(y, cand, prod)
    assert (b, c) == (5, 1)  # rows 0-4 only the candidate gets right; row 8 only production
    # P(X >= 5 | n=6, 1/2) = (6 + 1) / 64; mid-p subtracts half of P(X = 5) = 6/64.
    assert exact == pytest.approx(7 / 64)
    assert mid == pytest.approx(7 / 64 - 3 / 64)


def test_mcnemar_without_discordant_rows_supports_nothing() -> None:
    y = labels(50)
    assert mcnemar(y, y, y)[2:] == (1.0, 1.0)


def test_clearly_better_accuracy_is_supported() -> None:
    y = labels(400)
    prod = with_accuracy(y, 0.80, seed=1)
    cand = with_accuracy(y, 0.92, seed=2)
    c = accuracy_compare(y, cand, prod, required=0.01)
    assert c.test == MCNEMAR
    assert c.difference == pytest.approx(0.12, abs=0.005)
    assert c.p_value < 1e-4 and c.significant and c.supported
    assert c.discordant["candidate_only"] > c.discordant["production_only"]


def test_better_only_within_noise_is_not_supported_even_above_the_margin() -> None:
    y = labels(300)
    prod = with_accuracy(y, 0.85, seed=3)
    cand = flip_some(y, prod, fix=2, seed=4)  # two more rows right: +0.0067
    c = accuracy_compare(y, cand, prod, required=0.002)
    assert c.difference >= c.required_gain > 0
    assert c.discordant == {"candidate_only": 2, "production_only": 0}
    assert c.p_value == pytest.approx(0.125)  # P(X>=2|n=2)=1/4, minus half of 1/4
    assert not c.significant and not c.supported


def test_worse_accuracy_is_not_supported() -> None:
    y = labels(300)
    c = accuracy_compare(y, with_accuracy(y, 0.75, seed=5), with_accuracy(y, 0.85, seed=6))
    assert c.difference < 0
    assert c.p_value > 0.9
    assert not c.supported


def test_significant_but_below_the_required_margin_is_not_supported() -> None:
    y = labels(2000)
    prod = with_accuracy(y, 0.80, seed=8)
    cand = flip_some(y, prod, fix=40, seed=9)  # +0.02, highly significant
    c = accuracy_compare(y, cand, prod, required=0.05)
    assert c.significant and not c.supported


# ---------------------------------------------------------------------------- paired bootstrap


def f1_compare(y, cand, prod, resamples=400):
    from sklearn.metrics import f1_score

    return compare(
        "f1_macro",
        y,
        Outputs(cand),
        Outputs(prod),
        "classification",
        candidate_value=f1_score(y, cand, average="macro"),
        production_value=f1_score(y, prod, average="macro"),
        required_gain=0.0,
        alpha=0.05,
        resamples=resamples,
    )


def test_bootstrap_interval_for_a_clearly_better_classifier_excludes_zero() -> None:
    y = labels(300)
    c = f1_compare(y, with_accuracy(y, 0.93, seed=10), with_accuracy(y, 0.80, seed=11))
    assert c.test == BOOTSTRAP and c.resamples == 400
    assert 0 < c.ci_low < c.difference < c.ci_high
    assert c.confidence == pytest.approx(0.90)
    assert c.supported


def test_bootstrap_interval_within_noise_contains_zero() -> None:
    y = labels(300)
    prod = with_accuracy(y, 0.85, seed=12)
    c = f1_compare(y, flip_some(y, prod, fix=2, seed=13), prod)
    assert c.difference > 0
    assert c.ci_low <= 0 < c.ci_high
    assert not c.supported


def test_bootstrap_interval_for_a_worse_classifier_is_below_zero() -> None:
    y = labels(300)
    c = f1_compare(y, with_accuracy(y, 0.70, seed=14), with_accuracy(y, 0.88, seed=15))
    assert c.ci_high < 0 and not c.supported


def regression(n: int = 300, seed: int = 21) -> np.ndarray:
    return np.random.default_rng(seed).normal(10, 3, n)


@pytest.mark.parametrize(
    ("cand_noise", "prod_noise", "supported"),
    [(0.5, 2.0, True), (1.0, 1.0, False), (2.5, 1.0, False)],
    ids=["clearly-better", "within-noise", "worse"],
)
@pytest.mark.parametrize("metric", ["rmse", "mae", "r2"])
def test_paired_bootstrap_for_regression(metric: str, cand_noise: float, prod_noise: float, supported: bool) -> None:
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    y = regression()
    rng = np.random.default_rng(22)
    shared = rng.normal(0, 1, y.size)
    cand = y + cand_noise * shared + 0.05 * rng.normal(0, 1, y.size)
    prod = y + prod_noise * shared + 0.05 * rng.normal(0, 1, y.size)
    fn = {"rmse": root_mean_squared_error, "mae": mean_absolute_error, "r2": r2_score}[metric]
    c = compare(
        metric,
        y,
        Outputs(cand),
        Outputs(prod),
        "regression",
        candidate_value=fn(y, cand),
        production_value=fn(y, prod),
        required_gain=0.0,
        alpha=0.05,
        resamples=300,
    )
    assert c.test == BOOTSTRAP
    assert c.supported is supported
    # lower-is-better metrics are oriented: a positive difference means the candidate is better
    assert (c.difference > 0) is (cand_noise < prod_noise) or cand_noise == prod_noise
    assert c.ci_low <= c.difference <= c.ci_high


def test_orientation_of_lower_is_better_metrics() -> None:
    assert oriented("rmse", 1.0, 2.0) == 1.0
    assert oriented("accuracy", 0.9, 0.8) == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------- gate


SPEC = ExperimentSpec.model_validate(
    {
        "dataset": {"source": "sklearn:iris"},
        "model": {"estimator": "sklearn.svm.SVC"},
        "search": {"space": {"C": {"type": "float", "low": 0.1, "high": 10}}},
        "objective": {"metric": "accuracy"},
        "gate": {"thresholds": {"accuracy": 0.7}, "beat_production_by": 0.002},
        "deploy": {"release": "iris"},
    }
)


def test_first_release_needs_only_the_thresholds() -> None:
    result = decide(SPEC, {"accuracy": 0.8})
    assert result.decision is Decision.PROMOTE
    assert any("no model in production" in r for r in result.reasons)


def test_gate_rejects_within_noise_with_the_evidence_in_words() -> None:
    y = labels(300)
    prod = with_accuracy(y, 0.85, seed=3)
    cand = flip_some(y, prod, fix=2, seed=4)
    c = accuracy_compare(y, cand, prod, required=0.002)
    result = decide(SPEC, {"accuracy": c.candidate}, {"accuracy": c.production}, c)
    assert result.decision is Decision.REJECT
    assert "within noise" in result.reasons[0] and "McNemar mid-p 0.125" in result.reasons[0]


def test_gate_promotes_a_clearly_better_model_and_rejects_a_worse_one() -> None:
    y = labels(400)
    prod, good, bad = with_accuracy(y, 0.80, 1), with_accuracy(y, 0.92, 2), with_accuracy(y, 0.72, 3)
    better = accuracy_compare(y, good, prod, required=0.002)
    worse = accuracy_compare(y, bad, prod, required=0.002)
    assert decide(SPEC, {"accuracy": better.candidate}, {"accuracy": 0.8}, better).decision is Decision.PROMOTE
    rejected = decide(SPEC, {"accuracy": worse.candidate}, {"accuracy": 0.8}, worse)
    assert rejected.decision is Decision.REJECT
    assert rejected.reasons[0].startswith("worse than production")


def test_gate_with_production_but_no_comparison_rejects() -> None:
    assert decide(SPEC, {"accuracy": 0.9}, {"accuracy": 0.8}, None).decision is Decision.REJECT
