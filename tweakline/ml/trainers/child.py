"""The trainer process: imports and runs the user's trainer (started by :mod:`.sandbox` only).

``python -I -m tweakline.ml.trainers.child WORKDIR PARENT_PID``. It keeps its original stdout
for the protocol and points file descriptor 1 at stderr, so ``print`` in user code goes to the
log, not into the protocol.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _send(out: TextIO, message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def _normalise(result: Any, X_eval: np.ndarray | None, task: str) -> dict[str, np.ndarray]:
    """Predictions (and probabilities) from what the trainer returned: a model, a dict or an array."""
    if result is None:
        return {}
    if hasattr(result, "predict") and X_eval is not None:
        out = {"predictions": np.asarray(result.predict(X_eval))}
        if task == "classification" and hasattr(result, "predict_proba"):
            out["probabilities"] = np.asarray(result.predict_proba(X_eval), dtype=float)
        return out
    if isinstance(result, dict):
        out = {}
        if result.get("predictions") is not None:
            out["predictions"] = np.asarray(result["predictions"])
        if result.get("probabilities") is not None:
            out["probabilities"] = np.asarray(result["probabilities"], dtype=float)
        return out
    return {"predictions": np.asarray(result)}


def _describe(exc: BaseException) -> str:
    """``Type: message (at file.py:12 in fit)``, as the runner describes estimator errors."""
    import traceback

    message = " ".join(str(exc).split())
    if type(exc).__name__ == "TrainerCommandError":
        return message[:600]
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    if frames and type(exc).__name__ != "TrainerCommandError":
        last = frames[-1]
        text += f" (at {Path(last.filename).name}:{last.lineno} in {last.name})"
    return text[:600]


def main(workdir: Path, parent: int) -> None:  # pragma: no cover - runs in the trainer process
    """Run the job in ``workdir`` and report over the protocol."""
    _die_with_parent(parent)
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    answers = os.fdopen(os.dup(0), "r")
    os.dup2(2, 1)  # user prints go to the log
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    sys.stdout = sys.stderr

    from tweakline.ml.trainers.context import TrainContext, TrialPruned
    from tweakline.ml.trainers.kinds import kind_of
    from tweakline.proto.tweakfile import TrainerSpec

    try:
        job = json.loads((workdir / "job.json").read_text())
        trainer = TrainerSpec.model_validate(job["trainer"])
        with np.load(workdir / "data.npz", allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}

        def send(step: int, metrics: dict[str, float]) -> bool:
            _send(protocol, {"report": step, "metrics": metrics})
            answer = answers.readline()
            return answer.strip() == "1"

        ctx = TrainContext(
            params=job["params"],
            X=arrays.get("X"),
            y=arrays.get("y"),
            X_eval=arrays.get("X_eval"),
            y_eval=arrays.get("y_eval"),
            classes=job["classes"],
            task=job["task"],
            objective=job["objective"],
            steps=trainer.steps,
            model_dir=Path(job["model_dir"]),
            threads=int(job["threads"]),
            seed=int(job["seed"]),
            final=bool(job["final"]),
            _send=send,
        )
        result = kind_of(trainer).run(trainer, ctx, workdir)
        out = {k: v.astype(str) if v.dtype == object else v for k, v in _normalise(result, ctx.X_eval, ctx.task).items()}
        if out:
            np.savez(workdir / "out.npz", **out)
        _send(protocol, {"done": True})
    except TrialPruned:
        _send(protocol, {"pruned": True})
    except BaseException as exc:
        _send(protocol, {"error": _describe(exc)})


if __name__ == "__main__":  # pragma: no cover
    main(Path(sys.argv[1]), int(sys.argv[2]))
