"""What one trial produced, as the runner hands it on: a plain record, light to import.

It lives apart from :mod:`tweakline.ml.training` so that the trial-runner's parent process (which
only relays outcomes from its training child) never imports scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tweakline.proto.messages import TrialStatus


@dataclass
class TrialOutcome:
    """What one trial produced.

    Attributes:
        status: ``ok``, ``pruned`` (stopped by ``on_fold``) or ``failed``.
        score: Mean objective over the completed folds (None when failed or no fold completed).
        metrics: Mean of every metric over the folds where it was defined.
        fold_scores: The objective value of each completed fold, in order (with ``search.resource``:
            the folds of the last rung trained).
        rung_scores: With ``search.resource``, the CV score of each completed rung, in order.
        duration_s: Wall-clock seconds.
        cpu_s: CPU seconds of this process during the trial (``time.process_time``; it includes
            the estimator's worker threads, and would include concurrent trials of the same process).
        error: One line (exception type, message, where it was raised) when failed.
        warnings: Distinct warnings raised during the trial (``Category: message``), at most a few.
    """

    status: TrialStatus
    score: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    fold_scores: list[float] = field(default_factory=list)
    rung_scores: list[float] = field(default_factory=list)
    duration_s: float = 0.0
    cpu_s: float = 0.0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
