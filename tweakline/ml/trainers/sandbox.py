"""Run a trainer in its own scrubbed process and talk to it over its stdin/stdout.

The trainer process (``python -I -m tweakline.ml.trainers.child WORKDIR``) starts with:

- an environment built from scratch (``PATH``, locale, ``HOME``/``TMPDIR`` in its work folder and
  the thread-count variables): no ``TWEAKLINE_*`` setting, TLS path or secret of the caller;
- no inherited file descriptor but its stdin, stdout and stderr (``close_fds``), so no NATS
  socket and no pipe of the runner;
- ``-I``: Python ignores ``PYTHON*`` variables and the user's site folder;
- ``PR_SET_PDEATHSIG``: it dies with the process that started it (the runner's training child).

The protocol: one JSON object per line from the trainer (``report``, ``done``, ``error``,
``pruned``) on its original stdout, and one answer per report (``0`` go on / ``1`` stop) on its
stdin. What user code prints goes to stderr (``stderr.log`` in the work folder) and cannot
corrupt the protocol.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from tweakline.errors import TweaklineError
from tweakline.proto.tweakfile import TrainerSpec

# A protocol line longer than this is refused (the trainer cannot flood the parent).
MAX_PROTOCOL_LINE = 1_000_000
# How often time and memory are checked while waiting for the trainer (seconds).
POLL_S = 0.2
# Environment the trainer gets, besides the thread counts: nothing of the caller's secrets.
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


class TrainerError(TweaklineError):
    """The trainer failed; the message names the cause (its exception, a limit, bad output)."""


OnReport = Callable[[int, dict[str, float]], bool]
"""``on_report(step, metrics)`` for each report; True stops the trainer (pruned)."""


@dataclass
class TrainerJob:
    """One call of a trainer: what it gets and where it runs."""

    trainer: TrainerSpec
    params: dict[str, Any]
    code_dir: Path
    X: np.ndarray | None
    y: np.ndarray | None
    X_eval: np.ndarray | None
    y_eval: np.ndarray | None
    classes: list[Any] | None
    task: str
    objective: str
    threads: int = 1
    seed: int = 0
    final: bool = False
    model_dir: Path | None = None  # where the trainer saves its model (a temporary folder when None)


@dataclass
class TrainerResult:
    """What a trainer produced."""

    status: str  # ok | pruned
    predictions: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    reports: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    duration_s: float = 0.0
    cpu_s: float = 0.0


def trainer_env(workdir: Path, threads: int) -> dict[str, str]:
    """The trainer's whole environment: built from nothing, so no credential leaks into it."""
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env.setdefault("LANG", "C.UTF-8")
    # 'python' in a command is the platform's Python (with numpy, scikit-learn, torch), first on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    tmp = workdir / "tmp"
    tmp.mkdir(exist_ok=True)
    env.update(HOME=str(workdir), TMPDIR=str(tmp), PYTHONUNBUFFERED="1")
    env.update(dict.fromkeys(THREAD_ENV, str(threads)))
    return env


def _safe_labels(values: np.ndarray | None) -> np.ndarray | None:
    """Arrays the trainer can load without pickle (object columns become strings)."""
    if values is None:
        return None
    array = np.asarray(values)
    return array.astype(str) if array.dtype == object else array


def run_trainer(
    job: TrainerJob,
    on_report: OnReport | None = None,
    *,
    timeout: float | None = None,
    memory_mb: int | None = None,
) -> TrainerResult:
    """Run ``job`` in a scrubbed trainer process; raise :class:`TrainerError` naming the cause on failure."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tweakline-trainer-") as tmp:
        workdir = Path(tmp)
        model_dir = job.model_dir or workdir / "model"
        model_dir.mkdir(parents=True, exist_ok=True)
        arrays = {"X": job.X, "y": _safe_labels(job.y), "X_eval": job.X_eval, "y_eval": _safe_labels(job.y_eval)}
        np.savez(workdir / "data.npz", **{k: np.asarray(v) for k, v in arrays.items() if v is not None})
        (workdir / "job.json").write_text(
            json.dumps(
                {
                    "trainer": job.trainer.model_dump(mode="json"),
                    "params": job.params,
                    "code_dir": str(job.code_dir),
                    "classes": None if job.classes is None else [_plain(c) for c in job.classes],
                    "task": job.task,
                    "objective": job.objective,
                    "threads": job.threads,
                    "seed": job.seed,
                    "final": job.final,
                    "model_dir": str(model_dir),
                }
            )
        )
        stderr_path = workdir / "stderr.log"
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-I", "-m", "tweakline.ml.trainers.child", str(workdir), str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=trainer_env(workdir, job.threads),
                cwd=job.code_dir,
                close_fds=True,
            )
            try:
                result = _converse(process, job, on_report, started, timeout, memory_mb, stderr_path)
            finally:
                cpu = _cpu_of(process)
                if process.poll() is None:
                    process.kill()
                process.wait()
                for stream in (process.stdin, process.stdout):
                    with contextlib.suppress(OSError):
                        stream.close()  # type: ignore[union-attr]
        result.duration_s = time.monotonic() - started
        result.cpu_s = cpu
        if result.status == "ok":
            _load_predictions(result, workdir, job)
        if job.model_dir is None:
            shutil.rmtree(model_dir, ignore_errors=True)
        return result


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _cpu_of(process: subprocess.Popen[bytes]) -> float:
    try:
        times = psutil.Process(process.pid).cpu_times()
        return float(times.user + times.system + times.children_user + times.children_system)
    except psutil.Error:
        return 0.0


def _tree_rss_mb(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total / 2**20


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_bytes()[-4000:].decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept)


def _converse(
    process: subprocess.Popen[bytes],
    job: TrainerJob,
    on_report: OnReport | None,
    started: float,
    timeout: float | None,
    memory_mb: int | None,
    stderr_path: Path,
) -> TrainerResult:
    assert process.stdout is not None and process.stdin is not None
    result = TrainerResult(status="ok")
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    buffer = b""
    try:
        while True:
            if timeout is not None and time.monotonic() - started > timeout:
                raise TrainerError(f"the trainer exceeded its time limit of {timeout:g}s and was stopped")
            if memory_mb is not None and (rss := _tree_rss_mb(process.pid)) > memory_mb:
                raise TrainerError(
                    f"the trainer used {rss:.0f} MiB of memory, over its limit of {memory_mb} MiB, and was stopped"
                )
            if not selector.select(POLL_S):
                continue
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                code = process.wait()
                tail = _tail(stderr_path)
                raise TrainerError(
                    f"the trainer process ended without a result (exit code {code})" + (f": {tail}" if tail else "")
                )
            buffer += chunk
            if len(buffer) > MAX_PROTOCOL_LINE and b"\n" not in buffer:
                raise TrainerError("the trainer process sent an over-long protocol line")
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                message = json.loads(line)
                if "report" in message:
                    step, metrics = int(message["report"]), dict(message.get("metrics", {}))
                    result.reports.append((step, metrics))
                    stop = bool(on_report(step, metrics)) if on_report is not None else False
                    process.stdin.write(b"1\n" if stop else b"0\n")
                    process.stdin.flush()
                elif "pruned" in message:
                    result.status = "pruned"
                    return result
                elif "error" in message:
                    raise TrainerError(str(message["error"]))
                elif "done" in message:
                    return result
    finally:
        selector.close()


def _load_predictions(result: TrainerResult, workdir: Path, job: TrainerJob) -> None:
    """Read and check the predictions the trainer wrote (shape against the rows it was given)."""
    path = workdir / "out.npz"
    if not path.is_file():
        if job.X_eval is not None:
            raise TrainerError("the trainer returned no predictions")
        return
    with np.load(path, allow_pickle=False) as out:
        predictions = out["predictions"] if "predictions" in out else None
        probabilities = out["probabilities"] if "probabilities" in out else None
    if job.X_eval is None:
        result.predictions, result.probabilities = predictions, probabilities
        return
    rows = len(job.X_eval)
    if predictions is None:
        raise TrainerError(f"the trainer returned no predictions for the {rows} rows of ctx.X_eval")
    if predictions.ndim == 2 and predictions.shape[1] == 1:
        predictions = predictions.ravel()
    if predictions.shape != (rows,):
        raise TrainerError(
            f"the trainer's predictions have shape {predictions.shape}; expected ({rows},): one per row of ctx.X_eval"
        )
    if probabilities is not None and job.classes is not None and probabilities.shape != (rows, len(job.classes)):
        raise TrainerError(
            f"the trainer's probabilities have shape {probabilities.shape}; expected ({rows}, {len(job.classes)}): "
            "one column per class of ctx.classes"
        )
    result.predictions, result.probabilities = predictions, probabilities
