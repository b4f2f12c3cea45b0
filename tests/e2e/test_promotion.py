"""Safe promotion on the real local stack: the statistical gate, the model server, post-deploy check and rollback.

One story on one release, with every service as its own process (LocalStack), a real
``tweakline serve`` following the release, and requests sent to it throughout:

1. a majority-class model is the first release (thresholds only);
2. a worse model is rejected, with the paired evidence;
3. the same model again (a gain of zero), and a model right on one more test row (a gain above
   the margin but not significant: within noise), are rejected, with the evidence;
4. a clearly better model is promoted, but its post-deploy check fails (a latency limit it
   cannot meet): it is rolled back automatically and the server serves the first model again;
5. a clearly better model with a normal check is promoted, verified and served;
6. ``tweakline rollback --to 1`` restores the first revision; ``tweakline history`` shows every step.
No request to the server fails during any of the swaps.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.e2e.stories import run_story
from tests.factories import make_tweak
from tests.model_server.serving import hammer, rows, start_server_on
from tests.waiting import until
from tweakline.client.follow import Outcome, follow, submit
from tweakline.proto.messages import Decision, DeploymentStatus, Source
from tweakline.proto.permissions import Identity
from tweakline.proto.tweakfile import TweakFile
from tweakline.runtime.bus import connect
from tweakline.stack.local import LocalStack

pytestmark = pytest.mark.e2e

RELEASE = "wine-gate"


def tweak(name: str, model: dict, space: dict, verify: dict | None = None) -> TweakFile:
    deploy = {"target": "local", "release": RELEASE}
    if verify:
        deploy["verify"] = verify
    return make_tweak(
        name,
        dataset={"source": "sklearn:wine", "test_size": 0.25, "seed": 0},
        model=model,
        search={"algorithm": "random", "seed": 0, "space": space},
        objective={"metric": "accuracy", "cv": 2},
        budget={"max_trials": 1, "parallelism": 1},
        gate={"thresholds": {"accuracy": 0.2}, "beat_production_by": 0.01},
        deploy=deploy,
    )


MAJORITY = tweak(
    "majority",
    {"estimator": "sklearn.dummy.DummyClassifier"},
    {"strategy": {"type": "categorical", "choices": ["most_frequent"]}},
)
MINORITY = tweak(
    "minority",
    {"estimator": "sklearn.dummy.DummyClassifier", "fixed": {"constant": 2}},
    {"strategy": {"type": "categorical", "choices": ["constant"]}},
)
# Unscaled wine, gamma 0.1: right on one more test row than the majority class (+0.022, above the
# 0.01 margin) but McNemar's mid-p is 0.25: better only within noise.
NOISE = tweak(
    "svc-noise",
    {"estimator": "sklearn.svm.SVC", "fixed": {"gamma": 0.1}},
    {"C": {"type": "categorical", "choices": [1.0]}},
)
SVC = {"estimator": "sklearn.svm.SVC", "pipeline": ["sklearn.preprocessing.StandardScaler"]}
SVC_SPACE = {"C": {"type": "categorical", "choices": [10.0]}}
GOOD_BUT_SLOW = tweak("svc-slow", SVC, SVC_SPACE, verify={"max_latency_ms": 0.001, "timeout": "30s"})
GOOD = tweak("svc", SVC, SVC_SPACE)


async def run_experiment(nc, tweak_file: TweakFile, stack: LocalStack) -> Outcome:
    exp_id = await submit(nc, tweak_file, Source(trigger="test"))
    return await follow(nc, Outcome(experiment_id=exp_id, tweak=tweak_file), timeout=240, alive=stack.check)


def test_gate_server_post_deploy_check_and_rollbacks(tmp_path: Path) -> None:
    state = run_story(tmp_path, _story)
    # With the stack stopped, history still reads the state directory (nats-server started just for it).
    later = run_cli("history", RELEASE, "--json", env={"TWEAKLINE_STATE_DIR": str(state)})
    assert later.code == 0, later.stderr
    assert later.json()["current"] == 1 and len(later.json()["events"]) == 6


async def _story(stack: LocalStack, state: Path, tmp_path: Path) -> None:
    nc = await connect(stack.settings_for(Identity.ADMIN), "test")
    server = None
    try:
        first = await run_experiment(nc, MAJORITY, stack)
        assert first.evaluation.decision is Decision.PROMOTE, first.evaluation.reasons
        assert first.evaluation.comparison is None and "no model in production" in " ".join(first.evaluation.reasons)
        assert first.deployment.revision == 1 and "not verified" in first.deployment.message

        server = start_server_on(stack.url, state, RELEASE, tmp_path, timeout=120)  # a loaded machine
        await server.wait_for_revision(1)
        stop = asyncio.Event()
        answers: list[tuple[int, int | None]] = []
        # ~30 requests a second, not a busy loop: enough to see every swap (revision 2 is live for the
        # length of its post-deploy check), without taking a core from the services under test.
        load = asyncio.create_task(hammer(server, stop, {"rows": rows(5)}, pause=0.02, seen=answers))

        worse = await run_experiment(nc, MINORITY, stack)
        ev = worse.evaluation
        assert ev.decision is Decision.REJECT and worse.deployment is None
        c = ev.comparison
        assert c.test == "mcnemar-midp" and c.difference < 0 and not c.supported
        assert c.production == pytest.approx(first.evaluation.candidate_metrics["accuracy"])
        assert ev.production_revision == 1 and ev.production_metrics["accuracy"] == c.production
        assert ev.reasons[0].startswith("worse than production") and "McNemar mid-p" in ev.reasons[0]

        same = await run_experiment(nc, MAJORITY, stack)
        c = same.evaluation.comparison
        assert same.evaluation.decision is Decision.REJECT
        assert c.difference == 0 and c.discordant == {"candidate_only": 0, "production_only": 0} and c.p_value == 1.0
        assert "within noise" in same.evaluation.reasons[0] or "below the required margin" in same.evaluation.reasons[0]

        noise = await run_experiment(nc, NOISE, stack)
        c = noise.evaluation.comparison
        assert noise.evaluation.decision is Decision.REJECT and noise.deployment is None
        assert c.n == 38 and c.difference == pytest.approx(1 / c.n) and c.difference >= c.required_gain  # hash holdout
        assert c.discordant == {"candidate_only": 1, "production_only": 0} and c.p_value == pytest.approx(0.25)
        assert noise.evaluation.reasons[0].startswith("better than production only within noise (not significant)")

        slow = await run_experiment(nc, GOOD_BUT_SLOW, stack)
        assert slow.evaluation.decision is Decision.PROMOTE, slow.evaluation.reasons
        c = slow.evaluation.comparison
        assert c.supported and c.p_value < 0.001 and c.difference > 0.3
        dep = slow.deployment
        assert dep.status is DeploymentStatus.ROLLED_BACK and dep.revision == 1, dep.message
        assert "post-deploy check failed" in dep.message and "above the 0.001 ms limit" in dep.message
        await server.wait_for_revision(1)

        good = await run_experiment(nc, GOOD, stack)
        assert good.evaluation.decision is Decision.PROMOTE, good.evaluation.reasons
        assert good.deployment.status is DeploymentStatus.DEPLOYED and good.deployment.revision == 3
        assert "post-deploy check passed" in good.deployment.message
        await server.wait_for_revision(3)

        env = {"TWEAKLINE_STATE_DIR": str(state), "COLUMNS": "250"}
        back = await asyncio.to_thread(run_cli, "rollback", RELEASE, "--to", "1", "--reason", "drill", env=env)
        assert back.code == 0, back.stderr
        await server.wait_for_revision(1)
        # A request in flight at the swap may still be answered by the old revision: stop once one has seen it.
        await until(lambda: answers and answers[-1][1] == 1, "the requests to reach revision 1 again", timeout=60)
        stop.set()
        seen = await load
        assert {code for code, _ in seen} == {200}, [s for s in seen if s[0] != 200][:5]
        served = [rev for _, rev in seen]
        assert [b for a, b in zip(served, served[1:]) if a != b] == [2, 1, 3, 1]

        shown = await asyncio.to_thread(run_cli, "history", RELEASE, "--json", env=env)
        assert shown.code == 0, shown.stderr
        steps = [(e["action"], e["revision"], e["previous"]) for e in shown.json()["events"]]
        assert steps == [
            ("promoted", 1, None),
            ("promoted", 2, 1),
            ("auto_rolled_back", 1, 2),
            ("promoted", 3, 1),
            ("verified", 3, None),
            ("rolled_back", 1, 3),
        ]
        reasons = [e["reason"] for e in shown.json()["events"]]
        assert "post-deploy check failed" in reasons[2] and reasons[5] == "drill"
        table = await asyncio.to_thread(run_cli, "history", RELEASE, env=env)
        assert "auto_rolled_back" in table.stdout and "McNemar mid-p" in table.stdout
    finally:
        if server is not None:
            await server.close()
        await nc.close()
