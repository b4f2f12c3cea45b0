"""The promotion gate: thresholds on the test split and the comparison with production.

Pure functions over metric dictionaries, so every rule is unit-tested without a bus.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tweakline.proto.messages import Comparison, Decision, GateCheck
from tweakline.proto.tweakfile import LOWER_IS_BETTER, ExperimentSpec


@dataclass
class GateResult:
    """The decision with every check that led to it."""

    decision: Decision
    checks: list[GateCheck] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        """One line per check, failed ones first."""
        return [c.detail for c in sorted(self.checks, key=lambda c: c.passed)]


def threshold_checks(thresholds: dict[str, float], metrics: dict[str, float]) -> list[GateCheck]:
    """One check per threshold (minimum, or maximum for error metrics); a metric not computed fails."""
    checks: list[GateCheck] = []
    for metric, threshold in thresholds.items():
        value = metrics.get(metric)
        if value is None:
            checks.append(GateCheck(rule=f"threshold:{metric}", passed=False, detail=f"{metric} could not be computed"))
            continue
        if metric in LOWER_IS_BETTER:
            ok, op = value <= threshold, "<="
        else:
            ok, op = value >= threshold, ">="
        checks.append(
            GateCheck(
                rule=f"threshold:{metric}",
                passed=ok,
                detail=f"{metric} {value:.4f} {op} {threshold:.4f}" + ("" if ok else " does not hold"),
            )
        )
    return checks


def decide(
    spec: ExperimentSpec,
    candidate: dict[str, float],
    production: dict[str, float] | None = None,
    comparison: Comparison | None = None,
    defaults: Comparison | None = None,
) -> GateResult:
    """Apply ``spec.gate``: thresholds on the candidate's test metrics, then the paired comparison with production.

    A first release (``production`` is ``None``) needs only the thresholds. Otherwise the
    candidate must beat production by ``gate.beat_production_by`` with statistical support
    (see :mod:`tweakline.promotion.stats`); ``comparison`` carries that evidence. With
    ``gate.not_worse_than_defaults`` (the default), ``defaults`` — the same paired comparison of the
    tuned model with the default-parameters estimator on the same rows — must show no loss.
    """
    checks = threshold_checks(spec.gate.thresholds, candidate)
    if production is None:
        checks.append(GateCheck(rule="beat_production", passed=True, detail="no model in production: thresholds only"))
    elif comparison is None:
        checks.append(
            GateCheck(
                rule="beat_production",
                passed=False,
                detail=f"model in production but no paired comparison on {spec.objective.metric} could be made",
            )
        )
    else:
        checks.append(comparison_check(comparison))
    if spec.gate.not_worse_than_defaults and defaults is not None:
        checks.append(defaults_check(defaults))
    decision = Decision.PROMOTE if all(c.passed for c in checks) else Decision.REJECT
    return GateResult(decision, checks)


def _statistic(c: Comparison) -> str:
    if c.p_value is not None:
        return f"McNemar mid-p {c.p_value:.4g} (exact {c.exact_p_value:.4g}; discordant rows {c.discordant})"
    if c.ci_low is not None:
        return f"{c.confidence:.0%} paired-bootstrap interval of the gain [{c.ci_low:+.4f}, {c.ci_high:+.4f}]"
    return "paired bootstrap undefined on this split"


def _rows(c: Comparison) -> str:
    """The rows both models were scored on, and why some test rows were left out."""
    text = f"on {c.n} test rows both models were scored on"
    if c.excluded:
        text += f" ({c.excluded} test rows left out: the reference model may have trained on them)"
    if c.reference_holdout:
        text += f"; {c.reference_holdout}"
    return text


def defaults_check(c: Comparison) -> GateCheck:
    """The ``not_worse_than_defaults`` check: the tuned model loses nothing against the defaults on the same rows.

    A point-estimate rule (a loss of any size fails), because tuning that ends below the
    defaults has found nothing worth deploying; the paired statistic is the evidence.
    """
    ok = c.difference >= 0
    verdict = "not worse than the default parameters" if ok else "worse than the default parameters"
    return GateCheck(
        rule="not_worse_than_defaults",
        passed=ok,
        detail=(
            f"{verdict}: {c.metric} {c.candidate:.4f} vs defaults {c.production:.4f}, gain {c.difference:+.4f} "
            f"{_rows(c)}; {_statistic(c)}"
        ),
    )


def comparison_check(c: Comparison) -> GateCheck:
    """The ``beat_production`` check of a paired comparison, with the evidence in words."""
    stat = f"{_statistic(c)} {_rows(c)}"
    if c.supported:
        verdict = "better than production"
    elif c.difference < c.required_gain:
        verdict = "worse than production" if c.difference < 0 else "gain below the required margin over production"
    else:
        verdict = "better than production only within noise (not significant)"
    return GateCheck(
        rule="beat_production",
        passed=c.supported,
        detail=(
            f"{verdict}: {c.metric} {c.candidate:.4f} vs production {c.production:.4f}, gain {c.difference:+.4f} "
            f"(required >= {c.required_gain:g}); {stat}, alpha {c.alpha:g}"
        ),
    )
