"""Scale-out figures (issue #19): scheduler failover, 1 vs 2 schedulers, R3 cluster vs one node.

``python -m bench.scaleout`` starts three throwaway local stacks in turn (mTLS, every service a
process, two runners) and runs the same trivial workload on each: concurrent experiments whose
trials cost nothing but the platform (``bench.estimators.InstantClassifier``).

- **CPU per trial** of every process (user + system time, from ``psutil``), on one node with one
  scheduler, one node with two schedulers, and a 3-node JetStream cluster (R3 streams, buckets and
  stores) with one scheduler. CPU time is the load-independent figure: on 2 shared cores two
  schedulers cannot show more trials per second, but they show how the dispatch work splits and
  what sharing it (leases, membership, each owner's result feed) costs.
- **Failover**: on the two-scheduler stack, an experiment of slow-ish trials is started, the
  scheduler holding its lease is SIGKILLed, and the time until the next trial of that experiment is
  dispatched (by the other scheduler) is measured; the experiment must still end with exactly
  ``max_trials`` results.

Results are printed and written to ``bench/results/scaleout-<time>.json``; ``docs/benchmarks.md``
records a run with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.js.errors import KeyNotFoundError

from bench.harness import (
    ALLOWED,
    REPO,
    Probe,
    cpu_seconds,
    loadavg,
    prepare_environment,
    stack_processes,
    trivial_tweak,
    wait_ready,
)
from tweakline.proto.subjects import SCHEDULER_LEASE_TTL_S, Bucket, lease_key
from tweakline.runtime.settings import Settings
from tweakline.stack.local import LocalStack

RESULTS = REPO / "bench" / "results"
RUNNERS = 2


@contextmanager
def scale_stack(*, cluster: int, schedulers: int) -> Iterator[LocalStack]:
    """A throwaway local stack of ``cluster`` nats-servers and ``schedulers`` schedulers, stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="tweakline-scaleout-") as tmp:
        settings = Settings(allowed_estimators=ALLOWED)
        stack = LocalStack(Path(tmp), runners=RUNNERS, settings=settings, cluster=cluster, schedulers=schedulers)
        stack.start()
        try:
            yield stack
        finally:
            stack.stop(grace=5.0)


def _group(label: str) -> str:
    if label.startswith("nats"):
        return "nats"
    if label.startswith("scheduler"):
        return "schedulers"
    if label.startswith("trial-runner"):
        return "runners"
    return "others"


async def workload(stack: LocalStack, experiments: int, trials: int, parallelism: int) -> dict[str, Any]:
    """Run ``experiments`` concurrent trivial experiments; CPU ms per trial per process and per group."""
    probe = await Probe.open(stack, "bench-scaleout")
    try:
        await wait_ready(probe.nc, RUNNERS, timeout=120)
        stamp = int(time.time() * 1000) % 10**8
        warm = f"warmup-{stamp}"  # imports, dataset caches, JIT-free but first-touch costs
        await probe.submit(trivial_tweak("warmup", 20, 4), warm)
        await probe.wait([warm], timeout=300)
        procs = stack_processes(stack)
        before, load_before = cpu_seconds(procs), loadavg()
        exp_ids = [f"scale-{stamp}-{i}" for i in range(experiments)]
        owners: dict[str, str | None] = {}
        watcher = asyncio.create_task(_record_owners(stack, probe, exp_ids, owners))
        started = time.perf_counter()
        for i, exp_id in enumerate(exp_ids):
            await probe.submit(trivial_tweak(f"scale-{i}", trials, parallelism), exp_id)
        await probe.wait(exp_ids, timeout=max(300.0, experiments * trials / 2))
        wall = time.perf_counter() - started
        watcher.cancel()
        after = cpu_seconds(procs)
        done = sum(len(probe.trials_of(e)) for e in exp_ids)
        per_process = {k: round(1000 * (after[k] - before.get(k, 0.0)) / max(1, done), 2) for k in after}
        groups: dict[str, float] = {}
        for label, ms in per_process.items():
            groups[_group(label)] = round(groups.get(_group(label), 0.0) + ms, 2)
        owned: dict[str, int] = {}  # scheduler -> trials of the experiments it owned
        for exp_id in exp_ids:
            holder = owners.get(exp_id) or "unknown"
            owned[holder] = owned.get(holder, 0) + len(probe.trials_of(exp_id))
        return {
            "owners": owners,
            "trials_owned_by": owned,
            "scheduler_cpu_ms_per_owned_trial": {
                k: round(1000 * (after[k] - before.get(k, 0.0)) / owned[k], 2) for k in after if owned.get(k)
            },
            "experiments": experiments,
            "trials": done,
            "expected_trials": experiments * trials,
            "parallelism": parallelism,
            "wall_s": round(wall, 2),
            "trials_per_s": round(done / wall, 1),
            "cpu_ms_per_trial": per_process,
            "cpu_ms_per_trial_by_group": groups,
            "cpu_ms_per_trial_total": round(sum(per_process.values()), 2),
            "load_before": load_before,
            "load_after": loadavg(),
        }
    finally:
        await probe.close()


def _label(stack: LocalStack, holder: str) -> str | None:
    """The service label of a lease holder ("<host>-<pid>-<nonce>", scheduler/ownership.py)."""
    pid = int(holder.split("-")[-2])
    return next((s.name for s in stack.services if s.process.pid == pid), None)


async def _record_owners(stack: LocalStack, probe: Probe, exp_ids: list[str], owners: dict[str, str | None]) -> None:
    """Which scheduler first held each experiment's lease (polled while the workload runs)."""
    leases = await probe.nc.jetstream().key_value(Bucket.SCHEDULER_LEASES.value)
    while True:
        for exp_id in exp_ids:
            if owners.get(exp_id) is None:
                try:
                    owners[exp_id] = _label(stack, (await leases.get(lease_key(exp_id))).value.decode())
                except KeyNotFoundError:
                    pass
        await asyncio.sleep(0.05)


async def failover(stack: LocalStack, trials: int = 16, fold_seconds: float = 0.25) -> dict[str, Any]:
    """SIGKILL the scheduler owning a running experiment; seconds until its next trial is dispatched."""
    probe = await Probe.open(stack, "bench-failover")
    try:
        js = probe.nc.jetstream()
        leases = await js.key_value(Bucket.SCHEDULER_LEASES.value)
        exp_id = f"failover-{int(time.time() * 1000) % 10**8}"
        await probe.submit(trivial_tweak("failover", trials, 2, seconds=fold_seconds), exp_id)
        deadline = time.monotonic() + 120
        while len(probe.trials_of(exp_id)) < 3:
            if time.monotonic() > deadline:
                raise TimeoutError("no three results within 120 s")
            await asyncio.sleep(0.05)
        owner = (await leases.get(lease_key(exp_id))).value.decode()
        pid = int(owner.split("-")[-2])
        label = _label(stack, owner)
        issued = [int(t.rsplit(".", 1)[1]) for t in probe.requested if t.startswith(exp_id + ".")]
        last_before = max(issued)
        killed = time.perf_counter()
        os.kill(pid, signal.SIGKILL)

        def next_dispatch() -> float | None:
            later = [
                at for t, at in probe.requested.items() if t.startswith(exp_id + ".") and int(t.rsplit(".", 1)[1]) > last_before
            ]
            return min(later) if later else None

        while next_dispatch() is None:
            if time.perf_counter() - killed > 120:
                raise TimeoutError("no trial dispatched within 120 s of the kill")
            await asyncio.sleep(0.02)
        took = next_dispatch() - killed  # type: ignore[operator]
        try:
            new_owner = (await leases.get(lease_key(exp_id))).value.decode()
        except KeyNotFoundError:
            new_owner = None  # already finished and released
        await probe.wait([exp_id], timeout=300)
        return {
            "killed": label,
            "took_over": _label(stack, new_owner) if new_owner else None,
            "failover_s": round(took, 2),
            "lease_ttl_s": SCHEDULER_LEASE_TTL_S,
            "results": len(probe.trials_of(exp_id)),
            "max_trials": trials,
            "load": loadavg(),
        }
    finally:
        await probe.close()


def run(quick: bool) -> dict[str, Any]:
    """Every scenario, one stack at a time (they would share the 2 cores)."""
    experiments, trials, parallelism = (2, 30, 4) if quick else (4, 60, 4)
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_at_start": loadavg()}, "runners": RUNNERS}
    with scale_stack(cluster=1, schedulers=1) as stack:
        out["one_node_one_scheduler"] = asyncio.run(workload(stack, experiments, trials, parallelism))
    with scale_stack(cluster=1, schedulers=2) as stack:
        out["one_node_two_schedulers"] = asyncio.run(workload(stack, experiments, trials, parallelism))
        out["failover"] = asyncio.run(failover(stack))
    with scale_stack(cluster=3, schedulers=1) as stack:
        out["r3_cluster_one_scheduler"] = asyncio.run(workload(stack, experiments, trials, parallelism))
    return out


def summary(results: dict[str, Any]) -> list[str]:
    """The lines docs/benchmarks.md quotes."""
    lines = []
    for key in ("one_node_one_scheduler", "one_node_two_schedulers", "r3_cluster_one_scheduler"):
        r = results[key]
        g = r["cpu_ms_per_trial_by_group"]
        schedulers = {k: v for k, v in r["cpu_ms_per_trial"].items() if k.startswith("scheduler")}
        lines.append(
            f"{key}: {r['trials']}/{r['expected_trials']} trials, {r['trials_per_s']} trials/s, CPU ms/trial total "
            f"{r['cpu_ms_per_trial_total']} (nats {g.get('nats')}, schedulers {g.get('schedulers')} = {schedulers}, "
            f"runners {g.get('runners')}, others {g.get('others')}); trials owned {r['trials_owned_by']}, "
            f"scheduler CPU ms per owned trial {r['scheduler_cpu_ms_per_owned_trial']}; "
            f"load {r['load_before']} -> {r['load_after']}"
        )
    f = results["failover"]
    lines.append(
        f"failover: {f['killed']} SIGKILLed -> next trial dispatched by {f['took_over']} after {f['failover_s']} s "
        f"(lease TTL {f['lease_ttl_s']} s); {f['results']}/{f['max_trials']} results; load {f['load']}"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Smaller counts (a smoke run, not for the docs).")
    args = parser.parse_args(argv)
    prepare_environment()
    results = run(args.quick)
    results["finished_at"] = datetime.now(UTC).isoformat()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"scaleout-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    for line in summary(results):
        print(line)
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
