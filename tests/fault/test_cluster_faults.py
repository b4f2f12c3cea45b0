"""Node loss and scheduler failover on a real 3-node JetStream cluster (R3 streams, buckets, stores).

Every service is a process of a local stack whose nats-servers form one cluster on loopback
with mTLS on client and route connections. Faults are real: SIGKILL of a nats-server node or of
the scheduler that owns an experiment, and a rolling restart of every node.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import time
from pathlib import Path

import pytest
from nats.js.errors import KeyNotFoundError

from tests.fault.conftest import tweak, wait_exit, watching
from tests.waiting import until
from tweakline.proto.messages import ExperimentState, TrialRequested, TrialStatus
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import SCHEDULER_LEASE_TTL_S, Bucket, Stream, Subject, all_of, lease_key
from tweakline.runtime.bus import connect
from tweakline.runtime.records import RecordStore
from tweakline.scheduler.ownership import CLAIM_INTERVAL_S

pytestmark = pytest.mark.fault

# The stated bound on failover (owner SIGKILLed -> its experiment's next trial dispatched by
# another scheduler): the lease's TTL, one claim round, and slack for the server's expiry timer
# and a loaded 2-core machine.
FAILOVER_BOUND_S = SCHEDULER_LEASE_TTL_S + 2 * CLAIM_INTERVAL_S + 7.0


async def stored_state(stack, exp_id: str) -> ExperimentState:
    nc = await connect(stack.settings_for(Identity.ADMIN), "fault-test-kv")
    try:
        store = await RecordStore.open(nc.jetstream(), Bucket.EXPERIMENTS.value, ExperimentState)
        found = await store.get(exp_id)
        assert found is not None
        return found[0]
    finally:
        await nc.close()


def exact(outcome, max_trials: int) -> None:
    """The experiment completed with exactly ``max_trials`` results, each once, and a decision."""
    assert outcome.completed is not None and outcome.evaluation is not None
    numbers = [t.number for t in outcome.completed.trials]
    assert sorted(numbers) == list(range(max_trials)), numbers  # none lost, none counted twice
    assert all(t.status is TrialStatus.OK for t in outcome.completed.trials)
    assert outcome.evaluation.decision is not None


async def replicas_current(stack) -> bool:
    """Whether every stream has all three replicas current (a restarted node caught up)."""
    nc = await connect(stack.settings_for(Identity.ADMIN), "fault-test-health", max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        for stream in Stream:
            info = await js.stream_info(stream.value)
            peers = info.cluster.replicas or [] if info.cluster else []
            if info.cluster is None or info.cluster.leader is None or len(peers) != 2 or not all(p.current for p in peers):
                return False
        return True
    except Exception:
        return False
    finally:
        await nc.close()


async def test_topology_is_replicated_three_times(make_stack) -> None:
    stack = await make_stack(runners=1, cluster=3)
    nc = await connect(stack.settings_for(Identity.ADMIN), "fault-test")
    try:
        js = nc.jetstream()
        for stream in Stream:
            assert (await js.stream_info(stream.value)).config.num_replicas == 3
        for bucket in (Bucket.EXPERIMENTS, Bucket.RELEASES, Bucket.SCHEDULER_LEASES):
            assert (await js.stream_info(f"KV_{bucket.value}")).config.num_replicas == 3
        assert (await js.stream_info(f"OBJ_{Bucket.ARTIFACTS.value}")).config.num_replicas == 3
    finally:
        await nc.close()
    # Routes are mutual TLS: a peer without a certificate is refused, one with the CA's server
    # certificate is let in (and gets the route's INFO).
    for node in stack.cluster.nodes:
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
            await route_hello(node.config.cluster_port, stack.layout.pki, None)
        assert (await route_hello(node.config.cluster_port, stack.layout.pki, Identity.NATS_SERVER)).startswith(b"INFO ")


async def route_hello(port: int, pki: Path, identity: Identity | None) -> bytes:
    """Open a TLS connection to a route port (with ``identity``'s certificate, if any); its first line."""
    ctx = ssl.create_default_context(cafile=str(pki / Identity.ADMIN / "ca.crt"))
    if identity is not None:
        ctx.load_cert_chain(str(pki / identity / "tls.crt"), str(pki / identity / "tls.key"))
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"), 10)
    try:
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


async def test_sigkill_one_node_mid_experiment(make_stack) -> None:
    stack = await make_stack(runners=2, cluster=3, schedulers=2)
    async with watching(stack) as watch:
        exps = [await watch.submit(tweak(f"node-loss-{i}", [0.4, 0.6], max_trials=6, parallelism=2)) for i in range(2)]
        await watch.until(lambda: all(len(watch.outcomes[e].trials) >= 2 for e in exps), "two results each")
        assert all(watch.outcomes[e].completed is None for e in exps)  # the kill below is mid-experiment
        stack.kill_node(0)  # the first node started: usually the meta leader and many stream leaders
        for exp in exps:
            exact(await watch.done(exp), 6)
    stack.restart_node(0)
    await until(lambda: replicas_current(stack), timeout=120, what="node 0 to catch up", interval=0.5)
    for exp in exps:
        state = await stored_state(stack, exp)
        assert sorted(state.results) == list(range(6)) and sorted(state.issued) == list(range(6))
    stack.check()


async def test_rolling_restart_of_every_node_mid_experiment(make_stack) -> None:
    stack = await make_stack(runners=2, cluster=3, schedulers=2)
    async with watching(stack) as watch:
        exp = await watch.submit(tweak("rolling", [2.0, 3.0], max_trials=30, parallelism=2))
        outcome = watch.outcomes[exp]
        await watch.until(lambda: len(outcome.trials) >= 1, "a first result")
        for index in range(3):  # one node after the other, each back and caught up before the next
            assert outcome.completed is None, "the restarts must happen mid-experiment"
            await asyncio.to_thread(stack.restart_node, index)
            await until(lambda: replicas_current(stack), timeout=120, what=f"node {index} to catch up", interval=0.5)
        exact(await watch.done(exp), 30)
    stack.check()


async def _owner(kv, exp_id: str) -> str | None:
    try:
        return (await kv.get(lease_key(exp_id))).value.decode()
    except KeyNotFoundError:
        return None


def _label_of(stack, owner: str) -> str:
    pid = int(owner.split("-")[-2])
    return next(s.name for s in stack.services if s.process.pid == pid)


async def test_sigkill_the_owning_scheduler_another_takes_over(make_stack) -> None:
    stack = await make_stack(runners=2, cluster=3, schedulers=3)
    async with watching(stack) as watch:
        js = watch.nc.jetstream()
        leases = await js.key_value(Bucket.SCHEDULER_LEASES.value)
        dispatched: list[tuple[float, TrialRequested]] = []

        async def on_trial(msg) -> None:
            dispatched.append((time.monotonic(), TrialRequested.model_validate_json(msg.data)))

        await watch.nc.subscribe(all_of(Subject.TRIAL_REQUESTED), cb=on_trial)
        exp = await watch.submit(tweak("failover", [0.5, 0.7], max_trials=10, parallelism=2))
        outcome = watch.outcomes[exp]
        await watch.until(lambda: len(outcome.trials) >= 3, "three results")
        owner = await _owner(leases, exp)
        assert owner is not None
        label = _label_of(stack, owner)
        issued_before = max(r.number for _, r in dispatched)
        killed = time.monotonic()
        os.kill(stack.service(label).process.pid, signal.SIGKILL)
        assert await wait_exit(stack, label) == -signal.SIGKILL

        async def taken_over() -> bool:
            new = await _owner(leases, exp)
            return new is not None and new != owner

        await until(taken_over, timeout=60, what="another scheduler to hold the lease", interval=0.2)
        new_label = _label_of(stack, await _owner(leases, exp))
        assert new_label != label
        await watch.until(
            lambda: any(r.number > issued_before and t > killed for t, r in dispatched) or outcome.completed is not None,
            "a trial dispatched by the new owner",
        )
        after = [t for t, r in dispatched if r.number > issued_before and t > killed]
        failover = (after[0] if after else time.monotonic()) - killed
        print(f"failover: owner {label} killed -> next trial by {new_label} in {failover:.1f}s (bound {FAILOVER_BOUND_S:.0f}s)")
        assert failover < FAILOVER_BOUND_S
        exact(await watch.done(exp), 10)
    # Every trial number dispatched is one the state issued: no number with two sets of params.
    params = {}
    for _, r in dispatched:
        assert params.setdefault(r.number, r.params) == r.params


async def test_ten_experiments_spread_across_three_schedulers(make_stack) -> None:
    stack = await make_stack(runners=2, cluster=3, schedulers=3)
    async with watching(stack) as watch:
        js = watch.nc.jetstream()
        leases = await js.key_value(Bucket.SCHEDULER_LEASES.value)
        history: dict[str, list[str | None]] = {}  # experiment -> lease owners in order (None: released)
        watcher = await leases.watch("experiment.>")

        async def record_owners() -> None:
            async for entry in watcher:
                if entry is not None:
                    owner = entry.value.decode() if entry.value and entry.operation is None else None
                    history.setdefault(entry.key.removeprefix("experiment."), []).append(owner)

        task = asyncio.create_task(record_owners())
        exps = [await watch.submit(tweak(f"ten-{i}", [0.1, 0.2], max_trials=3, parallelism=1)) for i in range(10)]
        for exp in exps:
            exact(await watch.done(exp), 3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await watcher.stop()
    by_scheduler: dict[str, int] = {}
    for exp in exps:
        owners = history.get(exp, [])
        assert owners and owners[0] is not None, owners
        # One owner at a time: the lease changes hands only after it was released (no scheduler died here).
        for before, after in zip(owners, owners[1:]):
            assert before is None or after is None or before == after, owners
        by_scheduler[owners[0]] = by_scheduler.get(owners[0], 0) + 1
    print(f"experiments per scheduler: {sorted(by_scheduler.values())}")
    assert len(by_scheduler) >= 2  # shared, not all on one scheduler
