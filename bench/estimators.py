"""Test-only estimators for the benchmarks: an objective that returns at once, or after a fixed sleep.

They are allowed only for a benchmark run, through ``TWEAKLINE_ALLOWED_ESTIMATORS`` set by
``bench/platform.py`` for the stack it starts; the default allow-list (``sklearn.``) is untouched.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

ALLOW_PREFIX = "bench.estimators."


class InstantClassifier(ClassifierMixin, BaseEstimator):
    """Predicts the first class seen; ``fit`` sleeps ``seconds`` (0: returns at once).

    ``x`` is a dummy hyperparameter so that the search has something to sample.
    """

    def __init__(self, x: float = 0.0, seconds: float = 0.0):
        self.x = x
        self.seconds = seconds

    def fit(self, X, y):
        """Remember the classes; sleep ``seconds`` (a fixed-duration trial without CPU use)."""
        if self.seconds > 0:
            time.sleep(self.seconds)
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        """The first class for every row."""
        return np.full(len(X), self.classes_[0])
