"""A trainer's trial through the runner's training child: resources honoured, failures named."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factories import make_spec
from tweakline.proto.messages import TrialRequested, TrialStatus
from tweakline.trial_runner.worker import TrialWorker, WorkerConfig, trial_memory_mb, trial_threads

CODE = Path(__file__).parents[1] / "ml" / "trainer_code"


def request(callable_: str, resources: dict | None = None, steps: int = 1) -> TrialRequested:
    spec = make_spec(
        model={"trainer": {"callable": callable_, "code": str(CODE), "steps": steps}},
        search={"space": {"C": {"type": "float", "low": 0.01, "high": 10.0}}},
        **({"resources": resources} if resources else {}),
    )
    return TrialRequested(experiment_id="exp", trial_id="exp-0", number=0, params={"C": 1.0}, spec=spec, resources=spec.resources)


def test_resources_set_threads_and_the_smaller_memory_limit() -> None:
    asked = request("good.py:fit", {"threads": 3, "memory_mb": 500, "pool": "gpu"})
    assert asked.resources is not None and asked.resources.pool == "gpu"
    assert trial_threads(asked, 1) == 3
    assert trial_memory_mb(asked, 4096) == 500
    assert trial_memory_mb(asked, 256) == 256
    plain = request("good.py:fit")
    assert trial_threads(plain, 2) == 2 and trial_memory_mb(plain, 4096) == 4096


@pytest.fixture
async def worker():
    w = TrialWorker(WorkerConfig(memory_limit_mb=4096))
    yield w
    await w.close()


async def test_a_trainer_trains_in_the_child_and_reports_its_steps(worker) -> None:
    seen: list[tuple[int, float]] = []
    outcome = await worker.run(request("good.py:fit", steps=2), on_fold=lambda i, v: seen.append((i, v)), timeout=600)
    assert outcome.status is TrialStatus.OK, outcome.error
    assert [i for i, _ in seen] == [0, 1]
    assert outcome.fold_scores == [v for _, v in seen]


async def test_the_trials_own_memory_limit_stops_a_greedy_trainer(worker) -> None:
    outcome = await worker.run(request("bad.py:greedy", {"memory_mb": 400}), timeout=600)
    assert outcome.status is TrialStatus.FAILED
    assert "over the trial's limit of 400 MiB" in (outcome.error or ""), outcome.error
    assert "spec.resources.memory_mb" in (outcome.error or "")
