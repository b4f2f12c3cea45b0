"""The tweak file (``apiVersion: tweakline/v1``, ``kind: Experiment``): what a data scientist commits.

The models validate structure and every rule that needs no import of scikit-learn; rules that
need the estimator (does ``SVC`` have a parameter ``C``?) run in
:mod:`tweakline.ml.estimators` before anything is started.

Errors raised from ``model_validator`` use :func:`problem` so that the reported path names the
exact field (``spec.search.space.C.low``), not only the object that holds it.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator
from pydantic_core import PydanticCustomError

# NAME_PATTERN: a Kubernetes-style name (DNS-1123 label), also a safe subject token and KV key.
from tweakline.proto.ids import NAME_MAX_LENGTH, NAME_PATTERN

API_VERSION = "tweakline/v1"
KIND = "Experiment"

CLASSIFICATION_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "roc_auc",
    "log_loss",
)
REGRESSION_METRICS = ("r2", "rmse", "mae")
# Metrics where lower is better; every other metric is maximised.
LOWER_IS_BETTER = frozenset({"rmse", "mae", "log_loss"})
METRICS = CLASSIFICATION_METRICS + REGRESSION_METRICS


def problem(field: str, message: str, **values: Any) -> PydanticCustomError:
    """An error about ``field`` of the model being validated (reported as ``<path>.<field>``)."""
    shown = {k: _show(v) for k, v in values.items()}
    return PydanticCustomError("tweakline", message, {"field": field, **shown})


def _show(value: Any) -> Any:
    # 1.0e3 arrives as 1000.0: show numbers the way people write them.
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return int(value)
    return value


class _Strict(BaseModel):
    """User-facing input: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"1.5h"``; raises ``ValueError`` otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 90s, 15m or 1h, got '{value}'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration such as 90s, 15m or 1h, got '{value}'")
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"must be a positive duration, got '{value}'")
    return seconds


# The JSON Schema states what the validator really accepts (a number or a unit string).
Duration = Annotated[
    float,
    Field(description="Seconds, or a string such as 90s, 15m, 1h."),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": _DURATION.pattern},
            ],
            "description": "Seconds, or a string such as 90s, 15m, 1h.",
        }
    ),
]


class Metadata(_Strict):
    """Identity of the experiment."""

    name: str = Field(
        pattern=NAME_PATTERN,
        max_length=NAME_MAX_LENGTH,
        description="Lower-case letters, digits and '-', at most 53 characters (a Kubernetes name).",
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form labels.")


class DatasetSpec(_Strict):
    """Where the data comes from and how the held-out test split is cut."""

    # source is <scheme>:<location>; each scheme is a plug-in (tweakline.ml.sources) that checks its
    # own location and whether it needs a target, so adding one never edits this contract.
    source: str = Field(
        max_length=4096,
        description="sklearn:<iris|digits|wine|breast_cancer|diabetes>, csv:<path> or parquet:<path> (relative to the "
        "tweak file), https://<host>/<file>.csv, or object:csv:<sha256> / object:parquet:<sha256> (a file uploaded by "
        "'tweakline submit').",
    )
    target: str | None = Field(
        default=None, description="Target column (required for csv:, parquet:, https: and object: sources)."
    )
    test_size: float = Field(default=0.2, gt=0, lt=1, description="Fraction held out for the final evaluation.")
    seed: int = Field(
        default=0,
        ge=0,
        description="Seed of the train/test split, the CV folds and the estimators' random_state "
        "(unless model.fixed or the space sets random_state).",
    )


class TrainerData(StrEnum):
    """Where a trainer's data comes from (``spec.model.trainer.data``)."""

    PLATFORM = "platform"  # the platform's split: training rows only, the test split stays with the platform
    OWN = "own"  # the trainer loads its own data and reports its own validation metrics


# path/to/train.py:fit or package.module:fit
_CALLABLE = re.compile(r"^(?:[\w.\-]+/)*[\w.\-]+\.py:[A-Za-z_]\w*$|^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


class TrainerSpec(_Strict):
    """The user's own training code: a Python callable in the repository, or a command.

    The platform calls it once per trial with the parameters and the training rows, and once more
    (with the best parameters) for the final model, whose predictions on the held-out rows the
    platform scores itself. See docs/trainers.md.
    """

    callable: str | None = Field(
        default=None, description="path/to/train.py:fit or package.module:fit, relative to the code folder."
    )
    command: str | None = Field(
        default=None,
        max_length=2000,
        description="A program, e.g. 'python train.py --lr {lr}': parameters as {name} placeholders, environment "
        "(PARAM_<NAME>) and a JSON file; metrics as JSON lines on stdout.",
    )
    predict: str | None = Field(
        default=None,
        description="path/to/train.py:predict: serves the saved model (predict(model_dir, X) -> predictions).",
    )
    steps: int = Field(
        default=1, ge=1, le=10_000, description="Intermediate reports (e.g. epochs) a full trial makes: the pruners' scale."
    )
    data: TrainerData = Field(default=TrainerData.PLATFORM, description="platform (the platform's split) or own.")
    validation_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="Share of the training rows held back to score each trial (never the test split)."
    )
    code: str = Field(
        default=".", max_length=500, description="The code folder, relative to the tweak file (set by the platform when shipped)."
    )

    @field_validator("callable", "predict")
    @classmethod
    def _entry_point(cls, value: str | None) -> str | None:
        if value is not None and not _CALLABLE.match(value):
            raise PydanticCustomError(
                "tweakline", "expected path/to/train.py:function or package.module:function, got '{value}'", {"value": value}
            )
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> TrainerSpec:
        if (self.callable is None) == (self.command is None):
            raise problem("callable", "name either callable or command (exactly one), got {value}", value=self.kind_text)
        return self

    @property
    def kind_text(self) -> str:
        """What was given, for messages."""
        given = [k for k in ("callable", "command") if getattr(self, k) is not None]
        return " and ".join(given) if given else "neither"

    @property
    def label(self) -> str:
        """A short name for reports."""
        return self.callable or (self.command or "")[:60]


class ResourcesSpec(_Strict):
    """What one trial needs; local runners honour threads and memory, pools route by them (``spec.resources``)."""

    threads: int | None = Field(default=None, ge=1, le=1024, description="Threads a trial may use.")
    memory_mb: int | None = Field(default=None, ge=16, le=4_194_304, description="Resident memory a trial may use.")
    pool: str | None = Field(default=None, pattern=NAME_PATTERN, description="Runner pool to send trials to.")
    accelerators: int | None = Field(default=None, ge=0, le=64, description="Accelerators (GPUs); reserved for later.")


class ModelSpec(_Strict):
    """The estimator (or the user's trainer), optional preprocessing steps before it, and parameters that are not searched."""

    estimator: str | None = Field(default=None, description="Import path of a scikit-learn estimator, e.g. sklearn.svm.SVC.")
    trainer: TrainerSpec | None = Field(default=None, description="The user's own training code instead of an estimator.")
    pipeline: list[str] = Field(default_factory=list, description="Import paths of transformers run before the estimator.")
    fixed: dict[str, Any] = Field(default_factory=dict, description="Estimator parameters that are not searched.")

    @field_validator("estimator", "pipeline")
    @classmethod
    def _import_path(cls, value: Any) -> Any:
        for path in [value] if isinstance(value, str) else value or []:
            if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", path):
                raise PydanticCustomError(
                    "tweakline", "expected a dotted import path such as sklearn.svm.SVC, got '{path}'", {"path": path}
                )
        return value

    @model_validator(mode="after")
    def _estimator_or_trainer(self) -> ModelSpec:
        if (self.estimator is None) == (self.trainer is None):
            raise problem(
                "estimator",
                "name either an estimator or a trainer (exactly one), got {value}",
                value="both" if self.estimator else "neither",
            )
        if self.trainer is not None and self.pipeline:
            raise problem(
                "pipeline", "applies to estimators only; a trainer does its own preprocessing, got {value}", value=self.pipeline
            )
        return self

    @property
    def name(self) -> str:
        """The estimator's import path or the trainer's entry point, for reports."""
        return self.estimator or (self.trainer.label if self.trainer is not None else "")


Scalar = str | int | float | bool | None


class _Param(_Strict):
    when: Annotated[
        dict[str, list[Scalar]] | None,
        # one value or a list of values per parameter, as the before-validator accepts
        WithJsonSchema(
            {
                "anyOf": [
                    {
                        "type": "object",
                        "additionalProperties": {
                            "anyOf": [
                                {"type": "array", "items": {"type": ["string", "number", "boolean", "null"]}},
                                {"type": ["string", "number", "boolean", "null"]},
                            ]
                        },
                    },
                    {"type": "null"},
                ]
            }
        ),
    ] = Field(
        default=None,
        description="Active only when every named parameter takes one of the listed values, e.g. {kernel: [poly]}.",
    )

    @field_validator("when", mode="before")
    @classmethod
    def _scalar_to_list(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v if isinstance(v, list) else [v] for k, v in value.items()}
        return value


class FloatParam(_Param):
    """A real-valued parameter in ``[low, high]``."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        if self.log and self.low <= 0:
            raise problem("low", "must be > 0 when log is true, got {value}", value=self.low)
        if self.high < self.low:
            raise problem("high", "must be >= low ({low}), got {value}", low=self.low, value=self.high)
        if self.log and self.step is not None:
            raise problem("step", "cannot be combined with log: true, got {value}", value=self.step)
        return self


class IntParam(_Param):
    """An integer parameter in ``[low, high]``."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(default=1, gt=0)

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        if self.log and self.low <= 0:
            raise problem("low", "must be > 0 when log is true, got {value}", value=self.low)
        if self.high < self.low:
            raise problem("high", "must be >= low ({low}), got {value}", low=self.low, value=self.high)
        if self.log and self.step != 1:
            raise problem("step", "must be 1 when log is true, got {value}", value=self.step)
        return self


class CategoricalParam(_Param):
    """A parameter taking one of ``choices``."""

    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> CategoricalParam:
        if len({repr(c) for c in self.choices}) != len(self.choices):
            raise problem("choices", "must be distinct, got {value}", value=self.choices)
        return self


ParamSpec = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


# Search algorithms and pruners are plug-ins (tweakline.search): the tweak file names them by
# string, and the plug-in layer checks the name against its registry and applies the plug-in's
# own rules, so adding one never edits this contract.
DEFAULT_ALGORITHM = "tpe"
DEFAULT_PRUNER = "none"
DEFAULT_EARLY_STOPPING = "asha"


class ResourceName(StrEnum):
    """Training resources a trial can grow in rungs (``spec.search.resource.name``)."""

    N_ESTIMATORS = "n_estimators"
    MAX_ITER = "max_iter"
    FRACTION = "fraction"


# Successive halving's reduction factor, shared by the rungs and the pruners that read them:
# each rung gets RUNG_FACTOR times the resource of the one before, and about 1/RUNG_FACTOR of
# the trials that reach a rung go on to the next.
RUNG_FACTOR = 3


class Rung(BaseModel):
    """One rung of a training resource: how much of it a trial gets, and the step pruners see.

    ``step`` is the resource in units of the first rung (1, 3, 9, ...), the scale Optuna's
    successive-halving and Hyperband pruners count their rungs in.
    """

    model_config = ConfigDict(frozen=True)

    index: int
    amount: float
    step: int


class ResourceSpec(_Strict):
    """A training resource that grows in rungs, so early stopping can judge trials cheaply first.

    Each trial trains with ``max / 3**k`` of the resource (never below ``min``), then three times
    as much, up to ``max``; after each rung it reports its CV score and the pruner decides whether
    it goes on. ``n_estimators`` and ``max_iter`` set that estimator parameter (ensembles that
    support ``warm_start`` keep growing the same model instead of starting again); ``fraction``
    trains on that share of each training fold, with any estimator.
    """

    name: ResourceName = Field(description="n_estimators, max_iter (estimator parameters) or fraction (of each training fold).")
    min: float = Field(gt=0, description="Smallest amount a trial is judged on (the first rung is at least this).")
    max: float | None = Field(
        default=None, gt=0, description="The full amount, given to every trial that is not stopped (fraction: default 1)."
    )

    @model_validator(mode="before")
    @classmethod
    def _default_max(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("max") is None and data.get("name") == ResourceName.FRACTION.value:
            return {**data, "max": 1.0}
        return data

    @model_validator(mode="after")
    def _range(self) -> ResourceSpec:
        if self.max is None:
            raise problem("max", "is required for {name} (the amount every surviving trial trains with)", name=self.name.value)
        if self.name is ResourceName.FRACTION:
            if self.max > 1:
                raise problem("max", "is a fraction of the training fold: expected at most 1, got {value}", value=self.max)
        else:
            for field_name in ("min", "max"):
                value = getattr(self, field_name)
                if not float(value).is_integer():
                    raise problem(
                        field_name,
                        "{name} counts whole units: expected an integer, got {value}",
                        name=self.name.value,
                        value=value,
                    )
        if self.min * RUNG_FACTOR > self.max:
            raise problem(
                "min",
                "leaves no room for rungs: expected at most max / {factor} ({limit}), got {value}",
                factor=RUNG_FACTOR,
                limit=round(self.max / RUNG_FACTOR, 4),
                value=self.min,
            )
        return self

    @property
    def full(self) -> float:
        """The amount every trial that is not stopped trains with (``max``)."""
        assert self.max is not None  # set by validation
        return self.max

    def rungs(self) -> list[Rung]:
        """The rungs every trial climbs, smallest first; the last one is ``max``."""
        count = 1
        while self.full / RUNG_FACTOR**count >= self.min * (1 - 1e-9):
            count += 1
        rungs = []
        for index in range(count):
            amount = self.full / RUNG_FACTOR ** (count - 1 - index)
            if self.name is not ResourceName.FRACTION:
                amount = float(max(1, round(amount)))
            rungs.append(Rung(index=index, amount=amount, step=RUNG_FACTOR**index))
        return rungs

    def value(self, amount: float) -> int | float:
        """``amount`` as the estimator parameter takes it (an int for n_estimators and max_iter)."""
        return amount if self.name is ResourceName.FRACTION else int(amount)


class EarlyStoppingSpec(_Strict):
    """Early stopping as the shared design writes it: ``search.early_stopping: {algorithm: asha}``.

    The same as ``search.pruner`` (and ``search.resource``); either spelling may be used.
    """

    algorithm: str = Field(
        default=DEFAULT_EARLY_STOPPING, description="A registered pruner, e.g. none, median, asha, hyperband or wilcoxon."
    )
    resource: ResourceSpec | None = Field(default=None, description="As search.resource.")


class WarmStartSpec(_Strict):
    """Where earlier trials come from (``search.warm_start``)."""

    enabled: bool = Field(default=True, description="Seed the search with earlier trials of the same lineage.")
    from_: str | None = Field(
        default=None,
        alias="from",
        pattern=r"^[A-Za-z0-9_.\-/]{1,200}$",
        description="Lineage to continue from (default: '<repository>/<experiment name>').",
    )
    rerun: int = Field(
        default=1,
        ge=0,
        le=100,
        description="How many of the best earlier configurations are tried again first, on this commit's data "
        "(0: earlier trials only guide the sampler).",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SearchSpec(_Strict):
    """The search space and the algorithm exploring it."""

    algorithm: str = Field(
        default=DEFAULT_ALGORITHM,
        description="A registered search algorithm, e.g. tpe, random, grid, cmaes or nsga2.",
    )
    space: dict[str, ParamSpec] = Field(min_length=1, description="Parameter name -> its range or choices.")
    seed: int | None = Field(default=None, ge=0, description="Seed of the sampler, for reproducible searches.")
    pruner: str = Field(
        default=DEFAULT_PRUNER,
        description="Early stopping on per-fold scores: none, median, asha, hyperband or wilcoxon.",
    )
    warm_start: WarmStartSpec = Field(
        default_factory=WarmStartSpec,
        description="true/false, or {from: LINEAGE}: continue from earlier trials of the same lineage.",
    )
    resource: ResourceSpec | None = Field(
        default=None,
        description="Early stopping on rungs of a training resource (n_estimators, max_iter or fraction) "
        "instead of CV folds; needs pruner asha, hyperband or median.",
    )
    early_stopping: EarlyStoppingSpec | None = Field(
        default=None, description="{algorithm: asha, resource: ...}: the same as pruner and resource, in the design's words."
    )

    @model_validator(mode="before")
    @classmethod
    def _early_stopping_spelling(cls, data: Any) -> Any:
        """``early_stopping: {algorithm, resource}`` fills ``pruner`` and ``resource`` (which the services read)."""
        if not isinstance(data, dict) or not isinstance(data.get("early_stopping"), dict):
            return data
        given = data["early_stopping"]
        data = dict(data)
        algorithm = given.get("algorithm", DEFAULT_EARLY_STOPPING)
        wanted: dict[str, Any] = {}
        if isinstance(algorithm, str):  # otherwise early_stopping.algorithm reports it
            wanted["pruner"] = algorithm
        if given.get("resource") is not None:
            try:
                wanted["resource"] = ResourceSpec.model_validate(given["resource"]).model_dump(mode="json")
            except ValueError:  # early_stopping.resource reports it, at its own path
                pass
        for key, value in wanted.items():
            current = data.get(key)
            if key == "resource" and isinstance(current, dict):
                try:
                    current = ResourceSpec.model_validate(current).model_dump(mode="json")
                except ValueError:
                    pass
            if current is not None and current != value:
                raise problem(
                    key,
                    "says {current} but early_stopping says {value}: write early stopping once "
                    "(early_stopping, or pruner and resource)",
                    current=current,
                    value=value,
                )
            data[key] = value
        return data

    @field_validator("warm_start", mode="before")
    @classmethod
    def _warm_start_shorthand(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return {"enabled": value}
        if isinstance(value, str):
            return {"from": value}
        return value

    @model_validator(mode="after")
    def _conditions_refer_to_categoricals(self) -> SearchSpec:
        for name, param in self.space.items():
            for other, values in (param.when or {}).items():
                target = self.space.get(other)
                if target is None or other == name:
                    raise problem(
                        f"space.{name}.when.{other}",
                        "must name another parameter of the space ({known}), got '{value}'",
                        known=", ".join(k for k in self.space if k != name),
                        value=other,
                    )
                if not isinstance(target, CategoricalParam):
                    raise problem(f"space.{name}.when.{other}", "must name a categorical parameter", value=other)
                unknown = [v for v in values if v not in target.choices]
                if unknown:
                    raise problem(
                        f"space.{name}.when.{other}",
                        "values {unknown} are not among the choices of {other} ({choices})",
                        unknown=unknown,
                        other=other,
                        choices=target.choices,
                    )
        if self.resource is not None:
            name = self.resource.name.value
            if name in self.space:
                raise problem(
                    f"space.{name}",
                    "is the training resource (search.resource); every surviving trial gets {amount}, so drop it from the space",
                    amount=_show(self.resource.max),
                )
        return self


class _Metric(_Strict):
    """A metric by scorer name and the direction in which it improves."""

    metric: str = Field(description="Scorer name, e.g. accuracy, f1_macro, roc_auc, r2, rmse, mae.")
    direction: Literal["maximize", "minimize"] | None = Field(
        default=None, description="Defaults to minimize for error metrics (rmse, mae, log_loss), maximize otherwise."
    )

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in METRICS:
            raise PydanticCustomError(
                "tweakline",
                "unknown metric '{value}', expected one of {expected}",
                {"value": value, "expected": ", ".join(METRICS)},
            )
        return value

    @property
    def maximize(self) -> bool:
        """Whether a higher value of the metric is better."""
        if self.direction is None:
            return self.metric not in LOWER_IS_BETTER
        return self.direction == "maximize"


class SecondaryObjective(_Metric):
    """A further metric to optimise (multi-objective search: a Pareto front)."""


class ObjectiveSpec(_Metric):
    """What the search optimises: a metric, its direction and the cross-validation used to estimate it.

    With ``secondary`` metrics the search is multi-objective (a Pareto front); ``metric`` stays the
    primary one: the leaderboard and the gate pick the best trial by it.
    """

    cv: int = Field(default=5, ge=2, le=20, description="Number of cross-validation folds on the training split.")
    secondary: list[SecondaryObjective] = Field(
        default_factory=list, description="Further metrics to optimise: a multi-objective search (Pareto front)."
    )

    @model_validator(mode="after")
    def _distinct_metrics(self) -> ObjectiveSpec:
        seen = {self.metric}
        for i, other in enumerate(self.secondary):
            if other.metric in seen:
                raise problem(f"secondary.{i}.metric", "'{value}' is already an objective", value=other.metric)
            seen.add(other.metric)
        return self


class BudgetSpec(_Strict):
    """How much work the search may do."""

    max_trials: int = Field(default=20, gt=0, le=100_000)
    parallelism: int = Field(default=4, gt=0, le=1024, description="Trials in flight at once.")
    timeout: Duration | None = Field(default=None, description="Stop issuing trials after this long.")
    trial_timeout: Duration | None = Field(default=None, description="Fail a single trial after this long.")

    @field_validator("timeout", "trial_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)


class GateSpec(_Strict):
    """When a tuned model may be promoted."""

    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Minimum (or, for error metrics, maximum) test-split values."
    )
    beat_production_by: float = Field(default=0.0, ge=0, description="Required gain over the model in production.")
    alpha: float = Field(
        default=0.05,
        gt=0,
        le=0.5,
        description="Significance level of the paired test against production (McNemar or paired bootstrap).",
    )
    bootstrap_resamples: int = Field(default=1000, ge=100, le=100_000, description="Resamples of the paired bootstrap.")
    not_worse_than_defaults: bool = Field(
        default=True,
        description="Reject a tuned model that scores worse than the estimator with default parameters on the same "
        "test rows (the paired test is reported as evidence).",
    )

    @field_validator("thresholds")
    @classmethod
    def _known_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        for metric in value:
            if metric not in METRICS:
                raise PydanticCustomError(
                    "tweakline",
                    "unknown metric '{value}' in thresholds, expected one of {expected}",
                    {"value": metric, "expected": ", ".join(METRICS)},
                )
        return value


# Deploy targets are plug-ins too: named by string here, the names registered in
# tweakline.promotion.targets (checked by validation, listed by the JSON Schema).
DEFAULT_DEPLOY_TARGET = "local"


class VerifySpec(_Strict):
    """The post-deploy check: the live endpoint is scored on probe rows; a failure rolls the release back."""

    enabled: bool = Field(default=True, description="Check the live endpoint after each promotion.")
    probe_rows: int = Field(default=100, gt=0, le=10_000, description="Test-split rows sent to the live endpoint.")
    max_latency_ms: float = Field(default=1000.0, gt=0, description="Slowest acceptable /predict request, milliseconds.")
    max_error_rate: float = Field(default=0.0, ge=0, le=1, description="Fraction of probe requests allowed to fail.")
    timeout: Duration = Field(default=60.0, description="How long the new revision may take to become live.")

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value)


class WatchSpec(_Strict):
    """The post-promotion watch: the new revision's live figures against the previous revision's.

    For ``window`` after a revision goes live, the deployer compares the model server's own
    figures of it (error rate, latency, distribution of predictions) with those of the revision
    it replaced, and rolls back automatically when one regresses beyond its threshold.
    """

    enabled: bool = Field(default=True, description="Watch the live figures after each promotion.")
    window: Duration = Field(default=600.0, description="How long after going live the new revision is watched.")
    min_requests: int = Field(
        default=20, gt=0, le=1_000_000, description="Live /predict requests the new revision needs before any verdict."
    )
    max_error_rate_increase: float = Field(
        default=0.05, ge=0, le=1, description="Largest rise of the error rate over the previous revision's (a fraction)."
    )
    max_latency_ratio: float = Field(
        default=2.0, ge=1, le=1000, description="Largest ratio of the new revision's p95 latency to the previous one's."
    )
    min_latency_increase_ms: float = Field(
        default=50.0,
        ge=0,
        description="A p95 latency rise smaller than this is never a regression (noise on fast models).",
    )
    max_prediction_shift: float | None = Field(
        default=0.3,
        ge=0,
        le=1,
        description="Largest rise of the distance (total variation) of the live predictions from the probe set's "
        "targets (binned by its classes, or its target deciles) over the previous revision's; null: not judged.",
    )

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, value: Any) -> Any:
        return parse_duration(value)


class DeploySpec(_Strict):
    """Where a promoted model goes."""

    target: str = Field(
        default=DEFAULT_DEPLOY_TARGET, max_length=64, description="A registered deploy target, e.g. local or helm."
    )
    release: str = Field(
        pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH, description="Release name: its history, rollbacks and server."
    )
    chart: str | None = Field(default=None, description="helm: chart path or reference (default: helm/model-server).")
    namespace: str | None = Field(default=None, pattern=NAME_PATTERN, description="helm: target namespace.")
    values: dict[str, Any] = Field(default_factory=dict, description="helm: extra chart values.")
    endpoint: str | None = Field(
        default=None,
        description="URL of the live model server for the post-deploy check (default: the target's own; "
        "local: the running 'tweakline serve', helm: the chart's Service).",
    )
    helm_timeout: Duration = Field(default=300.0, description="helm: how long an upgrade may wait for readiness.")
    verify: VerifySpec = Field(default_factory=VerifySpec)
    watch: WatchSpec = Field(default_factory=WatchSpec)
    production_branches: list[str] = Field(
        default_factory=lambda: ["main", "master"],
        description="Branch globs whose pushes may change this release; pull requests and other branches are "
        "tuned and judged but not deployed (a run with no branch, by hand, may deploy).",
    )

    @field_validator("helm_timeout", mode="before")
    @classmethod
    def _helm_duration(cls, value: Any) -> Any:
        return parse_duration(value)


class ExperimentSpec(_Strict):
    """Everything about one tuning experiment."""

    dataset: DatasetSpec
    model: ModelSpec
    search: SearchSpec
    objective: ObjectiveSpec
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    gate: GateSpec = Field(default_factory=GateSpec)
    deploy: DeploySpec | None = None
    resources: ResourcesSpec | None = Field(default=None, description="What one trial needs (threads, memory_mb, pool).")

    @model_validator(mode="after")
    def _resource_is_not_fixed(self) -> ExperimentSpec:
        resource = self.search.resource
        if resource is not None and resource.name.value in self.model.fixed:
            raise problem(
                f"model.fixed.{resource.name.value}",
                "is the training resource (search.resource), which sets it to {amount} for every surviving trial; "
                "drop it from fixed",
                amount=_show(resource.full),
            )
        return self

    @property
    def stages(self) -> int:
        """How many intermediate scores a trial reports: its rungs with ``search.resource``, else its CV folds."""
        if self.model.trainer is not None:
            return self.model.trainer.steps
        resource = self.search.resource
        return len(resource.rungs()) if resource is not None else self.objective.cv

    @model_validator(mode="after")
    def _metric_families_agree(self) -> ExperimentSpec:
        family = CLASSIFICATION_METRICS if self.objective.metric in CLASSIFICATION_METRICS else REGRESSION_METRICS
        for i, other in enumerate(self.objective.secondary):
            if other.metric not in family:
                raise problem(
                    f"objective.secondary.{i}.metric",
                    "'{value}' is not a metric of the same task as {objective}; expected one of {expected}",
                    value=other.metric,
                    objective=self.objective.metric,
                    expected=", ".join(family),
                )
        for metric in self.gate.thresholds:
            if metric not in family:
                raise problem(
                    f"gate.thresholds.{metric}",
                    "is a {kind} metric but the objective {objective} is not; expected one of {expected}",
                    kind="classification" if metric in CLASSIFICATION_METRICS else "regression",
                    objective=self.objective.metric,
                    expected=", ".join(family),
                )
        return self


class TweakFile(_Strict):
    """The whole tweak file."""

    apiVersion: Literal["tweakline/v1"]
    kind: Literal["Experiment"]
    metadata: Metadata
    spec: ExperimentSpec
