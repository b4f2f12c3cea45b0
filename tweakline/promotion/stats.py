"""Paired statistics for the production comparison: is the candidate really better on the same rows?

Both models predict the same held-out test rows, so every test here is *paired*: the noise that
comes from which rows happened to land in the test split cancels out, and a small but real
improvement can be told apart from luck.

- ``accuracy``: McNemar's test on the discordant rows (``b`` rows only the candidate gets right,
  ``c`` rows only production gets right). Under "no difference" ``b ~ Binomial(b + c, 1/2)``. We
  use the one-sided **mid-p** value (exact binomial tail minus half the point probability):
  the exact test is conservative for the small discordant counts of a test split, the mid-p
  keeps close to the nominal level without the normal approximation (Fagerland, Lydersen and
  Laake, 2013). The exact p-value is reported too.
- every other metric (macro F1, recall, ROC AUC, log loss, r2, rmse, mae): a **paired bootstrap**
  of the difference: the test rows are resampled with replacement (the same rows for both
  models) and the metric difference recomputed on each resample; the percentile interval's
  lower bound is a one-sided ``1 - alpha`` confidence bound (``scipy.stats.bootstrap``).
  These metrics are not sums of per-row agreements, so McNemar does not apply to them.

Differences are oriented so that positive always means "the candidate is better" (for rmse,
mae and log loss, production minus candidate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tweakline.ml.metrics import compute_metrics
from tweakline.proto.messages import Comparison
from tweakline.proto.tweakfile import LOWER_IS_BETTER


def _sps() -> Any:
    """``scipy.stats``, imported on first use (a second of CPU the deployer's start need not pay)."""
    from scipy import stats

    return stats


MCNEMAR = "mcnemar-midp"
BOOTSTRAP = "paired-bootstrap"


@dataclass
class Outputs:
    """What one model says about each test row: labels or values, and class scores when it has them."""

    pred: np.ndarray
    proba: np.ndarray | None = None
    decision: np.ndarray | None = None
    classes: np.ndarray | None = None

    @classmethod
    def of(cls, model: Any, X: np.ndarray) -> Outputs:
        """Run ``model`` once on ``X`` and keep everything a metric may need."""
        proba = np.asarray(model.predict_proba(X)) if hasattr(model, "predict_proba") else None
        decision = np.asarray(model.decision_function(X)) if proba is None and hasattr(model, "decision_function") else None
        classes = getattr(model, "classes_", None)
        return cls(np.asarray(model.predict(X)), proba, decision, None if classes is None else np.asarray(classes))


class Replay:
    """A stand-in estimator answering from stored :class:`Outputs` for a subset of row indices.

    Scoring it with :func:`compute_metrics` (``X`` = the row indices) reuses exactly the metric
    definitions of trials and of the gate, so the bootstrap measures the same quantity.
    """

    def __init__(self, outputs: Outputs):
        self._o = outputs
        if outputs.classes is not None:
            self.classes_ = outputs.classes
        if outputs.proba is not None:
            self.predict_proba = lambda idx: outputs.proba[np.asarray(idx, dtype=int)]
        if outputs.decision is not None:
            self.decision_function = lambda idx: outputs.decision[np.asarray(idx, dtype=int)]

    def predict(self, idx: np.ndarray) -> np.ndarray:
        return self._o.pred[np.asarray(idx, dtype=int)]


def oriented(metric: str, candidate: float, production: float) -> float:
    """``candidate - production`` with the sign flipped for lower-is-better metrics (positive is better)."""
    return production - candidate if metric in LOWER_IS_BETTER else candidate - production


def mcnemar(y: np.ndarray, candidate: np.ndarray, production: np.ndarray) -> tuple[int, int, float, float]:
    """Discordant counts ``(b, c)`` and the one-sided (candidate better) mid-p and exact p-values."""
    cand_ok = np.asarray(candidate) == np.asarray(y)
    prod_ok = np.asarray(production) == np.asarray(y)
    b = int(np.sum(cand_ok & ~prod_ok))
    c = int(np.sum(~cand_ok & prod_ok))
    n = b + c
    if n == 0:
        return b, c, 1.0, 1.0
    exact = float(_sps().binom.sf(b - 1, n, 0.5))  # P(X >= b)
    mid = exact - 0.5 * float(_sps().binom.pmf(b, n, 0.5))
    return b, c, min(1.0, mid), min(1.0, exact)


def paired_bootstrap(
    metric: str,
    y: np.ndarray,
    candidate: Outputs,
    production: Outputs,
    task: str,
    *,
    alpha: float,
    resamples: int,
    seed: int = 0,
) -> tuple[float, float, float]:
    """The observed oriented difference and its ``1 - 2*alpha`` percentile interval (low, high).

    The low end is a one-sided ``1 - alpha`` lower confidence bound on the improvement.
    """
    y = np.asarray(y)
    cand, prod = Replay(candidate), Replay(production)

    def diff(idx: np.ndarray) -> float:
        idx = np.asarray(idx, dtype=int)
        a = compute_metrics(cand, idx, y[idx], [metric], task).get(metric)
        b = compute_metrics(prod, idx, y[idx], [metric], task).get(metric)
        if a is None or b is None:  # undefined on this resample (e.g. one class only for roc_auc)
            return np.nan
        return oriented(metric, a, b)

    rows = np.arange(y.shape[0])
    observed = diff(rows)
    values = np.array([d for d in _resampled(diff, rows, resamples, seed) if np.isfinite(d)])
    if values.size == 0 or not np.isfinite(observed):
        return observed, float("nan"), float("nan")
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(observed), float(low), float(high)


def _resampled(statistic: Any, rows: np.ndarray, resamples: int, seed: int) -> list[float]:
    # scipy.stats.bootstrap draws the resamples (the same rows for both models: one sample of
    # row indices) and keeps the distribution; we take the percentiles ourselves so that a
    # resample where the metric is undefined can be dropped instead of failing the whole run.
    result = _sps().bootstrap(
        (rows,),
        statistic,
        n_resamples=resamples,
        vectorized=False,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return list(result.bootstrap_distribution)


def compare(
    metric: str,
    y: np.ndarray,
    candidate: Outputs,
    production: Outputs,
    task: str,
    *,
    candidate_value: float,
    production_value: float,
    required_gain: float,
    alpha: float,
    resamples: int,
    seed: int = 0,
) -> Comparison:
    """The paired comparison of the candidate with production on ``metric`` and whether it supports promotion.

    Supported means: the observed gain is at least ``required_gain`` **and** it is statistically
    significant at level ``alpha`` (McNemar mid-p below ``alpha`` for accuracy; the one-sided
    ``1 - alpha`` bootstrap lower bound above 0 for everything else).
    """
    gain = oriented(metric, candidate_value, production_value)
    n = int(np.asarray(y).shape[0])
    common = {
        "metric": metric,
        "candidate": candidate_value,
        "production": production_value,
        "difference": gain,
        "required_gain": required_gain,
        "alpha": alpha,
        "n": n,
    }
    if metric == "accuracy":
        b, c, mid_p, exact_p = mcnemar(y, candidate.pred, production.pred)
        significant = mid_p < alpha
        return Comparison(
            **common,
            test=MCNEMAR,
            p_value=mid_p,
            exact_p_value=exact_p,
            discordant={"candidate_only": b, "production_only": c},
            significant=significant,
            supported=significant and gain >= required_gain,
            rule=(
                f"promote if gain >= {required_gain:g} and McNemar one-sided mid-p < {alpha:g} (paired on the same {n} test rows)"
            ),
        )
    observed, low, high = paired_bootstrap(metric, y, candidate, production, task, alpha=alpha, resamples=resamples, seed=seed)
    significant = bool(np.isfinite(low) and low > 0)
    return Comparison(
        **common,
        test=BOOTSTRAP,
        ci_low=None if not np.isfinite(low) else low,
        ci_high=None if not np.isfinite(high) else high,
        confidence=1.0 - 2.0 * alpha,
        resamples=resamples,
        significant=significant,
        supported=significant and gain >= required_gain,
        rule=(
            f"promote if gain >= {required_gain:g} and the {1 - alpha:.0%} one-sided paired-bootstrap lower "
            f"bound of the gain > 0 ({resamples} resamples of the same {n} test rows)"
        ),
    )
