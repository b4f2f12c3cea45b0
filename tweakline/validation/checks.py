"""The checks beyond the structure: estimator, search and dataset, also on a partly valid ``spec``.

A tweak file with a structural problem has no :class:`ExperimentSpec`, but most of its sections
usually parse on their own. Each section is validated alone; the ones that parse go into a spec
built without validation, the missing ones are stood in for by placeholders, and problems found
in a placeholder are dropped (pydantic already reported that section).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tweakline.errors import DatasetError, Problem
from tweakline.proto.tweakfile import (
    DEFAULT_DEPLOY_TARGET,
    DatasetSpec,
    DeploySpec,
    ExperimentSpec,
    GateSpec,
    ModelSpec,
    ObjectiveSpec,
    SearchSpec,
    TweakFile,
)
from tweakline.validation.limits import LimitError, read_regular_file

_SECTIONS: dict[str, type[BaseModel]] = {
    "dataset": DatasetSpec,
    "model": ModelSpec,
    "search": SearchSpec,
    "objective": ObjectiveSpec,
    "gate": GateSpec,
}
# Placeholders that produce no problem of their own outside their section: a stored object
# (checked by nobody before loading), no search space, a metric of either task (problems in
# objective are dropped with the placeholder).
_NO_DATA = DatasetSpec.model_construct(source="object:csv:" + "0" * 64, target="y", test_size=0.2, seed=0)
_NO_SEARCH = SearchSpec.model_construct(space={}, resource=None)
_NO_OBJECTIVE = ObjectiveSpec.model_construct(metric="accuracy", direction=None, cv=5, secondary=[])


def _sections(raw_spec: Any) -> dict[str, BaseModel]:
    """The sections of a raw ``spec`` mapping that are valid on their own."""
    if not isinstance(raw_spec, dict):
        return {}
    parsed: dict[str, BaseModel] = {}
    for name, model in _SECTIONS.items():
        if name not in raw_spec:
            if name == "gate":  # optional: its default is what would be used
                parsed[name] = GateSpec()
            continue
        try:
            parsed[name] = model.model_validate(raw_spec[name])
        except ValidationError:
            continue  # already reported by the structural pass
    return parsed


def spec_problems(spec: ExperimentSpec | Any, allowed_estimators: Sequence[str], base_dir: Path | None) -> list[Problem]:
    """Estimator, dataset and search problems of a valid spec, or of the valid sections of a raw one.

    Args:
        spec: A validated :class:`ExperimentSpec`, or the raw ``spec`` mapping of a tweak file
            whose structure is wrong.
        allowed_estimators: The platform's allow-list.
        base_dir: The tweak file's folder; ``None`` when ``csv:`` files are not on this disk (they
            are then not opened: a path chosen by the sender must not read the server's files).
    """
    from tweakline.ml.datasets import check_dataset  # scikit-learn: imported only when checking
    from tweakline.ml.estimators import check_spec
    from tweakline.search.algorithms import check_search

    if isinstance(spec, ExperimentSpec):
        parsed: dict[str, BaseModel] = {"dataset": spec.dataset, "model": spec.model, "search": spec.search}
        parsed |= {"objective": spec.objective, "gate": spec.gate}
        whole = True
    else:
        parsed = _sections(spec)
        whole = False
    deploy = _deploy_problems(spec)
    if not parsed:
        return deploy
    # The source's own rules (its plug-in's), wherever the data is: a dataset that breaks them is
    # checked no further.
    source = _source_problems(spec, parsed)
    if source:
        parsed = {k: v for k, v in parsed.items() if k != "dataset"}
    dataset = parsed.get("dataset")
    if base_dir is None and isinstance(dataset, DatasetSpec) and dataset.source.startswith(("csv:", "parquet:")):
        # Not on this disk: the caller checks the file's content (csv_problems).
        parsed = {k: v for k, v in parsed.items() if k != "dataset"}
    problems: list[Problem] = []
    if "model" in parsed:
        if whole and "dataset" in parsed:
            candidate = spec
        else:
            candidate = ExperimentSpec.model_construct(
                dataset=parsed.get("dataset", _NO_DATA),
                model=parsed["model"],
                search=parsed.get("search", _NO_SEARCH),
                objective=parsed.get("objective", _NO_OBJECTIVE),
                gate=parsed.get("gate", GateSpec()),
            )
        problems += check_spec(candidate, allowed_estimators, base_dir)
    elif isinstance(parsed.get("dataset"), DatasetSpec):
        problems += check_dataset(parsed["dataset"], base_dir)  # type: ignore[arg-type]
    if isinstance(parsed.get("search"), SearchSpec):
        # The algorithm's and pruner's own rules may read the objective (nsga2, cmaes, pruners).
        searched = (
            spec
            if whole
            else ExperimentSpec.model_construct(
                dataset=parsed.get("dataset", _NO_DATA),
                model=parsed.get("model"),
                search=parsed["search"],
                objective=parsed.get("objective", _NO_OBJECTIVE),
                gate=parsed.get("gate", GateSpec()),
            )
        )
        problems += check_search(searched)
    # Problems in a placeholder section mean nothing: pydantic reported that section already.
    return source + [p for p in problems if _section_of(p.path) in parsed] + deploy


def _deploy_problems(spec: ExperimentSpec | Any) -> list[Problem]:
    """The deploy target's name against the registry and the target's own rules (also when
    ``spec.deploy`` did not parse for another reason: its target name is still judged)."""
    from tweakline.promotion.targets import target_problems

    if isinstance(spec, ExperimentSpec):
        return target_problems(spec.deploy)
    raw = spec.get("deploy") if isinstance(spec, dict) else None
    if not isinstance(raw, dict):
        return []
    try:
        return target_problems(DeploySpec.model_validate(raw))
    except ValidationError:
        name = raw.get("target", DEFAULT_DEPLOY_TARGET)
        if not isinstance(name, str):
            return []
        found = target_problems(DeploySpec.model_construct(target=name))
        return [p for p in found if p.path == "spec.deploy.target"]


def _source_problems(spec: ExperimentSpec | Any, parsed: dict[str, BaseModel]) -> list[Problem]:
    """The dataset source's plug-in rules (scheme, location, target), also when ``spec.dataset``
    did not parse for another reason (its source is still a string to judge)."""
    from tweakline.ml.sources import source_problems

    dataset = parsed.get("dataset")
    if isinstance(dataset, DatasetSpec):
        return source_problems(dataset.source, dataset.target)
    raw = spec.get("dataset") if isinstance(spec, dict) else None
    if isinstance(raw, dict) and isinstance(raw.get("source"), str):
        # The target rule waits for a section that parses (pydantic reports what is wrong with it).
        return [p for p in source_problems(raw["source"], None) if p.path == "spec.dataset.source"]
    return []


def _section_of(path: str) -> str:
    parts = path.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "spec" else ""


CSV_CHECK_BYTES = 4 * 1024 * 1024  # enough rows to know a table can train, read before anything starts


def csv_problems(dataset: DatasetSpec, data: bytes, shown: str, *, cv: int = 5, complete: bool = True) -> list[Problem]:
    """Problems of a ``csv:`` dataset's content (its first :data:`CSV_CHECK_BYTES` at most).

    The rows read are parsed as the runners will parse the whole file: a header naming the target
    and at least one feature column, numeric features (empty cells are missing values), finite
    numbers, a usable target, and enough rows for ``cv`` folds and a held-out test split.

    Args:
        dataset: The tweak file's dataset section.
        data: The file's content, or its first part.
        shown: How to name the file in a problem (e.g. its path in the repository).
        cv: The objective's number of cross-validation folds.
        complete: Whether ``data`` is the whole file (else only full lines are checked and the
            row count is not judged).
    """
    from tweakline.ml.datasets import table_from_text
    from tweakline.ml.sources.base import too_few_rows

    if len(data) > CSV_CHECK_BYTES:
        data, complete = data[:CSV_CHECK_BYTES], False
    if not complete:
        data = data[: data.rfind(b"\n") + 1] if b"\n" in data else b""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return [Problem("spec.dataset.source", f"{shown} is not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line})")]
    if "\x00" in text:
        return [Problem("spec.dataset.source", f"{shown} is binary, not CSV text")]
    if not text.strip():
        return [Problem("spec.dataset.source", f"{shown} is empty; expected a header row naming the columns")]
    try:
        table = table_from_text(text, dataset.target or "", shown)
    except DatasetError as exc:
        message = str(exc).removeprefix(f"{shown}: ")
        field = "spec.dataset.target" if f"'{dataset.target}' not found" in message else "spec.dataset.source"
        return [Problem(field, f"{shown}: {message}")]
    return too_few_rows(dataset, table.n_samples, shown, cv) if complete else []


def parquet_problems(dataset: DatasetSpec, data: bytes, shown: str, *, cv: int = 5) -> list[Problem]:
    """Problems of a ``parquet:`` dataset's bytes, read as the runners will (the ``parquet:`` loader's own check)."""
    from tweakline.ml.sources.parquet_file import parquet_problems as check

    return check(dataset, data, shown, cv=cv)


def local_csv_problems(tweak: TweakFile) -> list[Problem]:
    """:func:`csv_problems` of a ``csv:`` dataset on this disk (an absolute path by now): a regular
    file, its first :data:`CSV_CHECK_BYTES` read without blocking."""
    dataset = tweak.spec.dataset
    if not dataset.source.startswith("csv:"):
        return []
    path = Path(dataset.source[4:])
    try:
        head = read_regular_file(path, limit=1 << 62, stop_after=CSV_CHECK_BYTES)
    except LimitError as exc:
        return [Problem("spec.dataset.source", f"{path} {exc.problem.message}")]
    complete = len(head) <= CSV_CHECK_BYTES
    return csv_problems(dataset, head, str(path), cv=tweak.spec.objective.cv, complete=complete)
