"""Parameters of pipeline steps (``standardscaler__with_mean``) can be fixed and searched like the estimator's."""

from __future__ import annotations

from tests.factories import make_spec
from tweakline.ml.estimators import build_estimator, check_spec

PIPELINE = {"estimator": "sklearn.svm.SVC", "pipeline": ["sklearn.preprocessing.StandardScaler"]}


def test_a_step_parameter_is_fixed_and_searched() -> None:
    spec = make_spec(
        model={**PIPELINE, "fixed": {"standardscaler__with_std": False}},
        search={
            "space": {
                "C": {"type": "float", "low": 0.1, "high": 10.0},
                "standardscaler__with_mean": {"type": "categorical", "choices": [True, False]},
            }
        },
    )
    assert check_spec(spec, ["sklearn."]) == []
    built = build_estimator(spec.model, {"C": 2.0, "standardscaler__with_mean": False}, ["sklearn."]).get_params()
    assert (built["standardscaler__with_mean"], built["standardscaler__with_std"], built["svc__C"]) == (False, False, 2.0)


def test_an_unknown_step_parameter_is_named_with_a_suggestion() -> None:
    spec = make_spec(
        model=PIPELINE, search={"space": {"standardscaler__with_meen": {"type": "categorical", "choices": [True, False]}}}
    )
    [problem] = check_spec(spec, ["sklearn."])
    assert problem.path == "spec.search.space.standardscaler__with_meen"
    assert "StandardScaler has no parameter 'with_meen' (did you mean 'with_mean'?)" in problem.message
