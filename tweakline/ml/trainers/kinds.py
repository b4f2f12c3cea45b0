"""Trainer kinds: ``callable`` (a function in the repository) and ``command`` (any program).

Each kind is a plug-in with a name, its own validation (:meth:`TrainerKind.check`, run at
validate/submit/webhook time without executing user code) and the way it runs inside the sandbox
(:meth:`TrainerKind.run`, only ever called in :mod:`tweakline.ml.trainers.child`).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import shlex
import string
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tweakline.errors import Problem
from tweakline.ml.trainers.context import TrainContext
from tweakline.proto.tweakfile import ExperimentSpec, TrainerSpec

# User code is parsed (never imported) at validation time: bound what we read.
MAX_SOURCE_BYTES = 2_000_000
# A command's stdout line longer than this is not a metrics line.
MAX_LINE_CHARS = 10_000


class TrainerCommandError(Exception):
    """A command trainer failed; the message says how (reported without a code location)."""


class TrainerKind(ABC):
    """One way of running user training code."""

    name: ClassVar[str]

    @abstractmethod
    def given(self, trainer: TrainerSpec) -> bool:
        """Whether ``trainer`` is of this kind."""

    def check(self, spec: ExperimentSpec, code_dir: Path | None) -> list[Problem]:
        """Problems found without running user code (paths under ``spec.model.trainer``)."""
        return []

    @abstractmethod
    def run(self, trainer: TrainerSpec, ctx: TrainContext, workdir: Path) -> Any:
        """Train in the sandbox; return predictions for ``ctx.X_eval`` (an array, a dict, or a model)."""


KINDS: dict[str, TrainerKind] = {}


def register_kind(cls: type[TrainerKind]) -> type[TrainerKind]:
    """Register a trainer kind under its ``name`` (usable as a class decorator)."""
    KINDS[cls.name] = cls()
    return cls


def kind_of(trainer: TrainerSpec) -> TrainerKind:
    """The registered kind ``trainer`` is."""
    for kind in KINDS.values():
        if kind.given(trainer):
            return kind
    raise LookupError(f"no trainer kind for {trainer.kind_text}")


def check_trainer(spec: ExperimentSpec, base_dir: Path | None) -> list[Problem]:
    """Every problem of ``spec.model.trainer`` found without running it (empty for estimators)."""
    trainer = spec.model.trainer
    if trainer is None:
        return []
    code_dir = code_dir_for(trainer, base_dir)
    problems = kind_of(trainer).check(spec, code_dir)
    if trainer.predict is not None and code_dir is not None:
        problems += _check_entry(trainer.predict, code_dir, "spec.model.trainer.predict")
    return problems


def code_dir_for(trainer: TrainerSpec, base_dir: Path | None) -> Path | None:
    """The folder the trainer's paths are relative to, when it is on this machine."""
    if trainer.code.startswith("object:"):
        return None  # a shipped bundle: checked when it was built
    path = Path(trainer.code)
    if path.is_absolute():
        return path
    return (base_dir / path) if base_dir is not None else None


def split_entry(entry: str) -> tuple[str, str]:
    """``("path/train.py" or "pkg.module", "function")``."""
    module, _, function = entry.rpartition(":")
    return module, function


def _check_entry(entry: str, code_dir: Path, field: str) -> list[Problem]:
    module, function = split_entry(entry)
    if module.endswith(".py"):
        path = code_dir / module
    else:
        base = code_dir / Path(*module.split("."))
        path = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
    try:
        resolved = path.resolve()
        if not resolved.is_relative_to(code_dir.resolve()):
            return [Problem(field, f"'{entry}' leaves the code folder {code_dir}; expected a path inside it")]
        if not resolved.is_file():
            return [Problem(field, f"'{entry}': no file {path} (expected a Python file in the code folder {code_dir})")]
        if resolved.stat().st_size > MAX_SOURCE_BYTES:
            return [Problem(field, f"'{entry}': {path} is larger than {MAX_SOURCE_BYTES} bytes")]
        tree = ast.parse(resolved.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, UnicodeDecodeError) as exc:
        return [Problem(field, f"'{entry}': cannot read {path}: {exc}")]
    except SyntaxError as exc:
        return [Problem(field, f"'{entry}': {path} is not valid Python: {exc.msg} (line {exc.lineno})")]
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)} | {
        t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)
    }
    if function not in defined:
        return [Problem(field, f"'{entry}': {path} defines no top-level '{function}'")]
    return []


def load_entry(entry: str, code_dir: Path) -> Callable[..., Any]:
    """Import ``entry`` from ``code_dir`` (sandbox only: this runs user code)."""
    module, function = split_entry(entry)
    if str(code_dir) not in sys.path:
        sys.path.insert(0, str(code_dir))
    if module.endswith(".py"):
        path = code_dir / module
        spec = importlib.util.spec_from_file_location(Path(module).stem, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = loaded
        spec.loader.exec_module(loaded)
    else:
        loaded = importlib.import_module(module)
    target = getattr(loaded, function, None)
    if not callable(target):
        raise ImportError(f"'{entry}': {function} is not a callable in {module}")
    return target


@register_kind
class CallableKind(TrainerKind):
    """``callable: path/to/train.py:fit``: ``fit(params, ctx)`` returns predictions for ``ctx.X_eval`` or a model."""

    name = "callable"

    def given(self, trainer: TrainerSpec) -> bool:
        """A trainer with ``callable`` set."""
        return trainer.callable is not None

    def check(self, spec: ExperimentSpec, code_dir: Path | None) -> list[Problem]:
        """The file exists in the code folder and defines the function (parsed, not imported)."""
        trainer = spec.model.trainer
        assert trainer is not None and trainer.callable is not None
        return [] if code_dir is None else _check_entry(trainer.callable, code_dir, "spec.model.trainer.callable")

    def run(self, trainer: TrainerSpec, ctx: TrainContext, workdir: Path) -> Any:
        """Import the function and call it."""
        assert trainer.callable is not None
        fit = load_entry(trainer.callable, Path.cwd())
        return fit(dict(ctx.params), ctx)


def command_argv(command: str, params: dict[str, Any]) -> list[str]:
    """The program's arguments: placeholders filled; an argument whose parameter has no value (the
    defaults fit gets ``model.fixed`` only) is left out with the option before it, so the program's
    own default applies (``--lr {lr}`` -> nothing)."""
    argv: list[str] = []
    for token in shlex.split(command):
        fields = [name for _, name, _, _ in string.Formatter().parse(token) if name]
        if any(name not in params for name in fields):
            if argv and argv[-1].startswith("-") and len(argv) > 1:
                argv.pop()
            continue
        argv.append(token.format_map({k: str(v) for k, v in params.items()}) if fields else token)
    return argv


def command_fields(command: str) -> list[str]:
    """The ``{name}`` placeholders of a command."""
    return [name for _, name, _, _ in string.Formatter().parse(command) if name]


@register_kind
class CommandKind(TrainerKind):
    """``command: python train.py --lr {lr}``: any program.

    It gets the parameters as ``{name}`` placeholders, as ``PARAM_<NAME>`` environment variables and
    as the JSON file ``$TRAINER_PARAMS``; the data in ``$TRAINER_DATA`` (``.npz`` with ``X``, ``y``,
    ``X_eval``, and ``y_eval`` during trials); reports one JSON object per line on stdout (``{"step": 3, "accuracy": 0.9}``) and
    writes its predictions for ``X_eval`` to ``$TRAINER_PREDICTIONS`` (JSON: ``{"predictions": [...],
    "probabilities": [[...]]}``) and its model into ``$TRAINER_MODEL_DIR``.
    """

    name = "command"

    def given(self, trainer: TrainerSpec) -> bool:
        """A trainer with ``command`` set."""
        return trainer.command is not None

    def check(self, spec: ExperimentSpec, code_dir: Path | None) -> list[Problem]:
        """The command parses and names only known parameters."""
        trainer = spec.model.trainer
        assert trainer is not None and trainer.command is not None
        try:
            fields = command_fields(trainer.command)
            argv = shlex.split(trainer.command)
        except ValueError as exc:
            return [Problem("spec.model.trainer.command", f"cannot parse '{trainer.command}': {exc}")]
        if not argv:
            return [Problem("spec.model.trainer.command", "is empty; expected a program and its arguments")]
        known = set(spec.search.space) | set(spec.model.fixed)
        unknown = [f for f in fields if f not in known]
        if unknown:
            return [
                Problem(
                    "spec.model.trainer.command",
                    f"placeholders {unknown} name no parameter of search.space or model.fixed ({', '.join(sorted(known))})",
                )
            ]
        return []

    def run(self, trainer: TrainerSpec, ctx: TrainContext, workdir: Path) -> Any:
        """Run the program, relay its metrics lines, read its predictions file."""
        assert trainer.command is not None
        argv = command_argv(trainer.command, ctx.params)
        params_file = workdir / "params.json"
        params_file.write_text(json.dumps(ctx.params))
        data_file = workdir / "data.npz"
        arrays = {"X": ctx.X, "y": ctx.y, "X_eval": ctx.X_eval, "y_eval": ctx.y_eval}
        np.savez(data_file, **{k: v for k, v in arrays.items() if v is not None})
        predictions_file = workdir / "predictions.json"
        env = dict(os.environ)
        env.update({f"PARAM_{k.upper()}": str(v) for k, v in ctx.params.items()})
        env.update(
            TRAINER_PARAMS=str(params_file),
            TRAINER_DATA=str(data_file),
            TRAINER_PREDICTIONS=str(predictions_file),
            TRAINER_MODEL_DIR=str(ctx.model_dir),
            TRAINER_STEPS=str(ctx.steps),
            TRAINER_OBJECTIVE=ctx.objective,
            TRAINER_FINAL="1" if ctx.final else "0",
        )
        garbage: list[str] = []
        reports = 0
        try:
            errors = (workdir / "command.err").open("w")
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, env=env, text=True)
        except OSError as exc:
            raise TrainerCommandError(f"cannot start the command {argv[0]!r}: {exc.strerror}") from None
        assert process.stdout is not None
        try:
            for line in process.stdout:
                record = _metrics_line(line)
                if record is None:
                    if line.strip():
                        garbage.append(line.strip()[:120])
                    continue
                step = record.pop("step")
                reports += 1
                ctx.report(step, **record)  # raises TrialPruned: the finally kills the program
            code = process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        errors.close()
        if code != 0:
            tail = [line for line in (workdir / "command.err").read_text(errors="replace").splitlines() if line.strip()][-2:]
            raise TrainerCommandError(f"the command exited with code {code}" + (f": {' | '.join(tail)[:400]}" if tail else ""))
        if not predictions_file.is_file():
            if garbage and not reports:
                raise TrainerCommandError(
                    f"the command printed {len(garbage)} lines that are not JSON metrics (first: {garbage[0]!r}) "
                    f"and wrote no predictions to $TRAINER_PREDICTIONS"
                )
            raise TrainerCommandError("the command wrote no predictions to $TRAINER_PREDICTIONS")
        try:
            return json.loads(predictions_file.read_text())
        except ValueError as exc:
            raise TrainerCommandError(f"$TRAINER_PREDICTIONS is not JSON: {exc}") from None


def _metrics_line(line: str) -> dict[str, Any] | None:
    """A ``{"step": int, metric: number, ...}`` line, else None."""
    text = line.strip()
    if not text.startswith("{") or len(text) > MAX_LINE_CHARS:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        return None
    metrics = {k: v for k, v in record.items() if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}
    return {"step": record["step"], **metrics}
