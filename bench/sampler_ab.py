"""Does a TPE experiment slow a concurrent random-search experiment's dispatch? (issue 20, A/B)

``python -m bench.sampler_ab`` starts one throwaway local stack (mTLS, 2 runners) and runs rounds
of four concurrent experiments of trivial trials (``bench.estimators.InstantClassifier``): one
random-search experiment, ``rand``, with three companions that are random search in arm A and
TPE in arm B. The rounds alternate A B B A A B, so a drift of the machine's load falls on both arms.

For ``rand``, per round:

- **dispatch delay**: for each trial request the scheduler publishes, the time since the latest
  earlier result of ``rand`` (how long the scheduler takes to answer a result with the next
  request; p50, p90, p99), taken by the bus probe on one clock;
- its wall time from submission to ``experiments.completed``, and its trials' request-to-result
  latency (which mostly shows how busy the runners are: TPE companions issue fewer trials).

Also the companions' trials per second and the scheduler's CPU seconds. Results are printed and
written to ``bench/results/sampler-ab-<time>.json``; ``docs/benchmarks.md`` ("Sampler cost")
records a run with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from bench.harness import (
    REPO,
    Probe,
    bench_stack,
    cpu_seconds,
    loadavg,
    percentile,
    prepare_environment,
    stack_processes,
    trivial_tweak,
    wait_ready,
)

RUNNERS = 2
PARALLELISM = 8


def dispatch_delays(probe: Probe, exp_id: str) -> list[float]:
    """Seconds from the latest result of ``exp_id`` seen before each of its requests to that request."""
    prefix = exp_id + "."
    requests = sorted({t for tid, t in probe.requested.items() if tid.startswith(prefix)})
    results = sorted(t for tid, (t, _) in probe.completed.items() if tid.startswith(prefix))
    delays: list[float] = []
    seen, latest = 0, None
    for requested in requests:  # a batch's trials share one request time: counted once
        while seen < len(results) and results[seen] <= requested:
            latest = results[seen]
            seen += 1
        if latest is not None:
            delays.append(requested - latest)
    return delays


async def one_round(
    probe: Probe, arm: str, index: int, procs: dict[str, Any], trials: int, companion_trials: int
) -> dict[str, Any]:
    """Submit ``rand`` and its three companions at once; wait for all four; measure ``rand``."""
    tag = f"{arm.lower()}{index}-{int(time.time() * 1000) % 10**7}"
    rand, companions = f"rand-{tag}", [f"companion{i}-{tag}" for i in range(3)]
    algorithm = "random" if arm == "A" else "tpe"
    load_before, cpu_before = loadavg(), cpu_seconds(procs)
    started = time.perf_counter()
    for exp_id in companions:
        await probe.submit(trivial_tweak(exp_id.split("-")[0], companion_trials, PARALLELISM, algorithm=algorithm), exp_id)
    submitted = await probe.submit(trivial_tweak("rand", trials, PARALLELISM, algorithm="random"), rand)
    await probe.wait([rand, *companions], timeout=900)
    cpu_after = cpu_seconds(procs)
    delays = [1000 * d for d in dispatch_delays(probe, rand)]
    latencies = [1000 * x for x in probe.latencies(rand)]
    done = max(probe.experiments_done[e] for e in companions)
    return {
        "arm": arm,
        "companions": algorithm,
        "load_before": load_before,
        "rand_wall_s": round(probe.experiments_done[rand] - submitted, 2),
        "dispatch_ms": {q: round(percentile(delays, q) or 0, 2) for q in (50, 90, 99)}
        | {"mean": round(statistics.mean(delays), 2)},
        "rand_latency_ms": {q: round(percentile(latencies, q) or 0, 1) for q in (50, 99)},
        "companions_trials_per_s": round(sum(len(probe.trials_of(e)) for e in companions) / (done - started), 1),
        "scheduler_cpu_s": round(cpu_after["scheduler"] - cpu_before["scheduler"], 2),
    }


def run(arms: str, trials: int, companion_trials: int) -> dict[str, Any]:
    """Every round on one stack, after a warm-up experiment."""
    with bench_stack(RUNNERS) as stack:

        async def _main() -> list[dict[str, Any]]:
            probe = await Probe.open(stack)
            try:
                await wait_ready(probe.nc, RUNNERS)
                warm = f"warm-{int(time.time() * 1000) % 10**7}"
                await probe.submit(trivial_tweak("warm", 40, PARALLELISM), warm)
                await probe.wait([warm], 120)
                procs = stack_processes(stack)
                rounds = []
                for index, arm in enumerate(arms):
                    rounds.append(await one_round(probe, arm, index, procs, trials, companion_trials))
                    print(json.dumps(rounds[-1]), flush=True)
                return rounds
            finally:
                await probe.close()

        rounds = asyncio.run(_main())
    summary = {
        arm: {
            "dispatch_p50_ms": [r["dispatch_ms"][50] for r in rounds if r["arm"] == arm],
            "dispatch_p99_ms": [r["dispatch_ms"][99] for r in rounds if r["arm"] == arm],
            "rand_wall_s": [r["rand_wall_s"] for r in rounds if r["arm"] == arm],
        }
        for arm in sorted(set(arms))
    }
    return {"rounds": rounds, "summary": summary, "load_at_end": loadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sampler_ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", default="ABBAAB", help="The rounds in order: A = random companions, B = TPE companions.")
    parser.add_argument("--trials", type=int, default=600, help="Trials of the random experiment measured.")
    parser.add_argument("--companion-trials", type=int, default=400, help="Trials of each companion.")
    args = parser.parse_args(argv)
    if set(args.arms) - {"A", "B"}:
        parser.error(f"--arms takes A and B only, got {args.arms!r}")
    prepare_environment()
    results = {"command": "python -m bench.sampler_ab", "at": datetime.now(UTC).isoformat(timespec="seconds"), **vars(args)}
    results |= run(args.arms, args.trials, args.companion_trials)
    out = REPO / "bench" / "results" / f"sampler-ab-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results["summary"], indent=1))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
