"""Shared builders of tweak files and specs for the tests: one minimal valid experiment, overridable per section."""

from __future__ import annotations

import copy
from typing import Any

from tweakline.proto.tweakfile import ExperimentSpec, TweakFile

# The smallest experiment every section of which is valid: SVC on iris, one log-scaled float.
BASE_SPEC: dict[str, Any] = {
    "dataset": {"source": "sklearn:iris", "seed": 0},
    "model": {"estimator": "sklearn.svm.SVC"},
    "search": {"space": {"C": {"type": "float", "low": 1e-3, "high": 1e3, "log": True}}},
    "objective": {"metric": "accuracy", "cv": 3},
}


def spec_dict(**sections: Any) -> dict[str, Any]:
    """``BASE_SPEC`` with whole sections replaced (``model={...}``) — a plain dict, for YAML or bad input."""
    data = copy.deepcopy(BASE_SPEC)
    data.update(copy.deepcopy(sections))
    return data


def make_spec(**sections: Any) -> ExperimentSpec:
    """A validated :class:`ExperimentSpec` from ``BASE_SPEC`` with sections replaced."""
    return ExperimentSpec.model_validate(spec_dict(**sections))


def tweak_dict(name: str = "test-experiment", **sections: Any) -> dict[str, Any]:
    """A whole tweak file as a dict (apiVersion, kind, metadata, spec)."""
    return {"apiVersion": "tweakline/v1", "kind": "Experiment", "metadata": {"name": name}, "spec": spec_dict(**sections)}


def make_tweak(name: str = "test-experiment", **sections: Any) -> TweakFile:
    """A validated :class:`TweakFile`."""
    return TweakFile.model_validate(tweak_dict(name, **sections))
