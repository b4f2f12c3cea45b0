"""Estimators: import paths checked against the allow-list, construction, and validation of a spec.

A tweak file names classes by import path (``sklearn.svm.SVC``). A pushed YAML must not run
arbitrary code, so :func:`resolve` imports a path only when it lies under one of the platform's
allowed prefixes (``Settings.allowed_estimators``, default ``["sklearn."]``), and the class it
finds must itself be defined under an allowed prefix and be a scikit-learn estimator.

:func:`check_spec` runs every rule that needs scikit-learn before anything is started, and
reports each problem at the exact field of the tweak file, e.g.
``spec.search.space.Cx: SVC has no parameter 'Cx' (did you mean 'C'?); known: C, ...``.

Parameter names in the tweak file are the estimator's own (``C``), never the pipeline-qualified
``svc__C``: :func:`build_estimator` sets them on the estimator before wrapping it in a pipeline.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sklearn.base import BaseEstimator, is_classifier, is_regressor
from sklearn.pipeline import Pipeline, make_pipeline

from tweakline.errors import EstimatorNotAllowedError, Problem, TweaklineError
from tweakline.ml.datasets import Task, check_dataset, location_of
from tweakline.proto.tweakfile import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    CategoricalParam,
    ExperimentSpec,
    FloatParam,
    ModelSpec,
    ResourceName,
)

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")

# Bundled datasets with more than two classes (roc_auc then needs predict_proba).
_MULTICLASS_DATASETS = frozenset({"iris", "digits", "wine"})


class InvalidEstimatorError(TweaklineError):
    """An allowed import path that does not give a usable scikit-learn estimator."""


# ---------------------------------------------------------------------------------- allow-list


def is_allowed(path: str, allowed_prefixes: Iterable[str]) -> bool:
    """Whether ``path`` lies under one of ``allowed_prefixes``.

    A prefix ending in ``.`` matches paths starting with it (``sklearn.`` matches
    ``sklearn.svm.SVC`` but not ``sklearnx.evil``); a prefix without the dot matches that exact
    name or names below it (``sklearn.svm`` matches ``sklearn.svm.SVC``, not ``sklearn.svmx.A``).
    Empty prefixes match nothing.
    """
    for prefix in allowed_prefixes:
        prefix = prefix.strip()
        if not prefix:
            continue
        if prefix.endswith("."):
            if path.startswith(prefix):
                return True
        elif path == prefix or path.startswith(prefix + "."):
            return True
    return False


def _prefixes(allowed_prefixes: Sequence[str]) -> str:
    return ", ".join(p for p in allowed_prefixes if p.strip()) or "(none)"


def _not_allowed(path: str, allowed_prefixes: Sequence[str]) -> str:
    return f"'{path}' is not allowed; allowed prefixes: {_prefixes(allowed_prefixes)}"


def resolve(import_path: str, allowed_prefixes: Sequence[str]) -> type:
    """The estimator class at ``import_path``, imported only if the allow-list permits it.

    A class found is remembered for the same path and allow-list (a trivial trial resolves its
    estimator once per fold); a refusal or an error is never remembered, so it is raised afresh.

    Raises:
        EstimatorNotAllowedError: The path, or the module the class really comes from, is
            outside ``allowed_prefixes``. Nothing is imported for a refused path.
        InvalidEstimatorError: The path does not import, or is not a scikit-learn estimator class.
    """
    return _resolve(import_path, tuple(allowed_prefixes))


@functools.lru_cache(maxsize=256)
def _resolve(import_path: str, allowed_prefixes: tuple[str, ...]) -> type:
    if not _DOTTED.fullmatch(import_path):
        raise InvalidEstimatorError(f"expected a dotted import path such as sklearn.svm.SVC, got {import_path!r}")
    if not is_allowed(import_path, allowed_prefixes):
        raise EstimatorNotAllowedError(_not_allowed(import_path, allowed_prefixes))
    parts = import_path.split(".")
    if any(p.startswith("__") and p.endswith("__") for p in parts):
        raise InvalidEstimatorError(f"'{import_path}' is not the import path of a class (it names a special attribute)")

    module, depth = None, len(parts) - 1
    while depth >= 1:
        name = ".".join(parts[:depth])
        try:
            module = importlib.import_module(name)
            break
        except ModuleNotFoundError as exc:
            if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
                raise InvalidEstimatorError(f"cannot import '{import_path}': {exc}") from None
            depth -= 1
        except Exception as exc:
            raise InvalidEstimatorError(f"cannot import '{import_path}': {type(exc).__name__}: {exc}") from None
    if module is None:
        raise InvalidEstimatorError(f"cannot import '{import_path}': no module named '{parts[0]}'")

    obj: Any = module
    for i in range(depth, len(parts)):
        attr = parts[i]
        if not hasattr(obj, attr):
            owner = ".".join(parts[:i])
            public = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(attr, public, n=1)
            hint = f"; did you mean {owner}.{close[0]}?" if close else ""
            raise InvalidEstimatorError(f"'{import_path}' does not exist: '{owner}' has no attribute '{attr}'{hint}")
        obj = getattr(obj, attr)

    if not isinstance(obj, type):
        raise InvalidEstimatorError(f"'{import_path}' is a {type(obj).__name__}, not an estimator class")
    origin = f"{obj.__module__}.{obj.__qualname__}"
    if not is_allowed(origin, allowed_prefixes):
        raise EstimatorNotAllowedError(
            f"'{import_path}' is {origin}, which is not allowed; allowed prefixes: {_prefixes(allowed_prefixes)}"
        )
    if not (callable(getattr(obj, "fit", None)) and callable(getattr(obj, "get_params", None))):
        raise InvalidEstimatorError(f"'{import_path}' is not a scikit-learn estimator (a class with fit and get_params)")
    return obj


# -------------------------------------------------------------------------------- construction


def _construct(cls: type, path: str) -> BaseEstimator:
    try:
        return cls()
    except Exception as exc:
        raise InvalidEstimatorError(f"'{path}' cannot be created without arguments: {type(exc).__name__}: {exc}") from None


def unknown_param_message(estimator_name: str, name: str, known: Iterable[str]) -> str:
    """``SVC has no parameter 'Cx' (did you mean 'C'?); known: C, cache_size, ...``."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{estimator_name} has no parameter '{name}'{hint}; known: {', '.join(known)}"


def _configure(estimator: BaseEstimator, *layers: Mapping[str, Any], seed: int | None, n_jobs: int | None) -> None:
    """Check every name of ``layers`` (in order: the first unknown one is reported), then set them,
    a later layer winning, plus the platform's seed and threads: one ``set_params`` call.

    scikit-learn inspects the constructor's signature on every ``get_params`` (and ``set_params``
    asks again); a trivial trial builds an estimator per fold, so a plain estimator's names are
    read once per class (:func:`_param_names`) and set as ``set_params`` would, one by one.
    """
    plain = _param_names(type(estimator))
    if plain is not None and not any("__" in name for values in layers for name in values):
        known: Mapping[str, Any] | frozenset[str] = plain
    else:  # nested names (step__param) or an estimator with its own get_params/set_params
        plain = None
        known = estimator.get_params(deep=True)
    user: dict[str, Any] = {}
    for values in layers:
        for name in values:
            if name not in known:
                raise InvalidEstimatorError(unknown_param_message(type(estimator).__name__, name, _top_level(estimator)))
        user.update(values)
    platform: dict[str, Any] = {}
    if seed is not None and "random_state" in known and "random_state" not in user:
        platform["random_state"] = seed
    if n_jobs is not None and "n_jobs" in known:
        platform["n_jobs"] = n_jobs
    if not (user or platform):
        return
    values = {**user, **platform}  # the platform's threads win over a tweak file's
    if plain is None:
        estimator.set_params(**values)
        return
    for name, value in values.items():  # BaseEstimator.set_params does this for a name without "__"
        setattr(estimator, name, value)


@functools.cache
def _param_names(cls: type) -> frozenset[str] | None:
    """The constructor parameters of ``cls`` if it keeps scikit-learn's own ``get_params``/``set_params``
    (so they are exactly its parameters, and ``set_params`` sets each as an attribute); else ``None``."""
    if not (
        isinstance(cls, type)
        and issubclass(cls, BaseEstimator)
        and cls.get_params is BaseEstimator.get_params
        and cls.set_params is BaseEstimator.set_params
        and getattr(cls._get_param_names, "__func__", None) is BaseEstimator._get_param_names.__func__
    ):
        return None
    try:
        return frozenset(cls._get_param_names())
    except Exception:  # e.g. a constructor with *args: get_params will say so
        return None


def _top_level(estimator: BaseEstimator) -> list[str]:
    return list(estimator.get_params(deep=False))


def build_estimator(
    model: ModelSpec,
    params: Mapping[str, Any],
    allowed_prefixes: Sequence[str],
    n_jobs: int | None = None,
    *,
    seed: int | None = None,
) -> BaseEstimator:
    """A fresh, unfitted estimator as the tweak file and one trial's parameters describe it.

    ``model.fixed`` is applied first, then ``params`` (so a trial's value wins). Parameter names
    are the estimator's own (``C``); when ``model.pipeline`` has steps, the estimator is configured
    first and then placed last in a :class:`~sklearn.pipeline.Pipeline` after the default-constructed
    steps (so its parameters appear there as ``svc__C``, see :func:`qualify_params`).

    Args:
        model: The tweak file's ``spec.model``.
        params: One trial's parameter values.
        allowed_prefixes: The platform's allow-list of import-path prefixes.
        n_jobs: Threads the platform lets the estimator (and any step) use; it overrides a
            tweak file's ``n_jobs``, which changes speed, not results.
        seed: Set as ``random_state`` on the estimator and the steps that have one, unless the
            tweak file sets ``random_state`` itself (in ``fixed`` or the search space).

    Raises:
        EstimatorNotAllowedError: A path is outside the allow-list.
        InvalidEstimatorError: A path is not an estimator / transformer, or a parameter name is unknown.
    """
    own_fixed, step_fixed = split_step_params(model, model.fixed)
    own_params, step_values = split_step_params(model, params)
    estimator = _construct(resolve(model.estimator, allowed_prefixes), model.estimator)
    _configure(estimator, own_fixed, own_params, seed=seed, n_jobs=n_jobs)
    if not model.pipeline:
        return estimator
    steps = []
    for index, path in enumerate(model.pipeline):
        step = _construct(resolve(path, allowed_prefixes), path)
        if not hasattr(step, "transform"):
            raise InvalidEstimatorError(f"pipeline step '{path}' is not a transformer (it has no transform method)")
        _configure(step, step_fixed.get(index, {}), step_values.get(index, {}), seed=seed, n_jobs=n_jobs)
        steps.append(step)
    return make_pipeline(*steps, estimator)


def step_names(model: ModelSpec) -> dict[str, int]:
    """Pipeline step name (as ``make_pipeline`` names it, e.g. ``standardscaler``) -> its index."""
    names = [path.rsplit(".", 1)[-1].lower() for path in model.pipeline]
    return {name: i for i, name in enumerate(names) if names.count(name) == 1}


def split_step_params(model: ModelSpec, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """``values`` split into the estimator's own and each pipeline step's (``standardscaler__with_mean``)."""
    steps = step_names(model)
    own: dict[str, Any] = {}
    per_step: dict[int, dict[str, Any]] = {}
    for name, value in values.items():
        prefix, sep, rest = name.partition("__")
        if sep and prefix in steps:
            per_step.setdefault(steps[prefix], {})[rest] = value
        else:
            own[name] = value
    return own, per_step


def final_estimator(estimator: BaseEstimator) -> BaseEstimator:
    """The estimator itself, or the last step of a pipeline."""
    return estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator


def qualify_params(estimator: BaseEstimator, params: Mapping[str, Any]) -> dict[str, Any]:
    """Tweak-file parameter names as :meth:`set_params` of ``estimator`` needs them (``C`` -> ``svc__C`` in a pipeline)."""
    if isinstance(estimator, Pipeline):
        last = estimator.steps[-1][0]
        return {f"{last}__{name}": value for name, value in params.items()}
    return dict(params)


def _task_of_instance(estimator: BaseEstimator, path: str) -> Task:
    if is_classifier(estimator):
        return "classification"
    if is_regressor(estimator):
        return "regression"
    raise InvalidEstimatorError(f"'{path}' is neither a classifier nor a regressor; tweakline tunes supervised estimators")


def task_of(model: ModelSpec, allowed_prefixes: Sequence[str]) -> Task:
    """``"classification"`` or ``"regression"``, from the estimator class (its scikit-learn tags)."""
    return _task_of_instance(_construct(resolve(model.estimator, allowed_prefixes), model.estimator), model.estimator)


# ---------------------------------------------------------------------------------- validation


def _value_error(cls: type, valid_fixed: Mapping[str, Any], name: str, value: Any) -> str | None:
    """scikit-learn's own complaint about ``name=value`` (None when valid or not checkable)."""
    estimator = cls()
    validate = getattr(estimator, "_validate_params", None)
    if validate is None or "__" in name:
        return None
    try:
        estimator.set_params(**valid_fixed, **{name: value})
        validate()
    except (ValueError, TypeError) as exc:
        return str(exc)
    except Exception:
        return None
    return None


def _metric_kind(metric: str) -> str:
    return "classification" if metric in CLASSIFICATION_METRICS else "regression"


def _has_scores(estimator: BaseEstimator, method: str, spec: ExperimentSpec, cls: type) -> bool:
    """Whether ``method`` exists with the fixed params, or with some single categorical choice of the space."""
    if hasattr(estimator, method):
        return True
    for name, param in spec.search.space.items():
        if isinstance(param, CategoricalParam) and "__" not in name:
            for choice in param.choices:
                try:
                    candidate = cls().set_params(**spec.model.fixed, **{name: choice})
                except Exception:
                    continue
                if hasattr(candidate, method):
                    return True
    return False


def _check_steps(model: ModelSpec, allowed_prefixes: Sequence[str]) -> list[Problem]:
    problems: list[Problem] = []
    for i, path in enumerate(model.pipeline):
        try:
            step = _construct(resolve(path, allowed_prefixes), path)
        except TweaklineError as exc:
            problems.append(Problem(f"spec.model.pipeline[{i}]", str(exc)))
            continue
        if not hasattr(step, "transform"):
            problems.append(Problem(f"spec.model.pipeline[{i}]", f"'{path}' is not a transformer (it has no transform method)"))
    return problems


def _check_step_params(spec: ExperimentSpec, allowed_prefixes: Sequence[str]) -> list[Problem]:
    """Pipeline-step parameters (``standardscaler__with_mean``) in ``model.fixed`` and ``search.space`` name real ones."""
    problems: list[Problem] = []
    steps = step_names(spec.model)
    for section, values in (("spec.model.fixed", spec.model.fixed), ("spec.search.space", spec.search.space)):
        for key in values:
            prefix, sep, rest = key.partition("__")
            if not sep or prefix not in steps:
                continue
            path = spec.model.pipeline[steps[prefix]]
            try:
                step = _construct(resolve(path, allowed_prefixes), path)
            except TweaklineError:
                continue  # reported at spec.model.pipeline
            known = step.get_params(deep=True)
            if rest not in known:
                problems.append(Problem(f"{section}.{key}", unknown_param_message(type(step).__name__, rest, _top_level(step))))
    return problems


def _check_params(cls: type, estimator: BaseEstimator, spec: ExperimentSpec) -> tuple[list[Problem], list[Problem]]:
    """Problems of ``model.fixed`` and of ``search.space``; valid fixed values are set on ``estimator``."""
    fixed_problems: list[Problem] = []
    space_problems: list[Problem] = []
    name = cls.__name__
    known = estimator.get_params(deep=True)
    top = _top_level(estimator)
    valid_fixed: dict[str, Any] = {}
    steps = step_names(spec.model)
    for key, value in spec.model.fixed.items():
        if key.partition("__")[0] in steps and "__" in key:
            continue  # a pipeline step's parameter: checked by _check_steps
        if key not in known:
            fixed_problems.append(Problem(f"spec.model.fixed.{key}", unknown_param_message(name, key, top)))
        elif error := _value_error(cls, valid_fixed, key, value):
            fixed_problems.append(Problem(f"spec.model.fixed.{key}", error))
        elif key in spec.search.space:
            fixed_problems.append(
                Problem(f"spec.model.fixed.{key}", f"is also searched in spec.search.space.{key}; keep it in one place")
            )
        else:
            valid_fixed[key] = value
    estimator.set_params(**valid_fixed)

    resource = spec.search.resource
    if resource is not None and resource.name is not ResourceName.FRACTION:
        key = resource.name.value
        if key not in _top_level(estimator):
            space_problems.append(
                Problem(
                    "spec.search.resource.name",
                    f"{name} has no parameter '{key}' to grow in rungs; use fraction (any estimator), or an estimator with {key}",
                )
            )
        elif error := _value_error(cls, valid_fixed, key, resource.value(resource.rungs()[0].amount)):
            space_problems.append(Problem("spec.search.resource.min", error))

    for key, param in spec.search.space.items():
        if key.partition("__")[0] in steps and "__" in key:
            continue  # a pipeline step's parameter: checked by _check_steps
        if key not in known:
            space_problems.append(Problem(f"spec.search.space.{key}", unknown_param_message(name, key, top)))
            continue
        checks: list[tuple[str, Any]]
        if isinstance(param, CategoricalParam):
            checks = [(f"choices[{j}]", choice) for j, choice in enumerate(param.choices)]
        elif isinstance(param, FloatParam):
            checks = [("low", float(param.low)), ("high", float(param.high))]
        else:
            checks = [("low", int(param.low)), ("high", int(param.high))]
        for where, value in checks:
            if error := _value_error(cls, valid_fixed, key, value):
                space_problems.append(Problem(f"spec.search.space.{key}.{where}", error))
    return fixed_problems, space_problems


def _check_metrics(cls: type, estimator: BaseEstimator, task: Task, spec: ExperimentSpec) -> list[Problem]:
    """The objective's and the gate's metrics: of the estimator's task, and computable by it."""
    problems: list[Problem] = []
    family = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    noun = "classifier" if task == "classification" else "regressor"
    dataset = location_of(spec.dataset.source) if spec.dataset.source.startswith("sklearn:") else None
    named = [("spec.objective.metric", spec.objective.metric)]
    named += [(f"spec.gate.thresholds.{metric}", metric) for metric in spec.gate.thresholds]
    for path, metric in named:
        if metric not in family:
            problems.append(
                Problem(
                    path,
                    f"'{metric}' is a {_metric_kind(metric)} metric but {spec.model.estimator} is a {noun}; "
                    f"expected one of {', '.join(family)}",
                )
            )
        elif metric in ("log_loss", "roc_auc") and not _has_scores(estimator, "predict_proba", spec, cls):
            if metric == "log_loss":
                problems.append(
                    Problem(
                        path,
                        f"'log_loss' needs predicted probabilities but {cls.__name__} has no "
                        "predict_proba with these settings; choose another metric or an estimator with predict_proba",
                    )
                )
            elif dataset in _MULTICLASS_DATASETS:
                problems.append(
                    Problem(
                        path,
                        f"'roc_auc' on the multiclass dataset '{dataset}' needs predicted probabilities "
                        f"but {cls.__name__} has no predict_proba with these settings",
                    )
                )
            elif not _has_scores(estimator, "decision_function", spec, cls):
                problems.append(
                    Problem(
                        path,
                        f"'roc_auc' needs scores but {cls.__name__} has neither predict_proba nor "
                        "decision_function with these settings",
                    )
                )
    return problems


def check_spec(spec: ExperimentSpec, allowed_prefixes: Sequence[str], base_dir: Path | None = None) -> list[Problem]:
    """Every problem of ``spec`` that needs scikit-learn to find, before anything runs.

    Checks the estimator and pipeline paths against the allow-list, that they import and are an
    estimator / transformers, every parameter name and value in ``model.fixed`` and
    ``search.space`` (values with scikit-learn's own parameter validation), that the objective and
    gate metrics belong to the estimator's task and can be computed by it, and the dataset
    (``csv:`` file and target column present, bundled dataset of the right task).

    Args:
        spec: The validated ``spec`` of a tweak file.
        allowed_prefixes: The platform's allow-list.
        base_dir: The tweak file's folder (relative csv paths start there).

    Returns:
        The problems found, in tweak-file order; empty when the spec can run.
    """
    if spec.model.trainer is not None:
        return _check_trainer_spec(spec, base_dir)
    model_problems: list[Problem] = []
    fixed_problems: list[Problem] = []
    space_problems: list[Problem] = []
    metric_problems: list[Problem] = []
    task: Task | None = None
    try:
        cls = resolve(spec.model.estimator, allowed_prefixes)
        estimator = _construct(cls, spec.model.estimator)
        task = _task_of_instance(estimator, spec.model.estimator)
    except TweaklineError as exc:
        model_problems.append(Problem("spec.model.estimator", str(exc)))
    model_problems += _check_steps(spec.model, allowed_prefixes) + _check_step_params(spec, allowed_prefixes)
    if task is not None:
        fixed_problems, space_problems = _check_params(cls, estimator, spec)
        metric_problems = _check_metrics(cls, estimator, task, spec)
    dataset_problems = check_dataset(spec.dataset, base_dir, task=task)
    return dataset_problems + model_problems + fixed_problems + space_problems + metric_problems


def _check_trainer_spec(spec: ExperimentSpec, base_dir: Path | None) -> list[Problem]:
    """A trainer's spec: its data (of the objective's task) and the trainer's own checks (no user code runs)."""
    from tweakline.ml.metrics import task_of_metric
    from tweakline.ml.trainers import check_trainer  # imports tweakline.ml.training, which imports this module
    from tweakline.proto.tweakfile import TrainerData

    trainer = spec.model.trainer
    assert trainer is not None
    problems: list[Problem] = []
    if trainer.data is TrainerData.PLATFORM:
        problems += check_dataset(spec.dataset, base_dir, task=task_of_metric(spec.objective.metric))
    return problems + check_trainer(spec, base_dir)
