"""The local stack's memory footprint: proportional set size (PSS) of every process, summed.

Resident set sizes add up shared pages once per process; a fork server's children share their
imported pages, so their RSS overstates what they cost. PSS divides each shared page among the
processes that map it, so the sum over a stack's processes is what the stack takes from the
machine (what ``smem`` reports; psutil's ``memory_full_info().pss``, from ``/proc/<pid>/smaps_rollup``).

The scenario starts a stack with 2 runners (``bench_stack``), waits until every service is
subscribed, then runs the digits SVC example (40 trials, evaluation and deployment) while a thread
samples every process of the stack every 0.25 s: nats-server, the fork server, the services, and
their children (each runner's training zygote and training child). It reports
the total at "all services up", its peak during the run, and each process's own peak; with
``pages=True`` (``--pages``, root only) also which processes share the pages at the end of the run
(:mod:`bench.pages`: what a process, or a group of them, would free if it went).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.harness import Probe, bench_stack, loadavg, wait_ready
from bench.pages import page_sets
from tweakline.client.follow import Outcome, follow
from tweakline.stack.local import LocalStack
from tweakline.validation.loading import load_tweak_file

MIB = 2**20
TARGET_MIB = 300  # issue 20: the local stack with 2 runners, PSS in total at peak


def stack_tree(stack: LocalStack) -> dict[str, psutil.Process]:
    """Every process of the stack by label, children of the services included (``trial-runner-0/child-1``)."""
    procs: dict[str, psutil.Process] = {}
    if stack.server is not None and stack.server.pid:
        procs["nats-server"] = psutil.Process(stack.server.pid)
    if stack.forks is not None:
        procs["fork-server"] = psutil.Process(stack.forks.process.pid)
    for service in stack.services:
        try:
            parent = psutil.Process(service.process.pid)
            procs[service.name] = parent
            for index, child in enumerate(parent.children(recursive=True), 1):
                procs[f"{service.name}/child-{index}"] = child
        except psutil.Error:
            continue
    return procs


def pss_mib(stack: LocalStack) -> dict[str, float]:
    """Each live process's PSS now, MiB."""
    out = {}
    for label, proc in stack_tree(stack).items():
        try:
            out[label] = proc.memory_full_info().pss / MIB
        except psutil.Error:
            continue
    return out


class PssSampler:
    """The peak of the stack's summed PSS, and each process's own peak, sampled in a thread."""

    def __init__(self, stack: LocalStack, interval: float = 0.25):
        self.stack = stack
        self.interval = interval
        self.peak_total = 0.0
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pss-sampler", daemon=True)

    def sample(self) -> float:
        """Take one sample; return the total."""
        now = pss_mib(self.stack)
        for label, value in now.items():
            self.peak[label] = max(self.peak.get(label, 0.0), value)
        total = sum(now.values())
        self.peak_total = max(self.peak_total, total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def footprint(tweak_path: Path, runners: int = 2, pages: bool = False) -> dict[str, Any]:
    """PSS of a ``runners``-runner stack: at "all services up" and at its peak during a digits run.

    ``pages``: also the pages each process, and each group of them, alone maps after the run.
    """
    tweak = load_tweak_file(tweak_path)
    load_before = loadavg()
    t0 = time.perf_counter()
    with bench_stack(runners) as stack:

        async def _up() -> None:
            probe = await Probe.open(stack)
            try:
                await wait_ready(probe.nc, runners)
            finally:
                await probe.close()

        asyncio.run(_up())
        ready_s = time.perf_counter() - t0
        up = pss_mib(stack)

        async def _run() -> int:
            probe = await Probe.open(stack)
            try:
                exp_id = f"bench-footprint-{int(time.time() * 1000) % 10**8}"
                outcome = Outcome(experiment_id=exp_id, tweak=tweak)
                await probe.submit(tweak, exp_id)
                await follow(probe.nc, outcome, timeout=900, alive=stack.check)
                return len(outcome.trials)
            finally:
                await probe.close()

        with PssSampler(stack) as sampler:
            trials = asyncio.run(_run())
        shared = page_sets({label: proc.pid for label, proc in stack_tree(stack).items()}) if pages else None
    return {
        "runners": runners,
        "tweak_file": tweak_path.name,
        "trials": trials,
        "ready_s": round(ready_s, 2),
        "up_total_mib": round(sum(up.values()), 1),
        "up_mib": {k: round(v, 1) for k, v in up.items()},
        "peak_total_mib": round(sampler.peak_total, 1),
        "peak_mib": {k: round(v, 1) for k, v in sorted(sampler.peak.items(), key=lambda kv: -kv[1])},
        "target_mib": TARGET_MIB,
        "load_before": load_before,
        "load_after": loadavg(),
    } | ({"pages": shared} if pages else {})


if __name__ == "__main__":  # python -m bench.footprint: the scenario alone, printed
    import json
    import sys

    from bench.harness import REPO, prepare_environment

    prepare_environment()
    print(json.dumps(footprint(REPO / "examples" / "digits-svc.tweak.yaml", pages="--pages" in sys.argv), indent=1))
