"""Parse a tweak file into :class:`~tweakline.proto.tweakfile.TweakFile`, reporting every problem precisely.

Each problem names the field path, the value found and what was expected, e.g.
``spec.search.space.C.low: must be > 0 when log is true, got -1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tweakline.errors import InvalidTweakFileError, Problem
from tweakline.proto.tweakfile import TweakFile


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
            message = f"{message}, got {item['input']!r}"
        problems.append(Problem(_path(loc), message))
    return problems


def read_tweak_text(text: str, source: str = "<tweak file>") -> dict[str, Any]:
    """The YAML mapping of a tweak file; raise :class:`InvalidTweakFileError` if it is not one."""
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise InvalidTweakFileError(source, [Problem("", f"YAML syntax error at {where}: {exc.problem}")]) from None
    except yaml.YAMLError as exc:
        raise InvalidTweakFileError(source, [Problem("", f"YAML error: {exc}")]) from None
    if not isinstance(data, dict):
        raise InvalidTweakFileError(
            source, [Problem("", f"expected a mapping with apiVersion, kind, metadata and spec, got {type(data).__name__}")]
        )
    return data


def structure(data: Any) -> tuple[TweakFile | None, list[Problem], Any]:
    """Validate the mapping's structure: the tweak file (or ``None``), its structural problems, and
    the raw ``spec`` (so that the sections which do parse can still be checked further)."""
    raw_spec = data.get("spec") if isinstance(data, dict) else None
    try:
        return TweakFile.model_validate(data), [], raw_spec
    except ValidationError as exc:
        return None, problems_from(exc), raw_spec


def parse_tweak_file(text: str, source: str = "<tweak file>") -> TweakFile:
    """Parse YAML text (structure only); raise :class:`InvalidTweakFileError` listing every problem found."""
    tweak, problems, _ = structure(read_tweak_text(text, source))
    if tweak is None:
        raise InvalidTweakFileError(source, problems)
    return tweak


def load_tweak_file(path: str | Path) -> TweakFile:
    """Read and parse a tweak file from disk."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidTweakFileError(str(path), [Problem("", f"cannot read the file: {exc.strerror}")]) from None
    return parse_tweak_file(text, str(path))
