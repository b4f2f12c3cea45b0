"""Node loss and scheduler failover on a real 3-node JetStream cluster (R3 streams, buckets, stores).

Every service is a process of a local stack whose nats-servers form one cluster on loopback
with mTLS on client and route connections. Faults are real: SIGKILL of a nats-server node or of
the scheduler that owns an experiment, and a rolling restart of every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from nats.js.errors import KeyNotFoundError, NotFoundError

from tests.conftest import REPO
from tests.fault.conftest import fault_settings, stored_state, tweak, wait_exit, watching
from tests.waiting import until
from tweakline.proto.messages import TrialRequested, TrialStatus
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import SCHEDULER_LEASE_TTL_S, Bucket, Stream, Subject, all_of, lease_key
from tweakline.runtime.bus import connect
from tweakline.scheduler.ownership import CLAIM_INTERVAL_S
from tweakline.stack.local import LocalStack

pytestmark = pytest.mark.fault

# The stated bound on failover (owner SIGKILLed -> its experiment's next trial dispatched by
# another scheduler): the lease's TTL, one claim round, and slack for the server's expiry timer
# and a loaded 2-core machine.
FAILOVER_BOUND_S = SCHEDULER_LEASE_TTL_S + 2 * CLAIM_INTERVAL_S + 7.0


@pytest.fixture(scope="module")
def cluster_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """One 3-node cluster with three schedulers and two runners for the whole module.

    Starting a cluster stack is the expensive part (three nats-servers, eight processes); every test
    here leaves it as it found it (a killed node or scheduler is started again and caught up before
    the test ends), and :func:`stack` checks that before each test.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        stack = LocalStack(
            tmp_path_factory.mktemp("cluster") / "state", runners=2, settings=fault_settings(), cluster=3, schedulers=3
        )
        # Nodes are restarted on one thread that lives as long as the stack: a nats-server gets
        # SIGTERM when the thread that started it ends (PR_SET_PDEATHSIG), so restarting one from a
        # test loop's to_thread worker killed the whole cluster when that loop closed.
        stack.control = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cluster-control")
        try:
            stack.start()
            yield stack
        finally:
            stack.stop(grace=5.0)
            stack.control.shutdown()


async def on_control_thread(stack, fn, *args):
    """Run ``fn(*args)`` (a node start or restart) on the stack's long-lived control thread."""
    return await asyncio.get_running_loop().run_in_executor(stack.control, fn, *args)


@pytest.fixture
async def stack(cluster_stack: LocalStack) -> LocalStack:
    """The shared cluster stack, whole: every node and service running, every stream's replicas current."""
    for index, node in enumerate(cluster_stack.cluster.nodes):
        if node.process is None or node.process.poll() is not None:  # a test before failed mid-fault
            await on_control_thread(cluster_stack, cluster_stack.restart_node, index)
    for service in list(cluster_stack.services):
        if not service.alive():
            cluster_stack.respawn(service.name)
    await caught_up(cluster_stack, "every stream's replicas current")
    return cluster_stack


def exact(outcome, max_trials: int) -> None:
    """The experiment completed with exactly ``max_trials`` results, each once, and a decision."""
    assert outcome.completed is not None and outcome.evaluation is not None
    numbers = [t.number for t in outcome.completed.trials]
    assert sorted(numbers) == list(range(max_trials)), numbers  # none lost, none counted twice
    assert all(t.status is TrialStatus.OK for t in outcome.completed.trials)
    assert outcome.evaluation.decision is not None


# Every stream the stack has: the event streams and those behind the key-value buckets and object
# stores (a bucket without a leader after a node restart times out the next test's first request).
OBJECT_STORES = {Bucket.ARTIFACTS, Bucket.DATASETS}
ALL_STREAMS = [s.value for s in Stream] + [f"{'OBJ' if b in OBJECT_STORES else 'KV'}_{b.value}" for b in Bucket]


async def replicas_current(stack) -> bool:
    """Whether every stream, buckets' included, has a leader and all three replicas current.

    Bounded, and quiet about a connection that breaks while a node restarts (closing it can hang or
    raise from inside asyncio's TLS transport): the caller polls it until a deadline.
    """

    async def check() -> bool:
        nc = await connect(stack.settings_for(Identity.ADMIN), "fault-test-health", max_reconnect_attempts=0)
        try:
            js = nc.jetstream()
            names = {info.config.name for info in await js.streams_info()} | set(ALL_STREAMS)
            for name in sorted(names):
                try:
                    info = await js.stream_info(name)
                except NotFoundError:
                    if name in ALL_STREAMS:  # a bucket the stack creates lazily: not there yet is fine
                        continue
                    raise
                peers = info.cluster.replicas or [] if info.cluster else []
                if info.cluster is None or info.cluster.leader is None or len(peers) != 2 or not all(p.current for p in peers):
                    HEALTH["last"] = f"{name}: {info.cluster}"
                    return False
            return True
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)

    try:
        return await asyncio.wait_for(check(), 15)
    except Exception as failure:
        HEALTH["last"] = repr(failure)
        return False


# Why the last health check said no (for the failure message of a wait on it).
HEALTH: dict[str, str] = {}


async def caught_up(stack, what: str) -> None:
    """Wait until every stream's replicas are current, or fail saying what was last seen."""
    try:
        await until(lambda: replicas_current(stack), timeout=120, what=what, interval=0.5)
    except AssertionError as failure:
        raise AssertionError(f"{failure}; last seen: {HEALTH.get('last')}") from None


async def test_topology_is_replicated_three_times(stack) -> None:
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


async def test_sigkill_one_node_mid_experiment(stack) -> None:
    async with watching(stack) as watch:
        exps = [await watch.submit(tweak(f"node-loss-{i}", [0.4, 0.6], max_trials=6, parallelism=2)) for i in range(2)]
        await watch.until(lambda: all(len(watch.outcomes[e].trials) >= 2 for e in exps), "two results each")
        assert all(watch.outcomes[e].completed is None for e in exps)  # the kill below is mid-experiment
        stack.kill_node(0)  # the first node started: usually the meta leader and many stream leaders
        for exp in exps:
            exact(await watch.done(exp), 6)
    await on_control_thread(stack, stack.restart_node, 0)
    await caught_up(stack, "node 0 to catch up")
    for exp in exps:
        state = await stored_state(stack, exp)
        assert sorted(state.results) == list(range(6)) and sorted(state.issued) == list(range(6))
    stack.check()


async def test_rolling_restart_of_every_node_mid_experiment(stack, tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    async with watching(stack) as watch:
        exp = await watch.submit(tweak("rolling", [0.3, 0.5], max_trials=8, parallelism=2, hold=hold))
        outcome = watch.outcomes[exp]
        await watch.until(lambda: len(outcome.trials) >= 1, "a first result")
        # Keep it mid-experiment for as long as the restarts take: trials not yet fitting wait
        # (those fitting finish, at most two; so at least three of eight are still to come).
        hold.touch()
        for index in range(3):  # one node after the other, each back and caught up before the next
            assert outcome.completed is None, f"the restarts must happen mid-experiment: {watch.describe(exp)}"
            await on_control_thread(stack, stack.restart_node, index)
            await caught_up(stack, f"node {index} to catch up")
        hold.unlink()
        exact(await watch.done(exp), 8)
    stack.check()


async def _owner(kv, exp_id: str) -> str | None:
    try:
        return (await kv.get(lease_key(exp_id))).value.decode()
    except KeyNotFoundError:
        return None


def _label_of(stack, owner: str) -> str:
    pid = int(owner.split("-")[-2])
    return next(s.name for s in stack.services if s.process.pid == pid)


async def test_sigkill_the_owning_scheduler_another_takes_over(stack) -> None:
    async with watching(stack) as watch:
        js = watch.nc.jetstream()
        leases = await js.key_value(Bucket.SCHEDULER_LEASES.value)
        dispatched: list[tuple[float, TrialRequested]] = []

        async def on_trial(msg) -> None:
            dispatched.append((time.monotonic(), TrialRequested.model_validate_json(msg.data)))

        await watch.nc.subscribe(all_of(Subject.TRIAL_REQUESTED), cb=on_trial)
        exp = await watch.submit(tweak("failover", [0.5, 0.7], max_trials=8, parallelism=2))
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
        exact(await watch.done(exp), 8)
    # Every trial number dispatched is one the state issued: no number with two sets of params.
    params = {}
    for _, r in dispatched:
        assert params.setdefault(r.number, r.params) == r.params


async def test_ten_experiments_spread_across_three_schedulers(stack) -> None:
    async with watching(stack) as watch:
        js = watch.nc.jetstream()
        leases = await js.key_value(Bucket.SCHEDULER_LEASES.value)
        # experiment -> its lease's history: (server time, owner; None: released)
        history: dict[str, list[tuple[float, str | None]]] = {}
        watcher = await leases.watch("experiment.>")

        async def record_owners() -> None:
            async for entry in watcher:
                if entry is not None:
                    owner = entry.value.decode() if entry.value and entry.operation is None else None
                    stamp = entry.created.timestamp() if entry.created else time.time()
                    history.setdefault(entry.key.removeprefix("experiment."), []).append((stamp, owner))

        task = asyncio.create_task(record_owners())
        exps = [await watch.submit(tweak(f"ten-{i}", [0.1, 0.2], max_trials=3, parallelism=1)) for i in range(10)]
        try:
            for exp in exps:
                exact(await watch.done(exp), 3)
        except AssertionError as failure:
            # Say who owned what when it failed (an experiment nobody picked up has no lease history).
            owners = {e: [o for _, o in history.get(e, [])] for e in exps}
            raise AssertionError(f"{failure}\nlease owners per experiment: {owners}") from failure
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await watcher.stop()
    by_scheduler: dict[str, int] = {}
    for exp in exps:
        entries = history.get(exp, [])
        assert entries and entries[0][1] is not None, f"{exp}: lease history {entries}"
        # One owner at a time: the lease passes to another scheduler only after it was released, or
        # after the server expired it (a TTL after its owner's last renewal: a renewal missed, which
        # the separate renewal loop makes rare but a starved process can still cause).
        for (t0, before), (t1, after) in zip(entries, entries[1:]):
            if before is not None and after is not None and before != after:
                assert t1 - t0 >= SCHEDULER_LEASE_TTL_S - 0.5, (
                    f"{exp}: {after} took the lease {t1 - t0:.1f}s after {before} renewed it "
                    f"(TTL {SCHEDULER_LEASE_TTL_S}s): two owners at once; history {entries}"
                )
        by_scheduler[entries[0][1]] = by_scheduler.get(entries[0][1], 0) + 1
    print(f"experiments per scheduler: {sorted(by_scheduler.values())}")
    assert len(by_scheduler) >= 2, f"all on one scheduler: {by_scheduler}"  # shared
