"""What every platform scenario needs: a throwaway local stack, a bus probe that timestamps trials, tweak files.

The probe is a plain (core NATS) subscriber on the trial subjects: it sees every
``trials.requested`` the scheduler publishes and every ``trials.completed`` a runner publishes,
without taking part in the work-queue, so dispatch-to-result latency is measured on one clock
without changing the path being measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from nats.aio.client import Client

from bench.estimators import ALLOW_PREFIX
from tweakline.client.follow import submit
from tweakline.proto.messages import Source
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Consumer, Stream, Subject, all_of
from tweakline.proto.tweakfile import TweakFile
from tweakline.runtime.bus import connect
from tweakline.runtime.settings import Settings
from tweakline.stack.local import LocalStack

REPO = Path(__file__).resolve().parents[1]
ALLOWED = ["sklearn.", ALLOW_PREFIX]


def prepare_environment() -> None:
    """Let the stack's child processes import ``bench.estimators`` and allow it (this process tree only)."""
    os.environ["TWEAKLINE_ALLOWED_ESTIMATORS"] = json.dumps(ALLOWED)
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    os.environ.setdefault("TWEAKLINE_LOG_LEVEL", "WARNING")  # per-trial INFO lines would cost CPU we measure


def loadavg() -> list[float]:
    """1, 5 and 15-minute load averages, recorded with every result."""
    return [round(x, 2) for x in os.getloadavg()]


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q) - 1))]


def trivial_tweak(name: str, trials: int, parallelism: int, *, seconds: float = 0.0, algorithm: str = "random") -> TweakFile:
    """An experiment whose trials cost nothing but the platform (or ``seconds`` of sleep per fold, 2 folds)."""
    return TweakFile.model_validate(
        {
            "apiVersion": "tweakline/v1",
            "kind": "Experiment",
            "metadata": {"name": name},
            "spec": {
                "dataset": {"source": "sklearn:iris"},
                "model": {"estimator": f"{ALLOW_PREFIX}InstantClassifier", "fixed": {"seconds": seconds}},
                "search": {"algorithm": algorithm, "seed": 0, "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}}},
                "objective": {"metric": "accuracy", "cv": 2},
                "budget": {"max_trials": trials, "parallelism": parallelism},
            },
        }
    )


@contextmanager
def bench_stack(runners: int, *, plaintext: bool = False) -> Iterator[LocalStack]:
    """A local stack on a throwaway state directory (fresh PKI and JetStream store), stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="tweakline-bench-") as tmp:
        settings = Settings(allowed_estimators=ALLOWED, insecure_plaintext_for_benchmarks=plaintext)
        stack = LocalStack(Path(tmp), runners=runners, settings=settings)
        stack.start()
        try:
            yield stack
        finally:
            stack.stop()


async def wait_ready(nc: Client, runners: int, timeout: float = 60.0) -> float:
    """Wait until every durable consumer has a pull request waiting (all services subscribed); return when."""
    js = nc.jetstream()
    wanted = {
        Consumer.SCHEDULER_INTAKE: 1,
        Consumer.TRIAL_RUNNERS: runners,
        Consumer.EVALUATOR: 1,
        Consumer.DEPLOYER: 1,
    }
    streams = {
        Consumer.SCHEDULER_INTAKE: Stream.EVENTS,
        Consumer.TRIAL_RUNNERS: Stream.TRIALS,
        Consumer.EVALUATOR: Stream.EVENTS,
        Consumer.DEPLOYER: Stream.EVENTS,
    }
    # A consumer counts as served once its pull requests plus the messages it holds reach the
    # number of subscribers (a busy runner has no pull request waiting but holds its trial).
    seen: dict[Consumer, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for consumer, count in wanted.items():
            if consumer in seen:
                continue
            try:
                info = await js.consumer_info(streams[consumer].value, consumer.value)
            except Exception:
                continue
            if (info.num_waiting or 0) + (info.num_ack_pending or 0) >= count:
                seen[consumer] = time.perf_counter()
        if len(seen) == len(wanted):
            return max(seen.values())
        await asyncio.sleep(0.02)
    raise TimeoutError(f"stack not ready within {timeout:.0f}s")


@dataclass
class Probe:
    """Timestamps of trial and experiment events seen on the bus (one clock: ``time.perf_counter``)."""

    nc: Client
    requested: dict[str, float] = field(default_factory=dict)
    first_requested_body: bytes | None = None
    completed: dict[str, tuple[float, bytes]] = field(default_factory=dict)
    experiments_done: dict[str, float] = field(default_factory=dict)
    waiters: dict[str, asyncio.Event] = field(default_factory=dict)
    evaluated: dict[str, asyncio.Event] = field(default_factory=dict)

    @classmethod
    async def open(cls, stack: LocalStack, name: str = "bench-probe") -> Probe:
        """Connect as admin and subscribe to trial requests, results and experiment completions."""
        nc = await connect(stack.settings_for(Identity.ADMIN), name)
        probe = cls(nc)
        await nc.subscribe(all_of(Subject.TRIAL_REQUESTED), cb=probe._on_requested)
        await nc.subscribe(all_of(Subject.TRIAL_COMPLETED), cb=probe._on_completed)
        await nc.subscribe(all_of(Subject.EXPERIMENT_COMPLETED), cb=probe._on_experiment)
        await nc.subscribe(all_of(Subject.EVALUATION_COMPLETED), cb=probe._on_evaluation)
        await nc.flush()
        return probe

    @staticmethod
    def _key(msg: Any) -> str:
        # Nats-Msg-Id is "<kind>:<trial id>": the id without parsing the JSON body.
        return (msg.headers or {}).get("Nats-Msg-Id", "").split(":", 1)[-1]

    async def _on_requested(self, msg: Any) -> None:
        if self.first_requested_body is None:
            self.first_requested_body = msg.data
        # A batch's id is "trial:<first trial id>:<number>:<number>...": every trial it carries.
        first, *more = self._key(msg).split(":")
        now = time.perf_counter()
        experiment = first.rsplit(".", 1)[0]
        for tid in [first, *(f"{experiment}.{n}" for n in more)]:
            self.requested.setdefault(tid, now)

    async def _on_completed(self, msg: Any) -> None:
        # A batch's results travel together: "trial-completed:<first trial id>:<number>...".
        first, *more = self._key(msg).split(":")
        now = time.perf_counter()
        experiment = first.rsplit(".", 1)[0]
        for tid in [first, *(f"{experiment}.{n}" for n in more)]:
            self.completed.setdefault(tid, (now, msg.data))

    async def _on_experiment(self, msg: Any) -> None:
        exp_id = msg.subject.rsplit(".", 1)[-1]
        self.experiments_done.setdefault(exp_id, time.perf_counter())
        self.waiters.setdefault(exp_id, asyncio.Event()).set()

    async def _on_evaluation(self, msg: Any) -> None:
        self.evaluated.setdefault(msg.subject.rsplit(".", 1)[-1], asyncio.Event()).set()

    async def wait_evaluated(self, exp_id: str, timeout: float = 120.0) -> None:
        """Wait for the evaluator's verdict on ``exp_id`` (so its work is not counted in the next run)."""
        await asyncio.wait_for(self.evaluated.setdefault(exp_id, asyncio.Event()).wait(), timeout)

    async def submit(self, tweak: TweakFile, exp_id: str) -> float:
        """Submit an experiment; return the time just before publishing."""
        self.waiters.setdefault(exp_id, asyncio.Event())
        started = time.perf_counter()
        await submit(self.nc, tweak, Source(trigger="bench", path="bench/platform.py"), exp_id)
        return started

    async def wait(self, exp_ids: list[str], timeout: float) -> None:
        """Wait for every experiment's ``experiments.completed``."""
        await asyncio.wait_for(asyncio.gather(*(self.waiters.setdefault(e, asyncio.Event()).wait() for e in exp_ids)), timeout)

    def trials_of(self, exp_id: str) -> list[str]:
        """Trial ids of one experiment whose result was seen."""
        return [tid for tid in self.completed if tid.startswith(exp_id + ".")]

    def latencies(self, exp_id: str) -> list[float]:
        """Seconds from each trial's request to its result, for one experiment."""
        return [self.completed[tid][0] - self.requested[tid] for tid in self.trials_of(exp_id) if tid in self.requested]

    def durations(self, exp_id: str) -> list[float]:
        """The runner-measured training time of each trial (``duration_s``)."""
        out = []
        for tid in self.trials_of(exp_id):
            body = json.loads(self.completed[tid][1])
            number = int(tid.rsplit(".", 1)[1])
            record = next((r for r in [body, *body.get("batch", [])] if r["number"] == number), body)
            out.append(record["duration_s"])
        return out

    async def close(self) -> None:
        await self.nc.drain()


def stack_processes(stack: LocalStack) -> dict[str, psutil.Process]:
    """Every process of the stack by label: ``nats-server`` or ``nats-<i>``, then the services."""
    procs: dict[str, psutil.Process] = {}
    if stack.server is not None and stack.server.pid:
        procs["nats-server"] = psutil.Process(stack.server.pid)
    if stack.cluster is not None:
        procs.update({f"nats-{i}": psutil.Process(pid) for i, pid in enumerate(stack.cluster.pids) if pid})
    for service in stack.services:
        proc = psutil.Process(service.process.pid)
        procs[service.name] = proc
        # A runner trains in its own child process: its CPU is the trial's, so it counts too.
        children = [c for c in proc.children(recursive=True) if "resource_tracker" not in " ".join(c.cmdline())]
        for index, child in enumerate(children):
            procs[f"{service.name}/training" + (f"-{index}" if index else "")] = child
    return procs


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    """User + system CPU seconds of each process so far (0 for one that is gone)."""
    out = {}
    for label, proc in procs.items():
        try:
            times = proc.cpu_times()
            out[label] = times.user + times.system
        except psutil.Error:
            out[label] = 0.0
    return out
