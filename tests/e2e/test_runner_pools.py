"""Runner pools on a real local stack: trials reach only the runners of their pool.

One stack with pools ``small=1,large=1`` (nats-server with mTLS, every service a process): an
experiment asking for ``resources.pool: large`` is run entirely by the large pool's runner, one
naming no pool entirely by the small pool's (the stack has no ``default`` pool, so its first pool
is the default), a submission naming a pool the stack does not have is refused by the scheduler,
and a pool's runner identity may not touch another pool's consumer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import nats.errors
import pytest

from tests.conftest import REPO, run_cli
from tests.fault.conftest import fault_settings, tweak, watching
from tests.waiting import until
from tweakline.proto.messages import ExperimentStatus, TrialStatus
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Stream, pool_consumer
from tweakline.proto.tweakfile import TweakFile
from tweakline.runtime.bus import connect
from tweakline.stack.local import LocalStack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pools_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The one stack of this module: a runner in pool ``small`` and one in pool ``large``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        stack = LocalStack(
            tmp_path_factory.mktemp("pools") / "state", runners={"small": 1, "large": 1}, settings=fault_settings()
        )
        try:
            stack.start()
            yield stack
        finally:
            stack.stop(grace=5.0)


def in_pool(name: str, pool: str | None, max_trials: int = 4) -> TweakFile:
    """The fault tests' tiny experiment (quick, CPU-light trials), asking for ``pool``."""
    base = tweak(name, [0.05, 0.1, 0.2], max_trials=max_trials, parallelism=2)
    if pool is None:
        return base
    document = base.model_dump(mode="json", exclude_unset=True)
    document["spec"]["resources"] = {"pool": pool}
    return TweakFile.model_validate(document)


def runner_pids(stack: LocalStack) -> dict[str, set[int]]:
    """The process ids of each pool's runners."""
    pids: dict[str, set[int]] = {}
    for service in stack.services:
        pool = stack.pool_of.get(service.name)
        if pool is not None:
            pids.setdefault(pool, set()).add(service.process.pid)
    return pids


async def test_trials_reach_only_the_runners_of_their_pool(pools_stack: LocalStack) -> None:
    pids = runner_pids(pools_stack)
    assert set(pids) == {"small", "large"} and all(len(p) == 1 for p in pids.values())
    async with watching(pools_stack) as watch:
        large = await watch.submit(in_pool("pool-large", "large"))
        unpooled = await watch.submit(in_pool("pool-none", None))
        for exp_id in (large, unpooled):
            outcome = await watch.done(exp_id)
            assert outcome.completed is not None and outcome.completed.status is ExperimentStatus.COMPLETED
            assert sorted(outcome.trials) == [0, 1, 2, 3], watch.describe(exp_id)
            assert all(t.status is TrialStatus.OK for t in outcome.trials.values())
        # TrialCompleted.runner is "<host>-<pid>" of the runner process that trained it
        ran_large = {int(t.runner.rsplit("-", 1)[1]) for t in watch.outcomes[large].trials.values()}
        ran_unpooled = {int(t.runner.rsplit("-", 1)[1]) for t in watch.outcomes[unpooled].trials.values()}
        assert ran_large == pids["large"], f"pool 'large' trials ran on {ran_large}; pools: {pids}"
        assert ran_unpooled == pids["small"], f"unpooled trials ran on {ran_unpooled}; pools: {pids}"

        # A submission that skipped the client's validation: the scheduler refuses the unknown pool.
        refused = await watch.submit(in_pool("pool-gpu", "gpu"))
        outcome = await watch.done(refused)
        assert outcome.completed is not None and outcome.completed.status is ExperimentStatus.FAILED
        said = outcome.completed.message or ""
        assert "spec.resources.pool: no runner pool 'gpu' on this platform; expected one of: 'small', 'large'" in said, said
        assert not outcome.trials


async def test_a_pools_runner_identity_may_not_take_another_pools_trials(pools_stack: LocalStack) -> None:
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc))

    settings = pools_stack.settings_for(Identity.TRIAL_RUNNER).model_copy(update={"runner_pool": "large"})
    nc = await connect(settings, "pools-test", error_cb=on_error, allow_reconnect=False, max_reconnect_attempts=0)
    try:
        js = nc.jetstream(timeout=3)
        own = await js.consumer_info(Stream.TRIALS.value, pool_consumer("large"))
        assert own.config.filter_subject == "tweakline.trials.requested.large.>"
        for other in ("small", "default"):
            # the server drops the request (no answer, not "not found") and reports the violation
            with pytest.raises(nats.errors.TimeoutError):
                await js.consumer_info(Stream.TRIALS.value, pool_consumer(other))
            wanted = f"$JS.API.CONSUMER.INFO.{Stream.TRIALS.value}.{pool_consumer(other)}".lower()
            await until(lambda w=wanted: any(w in v.lower() for v in violations), f"a permissions violation for {wanted}", 30)
    finally:
        await nc.close()


def test_status_shows_each_runners_pool(pools_stack: LocalStack) -> None:
    result = run_cli("status", "--state-dir", str(pools_stack.layout.root), "--json", timeout=120)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    pools = {name: proc.get("pool") for name, proc in report["stack"]["services"].items() if name.startswith("trial-runner")}
    assert sorted(pools.values()) == ["large", "small"], pools
    assert set(report["runners"]["pools"]) == {"small", "large"}
