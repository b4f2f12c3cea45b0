"""A 50 MB+ model through promote, compare-with-production, serve and rollback, on the real local stack.

Object-level tests (``tests/runtime/test_large_objects.py``) show that every identity can read
50 MB objects; this is the user's story with models that size, every service its own process:

1. A first experiment tunes extra trees with one random feature per split (``max_features: 1``,
   weak but huge: fully grown trees on noisy labels) on an uploaded CSV. Its model's skops
   artifact is over 50 MiB in the artifacts store; it is promoted as revision 1 and a real
   ``tweakline serve`` loads it and answers ``/predict``.
2. A second experiment tunes extra trees that see every feature (clearly better, and over 50 MiB
   too). The evaluator loads the 50 MiB production model, scores it on the same held-out rows and
   compares: the decision carries production's revision, metrics and the paired comparison. It
   passes the gate and is promoted; the server swaps to revision 2.
3. ``tweakline rollback --to 1`` hash-checks revision 1's 50 MiB model and puts it back; the
   server serves revision 1 again, with revision 1's model hash.

Requests go to the server throughout both swaps, and none fails while a 50 MiB model loads
beside the live one. About a minute of CPU (53-75 s wall on a shared 2-core machine, 3.5 min
at a load average of 12): trees on ~3,000 rows fit in about a second; most of it is the stack,
skops and the ~60 MB transfers.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.e2e.stories import run_story
from tests.factories import tweak_dict
from tests.model_server.serving import RunningServer, hammer, start_server_on
from tests.waiting import until
from tweakline.client.follow import Outcome, follow, submit
from tweakline.client.submission import disk_reader, upload_datasets
from tweakline.proto.messages import Decision, DeploymentStatus, EvaluationCompleted, Source
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Bucket
from tweakline.proto.tweakfile import TweakFile
from tweakline.runtime.bus import connect
from tweakline.stack.local import LocalStack

pytestmark = pytest.mark.e2e

RELEASE = "big-forest"
MIB = 1024 * 1024
CLASSES, FEATURES, ROWS = 10, 10, 4000


def noisy_csv() -> bytes:
    """10 classes read off the first of 10 features, 30% of labels random: trees grow to one leaf per few rows.

    About 3,000 training rows make ~5,500 nodes per weak tree and ~2,500 per strong one, at 144
    bytes a node (the node record and 10 class fractions) in the skops file.
    """
    rng = np.random.default_rng(0)
    X = rng.normal(size=(ROWS, FEATURES)).round(5)
    y = np.clip(((X[:, 0] + 2.5) / 5 * CLASSES).astype(int), 0, CLASSES - 1)
    noisy = rng.random(ROWS) < 0.3
    y[noisy] = rng.integers(0, CLASSES, int(noisy.sum()))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([f"f{i}" for i in range(FEATURES)] + ["label"])
    writer.writerows([*row, int(label)] for row, label in zip(X.tolist(), y.tolist(), strict=True))
    return out.getvalue().encode()


def forest(name: str, fixed: dict) -> TweakFile:
    """Extra trees on the CSV, two trials (one per split criterion) in parallel, deployed to ``RELEASE``."""
    return TweakFile.model_validate(
        tweak_dict(
            name,
            dataset={"source": "csv:noisy.csv", "target": "label", "test_size": 0.25, "seed": 0},
            model={"estimator": "sklearn.ensemble.ExtraTreesClassifier", "fixed": fixed},
            search={"algorithm": "grid", "space": {"criterion": {"type": "categorical", "choices": ["gini", "entropy"]}}},
            objective={"metric": "accuracy", "cv": 2},
            budget={"max_trials": 2, "parallelism": 2},
            gate={"thresholds": {"accuracy": 0.2}, "beat_production_by": 0.05},
            # Latency is not what this story judges: a ~60 MiB forest answers in ~70 ms idle and
            # several times that on a shared 2-core machine. The post-promotion watch's latency
            # verdict (p95 of its first 20 requests) rolled revision 2 back by itself in one run
            # (500 ms vs 100 ms) before the manual rollback; tests/e2e/test_watch_rollback.py owns the watch.
            deploy={"target": "local", "release": RELEASE, "verify": {"max_latency_ms": 10000}, "watch": {"enabled": False}},
        )
    )


WEAK = forest("big-weak", {"n_estimators": 75, "max_features": 1})
STRONG = forest("big-strong", {"n_estimators": 160, "max_features": 1.0})
PREDICT = {"rows": [{f"f{i}": float(v) for i, v in enumerate(row)} for row in np.linspace(-2, 2, 5 * FEATURES).reshape(5, -1)]}


def test_a_50_mb_model_is_promoted_compared_served_and_rolled_back(tmp_path: Path) -> None:
    (tmp_path / "noisy.csv").write_bytes(noisy_csv())
    run_story(tmp_path, _story)


async def _story(stack: LocalStack, state: Path, tmp_path: Path) -> None:
    nc = await connect(stack.settings_for(Identity.ADMIN), "test")
    js = nc.jetstream(timeout=60)
    artifacts = await js.object_store(Bucket.ARTIFACTS.value)
    server: RunningServer | None = None
    stop = asyncio.Event()  # ends the requests sent to the server

    async def run(tweak: TweakFile) -> Outcome:
        tweak, _ = await upload_datasets(tweak, js, disk_reader(tmp_path))
        exp_id = await submit(nc, tweak, Source(trigger="test"))
        return await follow(nc, Outcome(experiment_id=exp_id, tweak=tweak), timeout=300, alive=stack.check)

    async def stored_size(evaluation: EvaluationCompleted) -> int:
        info = await artifacts.get_info(evaluation.artifact.name)
        assert info.digest == f"SHA-256={_b64(evaluation.artifact.sha256)}"
        return info.size

    async def predicts(revision: int) -> None:
        answer = await server.client.post("/predict", json=PREDICT)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["revision"] == revision and len(body["predictions"]) == 5, body
        assert {int(p) for p in body["predictions"]} <= set(range(CLASSES))

    try:
        # 1. The first 50 MiB model is promoted and served.
        first = await run(WEAK)
        ev1 = first.evaluation
        assert ev1.decision is Decision.PROMOTE, ev1.reasons
        assert ev1.comparison is None and "no model in production" in " ".join(ev1.reasons)
        size1 = await stored_size(ev1)
        assert size1 >= 50 * MIB, f"revision 1's artifact is only {size1 / MIB:.1f} MiB"
        assert first.deployment.status is DeploymentStatus.DEPLOYED and first.deployment.revision == 1

        server = start_server_on(stack.url, state, RELEASE, tmp_path, timeout=120)  # a loaded machine
        served = await server.wait_for_revision(1, timeout=120)
        assert served["sha256"] == ev1.artifact.sha256
        await predicts(1)
        # Requests throughout both swaps: none may fail while a 50 MiB model loads beside the live one.
        answers: list[tuple[int, int | None]] = []
        # A few requests a second (each ~70 ms of a core on a 60 MiB forest): every revision is live for
        # seconds here, and a tighter loop took a core from the evaluator scoring the other 50 MiB model.
        load = asyncio.create_task(hammer(server, stop, PREDICT, pause=0.2, seen=answers))

        # 2. The second 50 MiB model is compared with the 50 MiB production model, promoted and served.
        second = await run(STRONG)
        ev2 = second.evaluation
        assert ev2.decision is Decision.PROMOTE, ev2.reasons
        size2 = await stored_size(ev2)
        assert size2 >= 50 * MIB, f"revision 2's artifact is only {size2 / MIB:.1f} MiB"
        assert ev2.production_revision == 1
        # Production scored on the same held-out rows as when it was judged: the evaluator loaded it.
        assert ev2.production_metrics["accuracy"] == pytest.approx(ev1.candidate_metrics["accuracy"])
        c = ev2.comparison
        assert c is not None and c.test == "mcnemar-midp" and c.supported and c.p_value < 0.001
        assert c.production == pytest.approx(ev1.candidate_metrics["accuracy"])
        assert c.candidate == pytest.approx(ev2.candidate_metrics["accuracy"])
        assert c.difference > 0.05 and c.n >= 900 and c.excluded == 0
        assert second.deployment.status is DeploymentStatus.DEPLOYED and second.deployment.revision == 2
        assert "post-deploy check passed" in second.deployment.message  # the served 50 MiB model, scored live
        served = await server.wait_for_revision(2, timeout=120)
        assert served["sha256"] == ev2.artifact.sha256 != ev1.artifact.sha256
        await predicts(2)
        await until(lambda: answers and answers[-1][1] == 2, "the requests to reach revision 2", timeout=60)

        # 3. Rollback to revision 1: its 50 MiB model is hash-checked and served again.
        env = {"TWEAKLINE_STATE_DIR": str(state), "COLUMNS": "250"}
        back = await asyncio.to_thread(run_cli, "rollback", RELEASE, "--to", "1", "--reason", "drill", "--json", env=env)
        assert back.code == 0, back.stderr
        assert back.json() == {"release": RELEASE, "revision": 1, "previous": 2}
        served = await server.wait_for_revision(1, timeout=120)
        assert served["sha256"] == ev1.artifact.sha256
        await predicts(1)
        await until(lambda: answers and answers[-1][1] == 1, "the requests to reach revision 1 again", timeout=60)
        stop.set()
        seen = await load
        assert {code for code, _ in seen} == {200}, [s for s in seen if s[0] != 200][:5]
        revisions = [rev for _, rev in seen]
        assert [b for a, b in zip(revisions, revisions[1:]) if a != b] == [2, 1]
    finally:
        stop.set()
        if server is not None:
            await server.close()
        await nc.close()


def _b64(sha256_hex: str) -> str:
    """The object store's digest spelling (URL-safe base64) of a hex SHA-256."""
    return base64.urlsafe_b64encode(bytes.fromhex(sha256_hex)).decode()
