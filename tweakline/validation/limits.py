"""Bounds on every tweak file read from outside: size, encoding, YAML features, nesting, numbers, grids.

A tweak file comes from a person's commit, but the platform reads it in the CLI, the webhook and
the scheduler, so it is parsed as hostile input: every step is bounded in time and memory and
ends either in a tweak-file mapping or in one :class:`~tweakline.errors.Problem` naming the
field (or line), the value and what was expected.

* :func:`read_regular_file`: a regular file only (``os.stat`` before opening, opened with
  ``O_NONBLOCK`` so a FIFO swapped in between cannot block), at most :data:`MAX_FILE_BYTES`.
* :func:`safe_yaml`: UTF-8 only; PyYAML's safe loader without aliases (an alias bomb needs them,
  and a tweak file never does), duplicate keys refused with both line numbers, nesting at most
  :data:`MAX_DEPTH`; any Python tag is refused by the safe constructor.
* :func:`document_problems`: the parsed mapping walked once: finite numbers, bounded strings and
  collections, then the search space (choices, grid size) and labels, counted arithmetically
  (nothing is materialised, so a 10^12-point grid costs nothing to refuse).
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any

import yaml
import yaml.reader
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node

from tweakline.errors import Problem

MAX_FILE_BYTES = 64 * 1024  # a real tweak file is a few KB; pure-Python YAML parses ~50 KB/s on a loaded core
MAX_DEPTH = 32  # the deepest real path is ~8 (spec.search.space.p.when.q.[i])
MAX_STRING_CHARS = 4096
MAX_ITEMS = 2000  # entries of any one mapping or list
MAX_NODES = 20_000
MAX_CHOICES = 1000  # choices of one categorical parameter
MAX_PARAMETERS = 100  # parameters of a search space
MAX_GRID_POINTS = 100_000  # points of a grid search
MAX_LABELS = 64
MAX_LABEL_CHARS = 253
MAX_INT_DIGITS = 30  # beyond any estimator parameter; bounds int() of a long digit string
MAX_MESSAGE_CHARS = 400  # a problem message shown to a user (values in it are cut short)
_SHOWN = 60


def clip(text: str, limit: int = _SHOWN) -> str:
    """``text`` cut to ``limit`` characters (with an ellipsis and the full length), for messages."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


class LimitError(Exception):
    """One bound broken while reading; carries the :class:`Problem` to report."""

    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


# --------------------------------------------------------------------------------- the file


def read_regular_file(path: Path, limit: int = MAX_FILE_BYTES, *, stop_after: int | None = None) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes.

    With ``stop_after``, only the first ``stop_after + 1`` bytes are read (a longer result means
    the file goes on), whatever ``limit`` allows.

    Raises:
        LimitError: not a regular file (directory, FIFO, device, socket), too large, unreadable.
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise LimitError(Problem("", f"cannot read the file: {exc.strerror}")) from None
    kind = _kind(info.st_mode)
    if kind is not None:
        raise LimitError(Problem("", f"is {kind}; expected a regular file"))
    if info.st_size > limit:
        raise LimitError(Problem("", f"is {info.st_size} bytes; a tweak file may be at most {limit} bytes"))
    try:
        # O_NONBLOCK: if a FIFO replaced the file since the stat, opening it does not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise LimitError(Problem("", f"cannot read the file: {exc.strerror}")) from None
    try:
        kind = _kind(os.fstat(fd).st_mode)  # what was opened, not what was looked at
        if kind is not None:
            raise LimitError(Problem("", f"is {kind}; expected a regular file"))
        chunks: list[bytes] = []
        size = 0
        want = limit if stop_after is None else min(limit, stop_after)
        while size <= want:
            chunk = os.read(fd, min(65536, want + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise LimitError(Problem("", f"cannot read the file: {exc.strerror}")) from None
    finally:
        os.close(fd)
    if stop_after is None and size > limit:  # it grew since the stat
        raise LimitError(Problem("", f"is more than {limit} bytes; a tweak file may be at most {limit} bytes"))
    return b"".join(chunks)


def _kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def decode(data: bytes, limit: int = MAX_FILE_BYTES) -> str:
    """UTF-8 text of ``data`` (a leading BOM dropped); refuses NUL bytes and oversize input."""
    if len(data) > limit:
        raise LimitError(Problem("", f"is {len(data)} bytes; a tweak file may be at most {limit} bytes"))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise LimitError(
            Problem("", f"is not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line} (offset {exc.start}); save it as UTF-8")
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise LimitError(Problem("", f"is binary, not YAML text: a NUL byte at line {line}"))
    return text


# --------------------------------------------------------------------------------- the YAML


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with no aliases, a nesting limit, a node budget and no duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # type: ignore[override]
        if self.check_event(AliasEvent):
            event = self.peek_event()
            raise LimitError(
                Problem(
                    "",
                    f"YAML alias '*{clip(str(event.anchor), 40)}' at line {event.start_mark.line + 1}: "
                    "aliases (&anchor / *alias) are not allowed in a tweak file; write the value out",
                )
            )
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise LimitError(Problem("", f"has more than {MAX_NODES} YAML values; a tweak file is far smaller"))
        self._depth += 1
        if self._depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise LimitError(
                Problem("", f"nested more than {MAX_DEPTH} levels deep at line {mark.line + 1}; expected a flat tweak file")
            )
        try:
            return Composer.compose_node(self, parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:  # type: ignore[override]
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise LimitError(
                    Problem("", f"YAML merge key '<<' at line {key_node.start_mark.line + 1} is not allowed in a tweak file")
                )
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the constructor reports it
                break
            line = key_node.start_mark.line + 1
            if first is not None:
                raise LimitError(
                    Problem(
                        "",
                        f"duplicate key '{clip(str(key), 40)}' at lines {first} and {line}; "
                        "each key may appear once in a mapping",
                    )
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Node) -> int:  # type: ignore[override]
        digits = sum(ch.isdigit() for ch in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise LimitError(
                Problem(
                    "",
                    f"integer of {digits} digits at line {node.start_mark.line + 1}; expected at most {MAX_INT_DIGITS} digits",
                )
            )
        return SafeConstructor.construct_yaml_int(self, node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def safe_yaml(text: str) -> Any:
    """Parse ``text`` with :class:`_BoundedLoader`; every failure is a :class:`LimitError`."""
    if len(text) > MAX_FILE_BYTES:
        raise LimitError(Problem("", f"is {len(text)} characters; a tweak file may be at most {MAX_FILE_BYTES}"))
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # the reader already refuses control characters here
        return loader.get_single_data()
    except LimitError:
        raise
    except ConstructorError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}" if mark else ""
        reason = clip(str(exc.problem or "cannot be constructed"), 200)
        if "could not determine a constructor" in reason:
            reason = reason.replace("could not determine a constructor for the tag", "tag") + " is not allowed in a tweak file"
        raise LimitError(Problem("", f"YAML{where}: {reason}")) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise LimitError(Problem("", f"YAML syntax error at {where}: {clip(str(exc.problem), 200)}")) from None
    except yaml.reader.ReaderError as exc:
        raise LimitError(Problem("", f"not YAML text: character 0x{exc.character:02x} at offset {exc.position}")) from None
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError, TypeError) as exc:
        raise LimitError(Problem("", f"YAML error: {clip(str(exc), 200)}")) from None
    finally:
        if loader is not None:
            loader.dispose()


# --------------------------------------------------------------------------------- the values


def document_problems(data: Any) -> list[Problem]:
    """Bounds on the parsed document: generic ones everywhere, then the search space and labels."""
    problems: list[Problem] = []
    _walk(data, "", problems)
    if problems:
        return problems[:1]  # one bound broken is enough to refuse; the rest may be huge
    if isinstance(data, dict):
        problems += _label_problems(data.get("metadata"))
        spec = data.get("spec")
        if isinstance(spec, dict) and isinstance(spec.get("search"), dict):
            problems += _space_problems(spec["search"])
    return problems


def _walk(value: Any, path: str, problems: list[Problem], depth: int = 0) -> None:
    if problems:
        return
    where = path or "(document)"
    if depth > MAX_DEPTH:  # a mapping passed in directly (the webhook's JSON, a test) was not composed by us
        problems.append(Problem(path, f"nested more than {MAX_DEPTH} levels deep"))
    elif isinstance(value, float) and not math.isfinite(value):
        problems.append(Problem(path, f"expected a finite number, got {value}"))
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**MAX_INT_DIGITS:
        problems.append(Problem(path, f"expected a number of at most {MAX_INT_DIGITS} digits"))
    elif isinstance(value, str) and len(value) > MAX_STRING_CHARS:
        problems.append(Problem(path, f"a string of {len(value)} characters; expected at most {MAX_STRING_CHARS}"))
    elif isinstance(value, dict | list):
        if len(value) > MAX_ITEMS:
            problems.append(Problem(path, f"has {len(value)} entries in {where}; expected at most {MAX_ITEMS}"))
            return
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str | int) and not isinstance(key, bool):
                if isinstance(key, str) and len(key) > MAX_STRING_CHARS:
                    problems.append(Problem(path, f"a key of {len(key)} characters; expected at most {MAX_STRING_CHARS}"))
                    return
                child = f"{path}.{key}" if path else str(key)
            else:
                child = f"{path}.{clip(repr(key), 40)}" if path else clip(repr(key), 40)
            _walk(item, child, problems, depth + 1)
            if problems:
                return


def _label_problems(metadata: Any) -> list[Problem]:
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    if not isinstance(labels, dict):
        return []
    if len(labels) > MAX_LABELS:
        return [Problem("metadata.labels", f"has {len(labels)} labels; expected at most {MAX_LABELS}")]
    for key, value in labels.items():
        for what, text in (("name", key), ("value", value)):
            if isinstance(text, str) and len(text) > MAX_LABEL_CHARS:
                return [
                    Problem(
                        f"metadata.labels.{clip(str(key), 40)}",
                        f"label {what} of {len(text)} characters; expected at most {MAX_LABEL_CHARS}",
                    )
                ]
    return []


def _space_problems(search: dict[str, Any]) -> list[Problem]:
    space = search.get("space")
    if not isinstance(space, dict):
        return []
    if len(space) > MAX_PARAMETERS:
        return [Problem("spec.search.space", f"has {len(space)} parameters; expected at most {MAX_PARAMETERS}")]
    problems: list[Problem] = []
    points = 1
    for name, param in space.items():
        where = f"spec.search.space.{name}"
        if not isinstance(param, dict):
            continue  # the structure check reports it
        choices = param.get("choices")
        if isinstance(choices, list) and len(choices) > MAX_CHOICES:
            problems.append(Problem(f"{where}.choices", f"has {len(choices)} choices; expected at most {MAX_CHOICES}"))
            continue
        count = _grid_count(param)
        if count is not None:
            points *= count
    if not problems and search.get("algorithm") == "grid" and points > MAX_GRID_POINTS:
        shown = f"{points:.3g}" if points >= 10**6 else str(points)
        problems.append(
            Problem(
                "spec.search.space",
                f"a grid of {shown} points; grid search takes at most {MAX_GRID_POINTS} "
                "(use fewer values, a larger step, or random/tpe search)",
            )
        )
    return problems


def _grid_count(param: dict[str, Any]) -> int | None:
    """How many values a parameter has on a grid, without listing them (``None``: not a grid parameter)."""
    kind = param.get("type")
    if kind == "categorical":
        choices = param.get("choices")
        return len(choices) if isinstance(choices, list) else None
    low, high, step = param.get("low"), param.get("high"), param.get("step", 1 if kind == "int" else None)
    numbers = (low, high, step)
    if kind not in ("int", "float") or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers):
        return None
    if step <= 0 or high < low:  # type: ignore[operator]
        return None  # the structure check reports it
    try:
        return int((high - low) // step) + 1  # type: ignore[operator]
    except (OverflowError, ValueError):
        return None


def clip_problem(problem: Problem) -> Problem:
    """``problem`` with its message cut to :data:`MAX_MESSAGE_CHARS` (a value echoed back may be huge)."""
    if len(problem.message) <= MAX_MESSAGE_CHARS and len(problem.path) <= 200:
        return problem
    return Problem(clip(problem.path, 200), clip(problem.message, MAX_MESSAGE_CHARS))
