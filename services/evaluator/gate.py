"""The promotion gate: thresholds on the test split and the comparison with production.

Pure functions over metric dictionaries, so every rule is unit-tested without a bus.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tweakline.proto.messages import Decision, GateCheck
from tweakline.proto.tweakfile import LOWER_IS_BETTER, ExperimentSpec


def better_by(metric: str, candidate: float, reference: float) -> float:
    """How much better ``candidate`` is than ``reference`` (positive is better, whatever the direction)."""
    return reference - candidate if metric in LOWER_IS_BETTER else candidate - reference


@dataclass
class GateResult:
    """The decision with every check that led to it."""

    decision: Decision
    checks: list[GateCheck] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        """One line per check, failed ones first."""
        return [c.detail for c in sorted(self.checks, key=lambda c: c.passed)]


def decide(
    spec: ExperimentSpec,
    candidate: dict[str, float],
    production: dict[str, float] | None,
) -> GateResult:
    """Apply ``spec.gate`` to the candidate's test metrics (and production's, on the same split)."""
    checks: list[GateCheck] = []
    for metric, threshold in spec.gate.thresholds.items():
        value = candidate.get(metric)
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
    metric = spec.objective.metric
    if production is not None and metric in production and metric in candidate:
        gain = better_by(metric, candidate[metric], production[metric])
        need = spec.gate.beat_production_by
        ok = gain >= need and gain > 0
        checks.append(
            GateCheck(
                rule="beat_production",
                passed=ok,
                detail=(
                    f"{metric} {candidate[metric]:.4f} vs production {production[metric]:.4f}: "
                    f"gain {gain:+.4f}, required > 0 and >= {need:.4f}"
                ),
            )
        )
    elif production is None:
        checks.append(GateCheck(rule="beat_production", passed=True, detail="no model in production: thresholds only"))
    decision = Decision.PROMOTE if all(c.passed for c in checks) else Decision.REJECT
    return GateResult(decision, checks)
