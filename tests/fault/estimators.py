"""Estimators for fault tests: they spend wall-clock time without CPU, or fail on purpose.

The machine running the tests is small and shared, so a "long" trial sleeps instead of
computing. Importable by the services (the tests put the repository on ``PYTHONPATH`` and add
``tests.fault.`` to the estimator allow-list).
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import unique_labels


class SleepyClassifier(ClassifierMixin, BaseEstimator):
    """Predicts the majority class after sleeping ``delay`` seconds in ``fit``.

    ``fail_if`` makes ``fit`` raise ``ValueError`` when ``delay`` equals it, ``crash_if`` makes
    the process kill itself (as a segfault or the OOM killer would), and ``hog_mb`` allocates
    (and touches) that much memory during ``fit``. ``hold`` names a file: while it exists, ``fit``
    waits (at most 10 minutes) before it starts, so a test can keep an experiment mid-way for as
    long as a fault takes, however slow the machine.
    """

    def __init__(
        self,
        delay: float = 0.0,
        fail_if: float | None = None,
        crash_if: float | None = None,
        hog_mb: int = 0,
        hold: str = "",
        random_state=None,
    ):
        self.delay = delay
        self.fail_if = fail_if
        self.crash_if = crash_if
        self.hog_mb = hog_mb
        self.hold = hold
        self.random_state = random_state

    def fit(self, X, y):
        deadline = time.monotonic() + 600
        while self.hold and os.path.exists(self.hold) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.crash_if is not None and self.delay == self.crash_if:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.fail_if is not None and self.delay == self.fail_if:
            raise ValueError(f"delay={self.delay} is refused by this estimator")
        hog = np.ones(self.hog_mb * 2**20 // 8) if self.hog_mb else None
        time.sleep(self.delay)
        del hog
        self.classes_ = unique_labels(y)
        values, counts = np.unique(y, return_counts=True)
        self.majority_ = values[int(np.argmax(counts))]
        return self

    def predict(self, X):
        return np.full(len(X), self.majority_)

    def predict_proba(self, X):
        proba = np.zeros((len(X), len(self.classes_)))
        proba[:, int(np.searchsorted(self.classes_, self.majority_))] = 1.0
        return proba
