"""The import allow-list, estimator construction and the semantic check of a spec."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from tests.factories import make_spec
from tweakline.errors import EstimatorNotAllowedError, Problem
from tweakline.ml.estimators import (
    InvalidEstimatorError,
    build_estimator,
    check_spec,
    final_estimator,
    is_allowed,
    qualify_params,
    resolve,
    task_of,
)
from tweakline.proto.tweakfile import ModelSpec

ALLOWED = ["sklearn."]
SVC_PARAMS = "C, break_ties, cache_size, class_weight, coef0, decision_function_shape, degree, gamma, kernel"


def by_path(problems: list[Problem]) -> dict[str, str]:
    return {p.path: p.message for p in problems}


# ---------------------------------------------------------------------------------- allow-list


def test_resolve_allowed_class() -> None:
    assert resolve("sklearn.svm.SVC", ALLOWED) is SVC
    assert resolve("sklearn.linear_model.Ridge", ["sklearn.linear_model"]) is Ridge


def test_a_class_found_once_is_still_refused_under_a_narrower_allow_list() -> None:
    assert resolve("sklearn.svm.SVC", ["sklearn."]) is SVC  # remembered for this allow-list only
    with pytest.raises(EstimatorNotAllowedError):
        resolve("sklearn.svm.SVC", ["sklearn.linear_model"])
    with pytest.raises(EstimatorNotAllowedError):
        resolve("sklearn.svm.SVC", [])


@pytest.mark.parametrize(
    "path", ["os.system", "subprocess.Popen", "sklearnx.evil", "builtins.eval", "sklearn_evil.Model", "xsklearn.svm.SVC"]
)
def test_resolve_refuses_paths_outside_the_allow_list(path: str) -> None:
    with pytest.raises(EstimatorNotAllowedError) as info:
        resolve(path, ALLOWED)
    assert str(info.value) == f"'{path}' is not allowed; allowed prefixes: sklearn."


def test_refused_module_is_never_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "tl_evil_module.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Model:\n    def fit(self): ...\n    def get_params(self): ...\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(EstimatorNotAllowedError):
        resolve("tl_evil_module.Model", ALLOWED)
    assert not marker.exists()
    assert "tl_evil_module" not in sys.modules
    # The same module is importable once its prefix is allowed, which proves the marker works.
    resolve("tl_evil_module.Model", ["tl_evil_module."])
    assert marker.exists()
    monkeypatch.delitem(sys.modules, "tl_evil_module")


def test_prefix_matching_respects_name_boundaries() -> None:
    assert is_allowed("sklearn.svm.SVC", ["sklearn"])
    assert not is_allowed("sklearnx.evil", ["sklearn"])
    assert not is_allowed("sklearnx.evil", ["sklearn."])
    assert is_allowed("sklearn.svm.SVC", ["sklearn.svm"])
    assert not is_allowed("sklearn.svmx.A", ["sklearn.svm"])
    assert not is_allowed("os.system", ["", "  "])
    assert not is_allowed("os.system", [])


@pytest.mark.parametrize("path", ["sklearn.utils.validation.np.ndarray", "sklearn.svm._classes.np.random.RandomState"])
def test_attribute_chains_leaving_the_allow_list_are_refused(path: str) -> None:
    with pytest.raises(EstimatorNotAllowedError, match=r"which is not allowed; allowed prefixes: sklearn\."):
        resolve(path, ALLOWED)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("sklearn.svm.SVX", r"'sklearn.svm' has no attribute 'SVX'; did you mean sklearn.svm.SV[CR]\?"),
        ("sklearn.nosuchmodule.Model", r"'sklearn' has no attribute 'nosuchmodule'"),
        ("sklearn.base.clone", r"'sklearn.base.clone' is a function, not an estimator class"),
        ("sklearn.svm", r"is a module, not an estimator class"),
        ("sklearn.utils.Bunch", r"is not a scikit-learn estimator"),
        ("sklearn.svm.SVC.__init__", r"special attribute"),
        ("sklearn svm", r"expected a dotted import path"),
    ],
)
def test_resolve_reports_unusable_paths(path: str, message: str) -> None:
    with pytest.raises(InvalidEstimatorError, match=message):
        resolve(path, ALLOWED)


# -------------------------------------------------------------------------------- construction


def test_build_applies_fixed_then_params_and_seed() -> None:
    model = ModelSpec(estimator="sklearn.svm.SVC", fixed={"C": 5.0, "kernel": "poly"})
    est = build_estimator(model, {"C": 0.5}, ALLOWED, seed=11)
    assert isinstance(est, SVC)
    assert (est.C, est.kernel, est.random_state) == (0.5, "poly", 11)
    assert build_estimator(model, {}, ALLOWED).C == 5.0
    assert build_estimator(model, {}, ALLOWED).random_state is None


class RecordingSVC(SVC):
    """An SVC with a ``set_params`` of its own, which records its calls (build_estimator must go through it)."""

    calls: list[dict[str, object]] = []

    def set_params(self, **params: object) -> RecordingSVC:
        RecordingSVC.calls.append(params)
        return super().set_params(**params)


def test_build_sets_what_set_params_would_and_goes_through_an_estimators_own_set_params() -> None:
    model = ModelSpec(estimator="sklearn.svm.SVC", fixed={"kernel": "poly"})
    built = build_estimator(model, {"C": 0.5}, ALLOWED, 2, seed=3)
    assert built.get_params() == SVC().set_params(kernel="poly", C=0.5, random_state=3).get_params()
    RecordingSVC.calls.clear()
    own = ModelSpec(estimator="tests.ml.test_estimators.RecordingSVC")
    assert build_estimator(own, {"C": 0.5}, [*ALLOWED, "tests.ml."], seed=3).C == 0.5
    assert RecordingSVC.calls == [{"C": 0.5, "random_state": 3}]


def test_build_keeps_a_random_state_the_user_set() -> None:
    fixed = ModelSpec(estimator="sklearn.ensemble.RandomForestClassifier", fixed={"random_state": 3})
    assert build_estimator(fixed, {}, ALLOWED, seed=11).random_state == 3
    searched = ModelSpec(estimator="sklearn.ensemble.RandomForestClassifier")
    assert build_estimator(searched, {"random_state": 4}, ALLOWED, seed=11).random_state == 4


def test_build_sets_platform_n_jobs() -> None:
    model = ModelSpec(estimator="sklearn.ensemble.RandomForestClassifier", fixed={"n_jobs": -1})
    assert build_estimator(model, {}, ALLOWED, n_jobs=1).n_jobs == 1
    assert build_estimator(model, {}, ALLOWED).n_jobs == -1


def test_build_wraps_steps_in_a_pipeline_with_estimator_params() -> None:
    model = ModelSpec(estimator="sklearn.linear_model.LogisticRegression", pipeline=["sklearn.preprocessing.StandardScaler"])
    est = build_estimator(model, {"C": 0.25}, ALLOWED, seed=2)
    assert isinstance(est, Pipeline)
    assert [type(s) for _, s in est.steps] == [StandardScaler, LogisticRegression]
    final = final_estimator(est)
    assert (final.C, final.random_state) == (0.25, 2)
    qualified = qualify_params(est, {"C": 3.0})
    assert qualified == {"logisticregression__C": 3.0}
    est.set_params(**qualified)
    assert final.C == 3.0
    assert qualify_params(SVC(), {"C": 1}) == {"C": 1}


def test_build_refuses_unknown_params_and_disallowed_steps() -> None:
    with pytest.raises(InvalidEstimatorError, match=r"SVC has no parameter 'Cx' \(did you mean 'C'\?\)"):
        build_estimator(ModelSpec(estimator="sklearn.svm.SVC"), {"Cx": 1.0}, ALLOWED)
    with pytest.raises(EstimatorNotAllowedError, match="'os.system' is not allowed"):
        build_estimator(ModelSpec(estimator="sklearn.svm.SVC", pipeline=["os.system"]), {}, ALLOWED)
    with pytest.raises(InvalidEstimatorError, match="not a transformer"):
        build_estimator(ModelSpec(estimator="sklearn.svm.SVC", pipeline=["sklearn.svm.SVR"]), {}, ALLOWED)


def test_task_of() -> None:
    assert task_of(ModelSpec(estimator="sklearn.svm.SVC"), ALLOWED) == "classification"
    assert task_of(ModelSpec(estimator="sklearn.linear_model.Ridge"), ALLOWED) == "regression"
    with pytest.raises(InvalidEstimatorError, match="neither a classifier nor a regressor"):
        task_of(ModelSpec(estimator="sklearn.cluster.KMeans"), ALLOWED)
    with pytest.raises(EstimatorNotAllowedError):
        task_of(ModelSpec(estimator="os.system"), ALLOWED)


# -------------------------------------------------------------------------------- check_spec


def test_valid_spec_has_no_problems() -> None:
    spec = make_spec(
        model={"estimator": "sklearn.svm.SVC", "pipeline": ["sklearn.preprocessing.StandardScaler"], "fixed": {"tol": 1e-4}},
        search={
            "space": {
                "C": {"type": "float", "low": 1e-3, "high": 1e3, "log": True},
                "kernel": {"type": "categorical", "choices": ["rbf", "poly"]},
                "degree": {"type": "int", "low": 2, "high": 4, "when": {"kernel": "poly"}},
            }
        },
        gate={"thresholds": {"accuracy": 0.9, "recall_macro": 0.9}},
    )
    assert check_spec(spec, ALLOWED) == []


def test_a_resource_must_be_a_parameter_of_the_estimator() -> None:
    search = {"space": {"C": {"type": "float", "low": 1e-3, "high": 1e3, "log": True}}, "pruner": "asha"}
    svc = make_spec(search={**search, "resource": {"name": "n_estimators", "min": 10, "max": 90}})
    assert by_path(check_spec(svc, ALLOWED)) == {
        "spec.search.resource.name": "SVC has no parameter 'n_estimators' to grow in rungs; use fraction "
        "(any estimator), or an estimator with n_estimators"
    }
    assert check_spec(make_spec(search={**search, "resource": {"name": "fraction", "min": 0.1}}), ALLOWED) == []
    assert check_spec(make_spec(search={**search, "resource": {"name": "max_iter", "min": 10, "max": 90}}), ALLOWED) == []


def test_disallowed_estimator_and_step() -> None:
    spec = make_spec(model={"estimator": "os.system", "pipeline": ["sklearn.preprocessing.StandardScaler", "subprocess.Popen"]})
    problems = by_path(check_spec(spec, ALLOWED))
    assert problems == {
        "spec.model.estimator": "'os.system' is not allowed; allowed prefixes: sklearn.",
        "spec.model.pipeline[1]": "'subprocess.Popen' is not allowed; allowed prefixes: sklearn.",
    }
    assert str(check_spec(spec, ALLOWED)[0]) == "spec.model.estimator: 'os.system' is not allowed; allowed prefixes: sklearn."


def test_unknown_parameter_names() -> None:
    spec = make_spec(
        model={"estimator": "sklearn.svm.SVC", "fixed": {"foo": 1}},
        search={"space": {"Cx": {"type": "float", "low": 1, "high": 2}}},
    )
    problems = by_path(check_spec(spec, ALLOWED))
    assert set(problems) == {"spec.model.fixed.foo", "spec.search.space.Cx"}
    assert problems["spec.search.space.Cx"].startswith(f"SVC has no parameter 'Cx' (did you mean 'C'?); known: {SVC_PARAMS}")
    assert problems["spec.model.fixed.foo"].startswith("SVC has no parameter 'foo'; known: C, ")


def test_parameter_values_checked_by_scikit_learn() -> None:
    spec = make_spec(
        model={"estimator": "sklearn.svm.SVC", "fixed": {"kernel": "nope"}},
        search={
            "space": {
                "gamma": {"type": "float", "low": -1, "high": 2},
                "shrinking": {"type": "categorical", "choices": [True, "maybe"]},
            }
        },
    )
    problems = by_path(check_spec(spec, ALLOWED))
    assert set(problems) == {"spec.model.fixed.kernel", "spec.search.space.gamma.low", "spec.search.space.shrinking.choices[1]"}
    assert "The 'kernel' parameter of SVC must be" in problems["spec.model.fixed.kernel"]
    assert "Got -1.0 instead" in problems["spec.search.space.gamma.low"]
    assert "Got 'maybe' instead" in problems["spec.search.space.shrinking.choices[1]"]


def test_float_range_for_an_integer_parameter() -> None:
    spec = make_spec(
        model={"estimator": "sklearn.ensemble.RandomForestClassifier"},
        search={"space": {"n_estimators": {"type": "float", "low": 10, "high": 100}}},
    )
    problems = by_path(check_spec(spec, ALLOWED))
    assert "must be an int" in problems["spec.search.space.n_estimators.low"]


def test_fixed_and_searched_parameter() -> None:
    spec = make_spec(model={"estimator": "sklearn.svm.SVC", "fixed": {"C": 1.0}})
    assert by_path(check_spec(spec, ALLOWED)) == {
        "spec.model.fixed.C": "is also searched in spec.search.space.C; keep it in one place"
    }


def test_metric_family_must_match_the_estimator() -> None:
    spec = make_spec(objective={"metric": "r2"}, gate={"thresholds": {"mae": 10.0}})
    problems = by_path(check_spec(spec, ALLOWED))
    assert problems["spec.objective.metric"] == (
        "'r2' is a regression metric but sklearn.svm.SVC is a classifier; expected one of "
        "accuracy, balanced_accuracy, precision_macro, recall_macro, f1_macro, roc_auc, log_loss"
    )
    assert problems["spec.gate.thresholds.mae"].startswith("'mae' is a regression metric but sklearn.svm.SVC is a classifier")
    regressor = make_spec(
        dataset={"source": "sklearn:diabetes"},
        model={"estimator": "sklearn.linear_model.Ridge"},
        search={"space": {"alpha": {"type": "float", "low": 0.01, "high": 10}}},
        objective={"metric": "accuracy"},
    )
    assert by_path(check_spec(regressor, ALLOWED))["spec.objective.metric"] == (
        "'accuracy' is a classification metric but sklearn.linear_model.Ridge is a regressor; expected one of r2, rmse, mae"
    )


def test_metrics_the_estimator_cannot_compute() -> None:
    problems = by_path(check_spec(make_spec(objective={"metric": "log_loss"}), ALLOWED))
    assert "'log_loss' needs predicted probabilities but SVC has no predict_proba" in problems["spec.objective.metric"]
    problems = by_path(check_spec(make_spec(gate={"thresholds": {"roc_auc": 0.9}}), ALLOWED))
    assert "multiclass dataset 'iris'" in problems["spec.gate.thresholds.roc_auc"]
    # Binary: decision_function is enough for roc_auc.
    binary = make_spec(dataset={"source": "sklearn:breast_cancer"}, objective={"metric": "roc_auc"})
    assert check_spec(binary, ALLOWED) == []
    # A searched choice that enables predict_proba is accepted.
    sgd = make_spec(
        model={"estimator": "sklearn.linear_model.SGDClassifier"},
        search={"space": {"loss": {"type": "categorical", "choices": ["hinge", "log_loss"]}}},
        objective={"metric": "log_loss"},
    )
    assert check_spec(sgd, ALLOWED) == []


def test_estimator_that_cannot_be_tuned() -> None:
    kmeans = make_spec(
        model={"estimator": "sklearn.cluster.KMeans"}, search={"space": {"n_clusters": {"type": "int", "low": 2, "high": 5}}}
    )
    assert "neither a classifier nor a regressor" in by_path(check_spec(kmeans, ALLOWED))["spec.model.estimator"]
    stacking = make_spec(model={"estimator": "sklearn.ensemble.StackingClassifier"})
    assert "cannot be created without arguments" in by_path(check_spec(stacking, ALLOWED))["spec.model.estimator"]
    step = make_spec(model={"estimator": "sklearn.svm.SVC", "pipeline": ["sklearn.svm.SVR"]})
    assert by_path(check_spec(step, ALLOWED)) == {
        "spec.model.pipeline[0]": "'sklearn.svm.SVR' is not a transformer (it has no transform method)"
    }


def test_dataset_problems(tmp_path: Path) -> None:
    missing = make_spec(dataset={"source": "csv:data/train.csv", "target": "y"})
    assert by_path(check_spec(missing, ALLOWED, tmp_path)) == {
        "spec.dataset.source": f"file not found: {tmp_path / 'data' / 'train.csv'}"
    }
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("a,b,label\n1,2,0\n")
    assert "target column 'y' not found" in by_path(check_spec(missing, ALLOWED, tmp_path))["spec.dataset.target"]
    fixed = make_spec(dataset={"source": "csv:data/train.csv", "target": "label"})
    assert check_spec(fixed, ALLOWED, tmp_path) == []
    wrong_task = make_spec(dataset={"source": "sklearn:diabetes"})
    assert "'sklearn:diabetes' is a regression dataset" in by_path(check_spec(wrong_task, ALLOWED))["spec.dataset.source"]


def test_problems_come_in_tweak_file_order(tmp_path: Path) -> None:
    spec = make_spec(
        dataset={"source": "csv:nope.csv", "target": "y"},
        model={"estimator": "sklearn.svm.SVC", "fixed": {"foo": 1}},
        search={"space": {"Cx": {"type": "float", "low": 1, "high": 2}}},
        objective={"metric": "r2"},
    )
    paths = [p.path for p in check_spec(spec, ALLOWED, tmp_path)]
    assert paths == ["spec.dataset.source", "spec.model.fixed.foo", "spec.search.space.Cx", "spec.objective.metric"]
