"""Parse a tweak file into :class:`~tweakline.proto.tweakfile.TweakFile`, reporting every problem precisely.

Each problem names the field path, the value found and what was expected, e.g.
``spec.search.space.C.low: must be > 0 when log is true, got -1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tweakline.errors import InvalidTweakFileError, Problem
from tweakline.proto.tweakfile import TweakFile
from tweakline.validation.limits import LimitError, clip, clip_problem, decode, document_problems, read_regular_file, safe_yaml


def _path(loc: tuple[Any, ...]) -> str:
    # Discriminated unions add the tag ('float') to the location: the user never wrote it.
    parts = [str(p) for p in loc if p not in ("float", "int", "categorical")]
    return ".".join(parts)


def _allowed_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Field names allowed at ``loc`` (the parent of an unknown key), when it resolves to a model."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = _model_in(field.annotation)
        else:
            return None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def _model_in(annotation: Any) -> Any:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return annotation


def problems_from(error: ValidationError) -> list[Problem]:
    """Turn a pydantic error into problems with precise paths and the value received."""
    problems: list[Problem] = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        ctx = item.get("ctx") or {}
        if item["type"] == "tweakline" and ctx.get("field"):
            loc = loc + tuple(str(ctx["field"]).split("."))
            problems.append(Problem(_path(loc), item["msg"]))
            continue
        if item["type"] == "extra_forbidden":
            allowed = _allowed_fields(TweakFile, loc[:-1])
            hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
            problems.append(Problem(_path(loc), f"unknown field{hint}"))
            continue
        if item["type"] == "missing":
            problems.append(Problem(_path(loc), "required field is missing"))
            continue
        message = item["msg"].removeprefix("Value error, ")
        if (
            item["type"] != "tweakline"
            and "got" not in message
            and "input" in item
            and not isinstance(item["input"], dict | list)
        ):
            message = f"{message}, got {clip(repr(item['input']))}"
        problems.append(Problem(_path(loc), message))
    return [clip_problem(p) for p in problems]


def read_tweak_text(text: str, source: str = "<tweak file>") -> dict[str, Any]:
    """The YAML mapping of a tweak file, within every bound of :mod:`tweakline.validation.limits`.

    Raises:
        InvalidTweakFileError: not YAML, not a mapping, or a bound broken (aliases, duplicate keys,
            nesting, non-finite numbers, sizes, grid points), with the one problem that says so.
    """
    try:
        data = safe_yaml(text)
    except LimitError as exc:
        raise InvalidTweakFileError(source, [exc.problem]) from None
    if not isinstance(data, dict):
        raise InvalidTweakFileError(
            source, [Problem("", f"expected a mapping with apiVersion, kind, metadata and spec, got {type(data).__name__}")]
        )
    problems = document_problems(data)
    if problems:
        raise InvalidTweakFileError(source, problems)
    return data


def read_tweak_bytes(data: bytes, source: str = "<tweak file>") -> dict[str, Any]:
    """:func:`read_tweak_text` of raw bytes (a file from a repository): UTF-8 and size checked first."""
    try:
        text = decode(data)
    except LimitError as exc:
        raise InvalidTweakFileError(source, [exc.problem]) from None
    return read_tweak_text(text, source)


def read_tweak_path(path: Path) -> str:
    """The text of a tweak file on disk: a regular file, at most the size limit, UTF-8.

    Raises:
        InvalidTweakFileError: with the one problem (a FIFO, a device, too large, not UTF-8...).
    """
    try:
        return decode(read_regular_file(path))
    except LimitError as exc:
        raise InvalidTweakFileError(str(path), [exc.problem]) from None


def structure(data: Any) -> tuple[TweakFile | None, list[Problem], Any]:
    """Validate the mapping's structure: the tweak file (or ``None``), its structural problems, and
    the raw ``spec`` (so that the sections which do parse can still be checked further)."""
    raw_spec = data.get("spec") if isinstance(data, dict) else None
    try:
        tweak = TweakFile.model_validate(data)
    except ValidationError as exc:
        return None, problems_from(exc), raw_spec
    # pydantic turns the strings 'inf', 'nan' and '1e400' into floats: check what it made of them.
    bounds = document_problems(tweak.model_dump(mode="python", by_alias=True, exclude_unset=True))
    if bounds:
        return None, bounds, raw_spec
    return tweak, [], raw_spec


def parse_tweak_file(text: str, source: str = "<tweak file>") -> TweakFile:
    """Parse YAML text (structure only); raise :class:`InvalidTweakFileError` listing every problem found."""
    tweak, problems, _ = structure(read_tweak_text(text, source))
    if tweak is None:
        raise InvalidTweakFileError(source, problems)
    return tweak


def load_tweak_file(path: str | Path) -> TweakFile:
    """Read and parse a tweak file from disk (bounded: see :func:`read_tweak_path`)."""
    path = Path(path)
    return parse_tweak_file(read_tweak_path(path), str(path))
