"""The one validation entry point: everything checked before an experiment starts, in one pass.

``tweakline validate``, ``run`` and ``submit``, the webhook and the scheduler all call
:func:`inspect` (or :func:`validate`, which raises), so a tweak file is accepted or refused the
same way wherever it enters. One pass reports every problem: the structure (pydantic), then what
needs scikit-learn (:func:`tweakline.ml.estimators.check_spec`) and what needs this installation
(:func:`tweakline.search.algorithms.check_search`). When the structure is wrong, the sections of
``spec`` that parse on their own are still checked, so an unknown estimator parameter is
reported together with a typo elsewhere instead of after it is fixed.

Filesystem checks (``csv:`` paths relative to the tweak file) need ``base_dir``; callers
without a filesystem of the user's (the webhook, the scheduler) pass ``None`` and check the
dataset's content themselves (:func:`csv_problems`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tweakline.errors import InvalidTweakFileError, Problem
from tweakline.proto.subjects import DEFAULT_POOL
from tweakline.proto.tweakfile import TweakFile
from tweakline.validation.checks import csv_problems, local_csv_problems, parquet_problems, spec_problems
from tweakline.validation.limits import clip_problem, document_problems
from tweakline.validation.loading import load_tweak_file, read_tweak_path, read_tweak_text, structure
from tweakline.validation.pools import pool_problems
from tweakline.validation.verdicts import CheckCache

# The runner pools of a platform that configures none (TWEAKLINE_POOLS' default).
DEFAULT_POOLS: tuple[str, ...] = (DEFAULT_POOL,)

__all__ = [
    "csv_problems",
    "parquet_problems",
    "inspect",
    "load_tweak_file",
    "precheck_tweak_file",
    "problems_of",
    "resolve_paths",
    "validate",
    "validate_tweak_file",
]


def resolve_paths(tweak: TweakFile, base_dir: Path) -> TweakFile:
    """Make a ``csv:`` or ``parquet:`` source absolute (relative paths are relative to the tweak file's folder)."""
    source = tweak.spec.dataset.source
    scheme, _, location = source.partition(":")
    if scheme not in ("csv", "parquet") or not location:  # no path: the source's plug-in says so
        return tweak
    path = Path(location).expanduser()
    if not path.is_absolute():
        path = (base_dir / path).resolve()
    dataset = tweak.spec.dataset.model_copy(update={"source": f"{scheme}:{path}"})
    spec = tweak.spec.model_copy(update={"dataset": dataset})
    return tweak.model_copy(update={"spec": spec})


def inspect(
    document: str | Mapping[str, Any] | TweakFile,
    allowed_estimators: Sequence[str],
    base_dir: Path | None = None,
    *,
    source: str = "<tweak file>",
    pools: Sequence[str] | None = DEFAULT_POOLS,
    deep: bool = True,
    verdicts: CheckCache | None = None,
) -> tuple[TweakFile | None, list[Problem]]:
    """Check a tweak file completely and return it (``None`` if its structure is wrong) with every problem.

    Args:
        document: YAML text, the parsed mapping, or an already parsed :class:`TweakFile` (a
            message from the bus: only the checks beyond its structure run).
        allowed_estimators: The platform's allow-list of estimator import paths.
        base_dir: The tweak file's folder, for ``csv:`` paths; ``None`` where the data is not on
            this machine's disk (webhook, scheduler): ``csv:`` files are then not looked at.
        source: How to name the file in problems (a path, or ``repo@commit:path``).
        pools: The platform's runner pools (``Settings.pools``); ``spec.resources.pool`` must be one.
            ``None``: not known here (a client whose platform's pools are not configured), not checked.
        deep: Whether to run the checks that import scikit-learn and the search plug-ins
            (:func:`spec_problems`); ``False`` leaves them to a later :func:`validate` of the result.
        verdicts: Where passed deep checks are remembered (``tweakline run`` and its stack only): a
            spec that passed them before, unchanged, is not checked again; a new pass is recorded.

    Returns:
        The tweak file (``csv:`` paths made absolute when ``base_dir`` is given) or ``None``, and
        the problems in tweak-file order: structural ones first, then the others; empty when it can run.
    """
    if isinstance(document, TweakFile):
        tweak: TweakFile | None = document
        problems: list[Problem] = []
        raw: Any = None
    else:
        if isinstance(document, str):
            document = read_tweak_text(document, source)  # bounded: refuses what breaks a limit
        else:
            bounds = document_problems(document)
            if bounds:
                return None, bounds
        tweak, problems, raw = structure(document)
    if tweak is not None and base_dir is not None:
        tweak = resolve_paths(tweak, base_dir)
    deep_problems: list[Problem] = []
    if deep and not (verdicts is not None and tweak is not None and verdicts.passed(tweak.spec, allowed_estimators)):
        deep_problems = spec_problems(tweak.spec if tweak is not None else raw, allowed_estimators, base_dir)
        if verdicts is not None and tweak is not None and not deep_problems:
            verdicts.record(tweak.spec, allowed_estimators)
    # A field pydantic already refused is reported once, with pydantic's reason.
    problems = problems + [p for p in deep_problems if p.path not in {q.path for q in problems}]
    problems += [
        p for p in pool_problems(tweak.spec if tweak is not None else raw, pools) if p.path not in {q.path for q in problems}
    ]
    if tweak is not None and base_dir is not None and not problems:
        problems += local_csv_problems(tweak)
    return tweak, [clip_problem(p) for p in problems]


def validate(
    document: str | Mapping[str, Any] | TweakFile,
    allowed_estimators: Sequence[str],
    base_dir: Path | None = None,
    *,
    source: str = "<tweak file>",
    pools: Sequence[str] | None = DEFAULT_POOLS,
    verdicts: CheckCache | None = None,
) -> TweakFile:
    """:func:`inspect`, raising :class:`InvalidTweakFileError` with every problem when there is any."""
    tweak, problems = inspect(document, allowed_estimators, base_dir, source=source, pools=pools, verdicts=verdicts)
    if problems or tweak is None:
        raise InvalidTweakFileError(source, problems)
    return tweak


def problems_of(
    tweak: TweakFile,
    allowed_estimators: Sequence[str],
    *,
    host_paths: bool = False,
    pools: Sequence[str] | None = DEFAULT_POOLS,
    verdicts: CheckCache | None = None,
) -> list[Problem]:
    """The problems of an already parsed tweak file whose data is not on this disk (the scheduler's check).

    ``host_paths``: whether a dataset source may read this machine's own files (``csv:``
    paths). Only ``tweakline run``'s private stack allows it; on a platform such a submission
    is refused, whoever sent it (``tweakline submit`` and the webhook upload the file instead).
    ``verdicts``: passed deep checks to reuse (only the scheduler of ``tweakline run``'s stack).
    """
    problems = inspect(tweak, allowed_estimators, None, pools=pools, verdicts=verdicts)[1]
    return problems + ([] if host_paths else host_path_problems(tweak))


def host_path_problems(tweak: TweakFile) -> list[Problem]:
    """A problem if the dataset's source reads the loading machine's own files."""
    # Here, not at the top: the dataset plug-ins import numpy, which `tweakline run` does not need
    # before its submission (0.2-0.4 s on the first trial's path).
    from tweakline.ml.datasets import LOADERS

    source = tweak.spec.dataset.source
    loader = LOADERS.get(source.partition(":")[0])
    if loader is None or not loader.reads_host_files:
        return []
    return [
        Problem(
            "spec.dataset.source",
            f"{source!r} reads the platform's own disk, which only `tweakline run` on the same machine may do; "
            "expected an uploaded file (tweakline submit uploads csv: and parquet: files as object:<format>:<sha256>), "
            "sklearn: or https:",
        )
    ]


def validate_tweak_file(
    path: str | Path, allowed_estimators: Sequence[str], *, pools: Sequence[str] | None = DEFAULT_POOLS
) -> TweakFile:
    """Read a tweak file from disk and check it completely (``csv:`` paths relative to its folder).

    Raises:
        InvalidTweakFileError: listing every problem found, structural and otherwise.
    """
    path = Path(path)
    text = read_tweak_text_from(path)
    return validate(text, allowed_estimators, path.resolve().parent, source=str(path), pools=pools)


def precheck_tweak_file(
    path: str | Path, allowed_estimators: Sequence[str], *, pools: Sequence[str] | None = DEFAULT_POOLS
) -> TweakFile:
    """Read and check a tweak file without the checks that import scikit-learn: what `run` does before it starts anything.

    The bounded read, the structure, the pools and a ``csv:`` file's content are checked here;
    the estimator, dataset and search checks (:func:`spec_problems`, a second or more of imports)
    are left to :func:`validate` of the returned tweak file, which `run` does while its stack
    starts. A file refused here is refused with every problem, the deep ones included, exactly as
    :func:`validate_tweak_file` would refuse it.

    Raises:
        InvalidTweakFileError: listing every problem found.
    """
    path = Path(path)
    text = read_tweak_text_from(path)
    base_dir = path.resolve().parent
    tweak, problems = inspect(text, allowed_estimators, base_dir, source=str(path), pools=pools, deep=False)
    if problems or tweak is None:
        return validate(text, allowed_estimators, base_dir, source=str(path), pools=pools)  # raises, naming them all
    return tweak


def read_tweak_text_from(path: Path) -> str:
    """The text of a tweak file on disk; an unreadable, oversized or special file is a problem, never a traceback."""
    return read_tweak_path(path)
