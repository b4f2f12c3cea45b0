"""`tweakline run` with a file checked before: the stack starts the scheduler alone, then the rest.

The first trial's path is nats-server, the topology and the scheduler; the caller submits while
:meth:`LocalStack.finish_start` forks the runners, the deployer and the evaluator (which wait for
the fork server's import of scikit-learn).
"""

from __future__ import annotations

import json
from pathlib import Path

from tweakline.stack.local import LocalStack


def _labels(stack: LocalStack) -> list[str]:
    return [service.name for service in stack.services]


def test_the_scheduler_starts_alone_and_finish_start_forks_the_rest(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "state", runners=2, scheduler_preload=False)
    try:
        stack.start()
        assert _labels(stack) == ["scheduler"] and stack.deferred
        stack.check()  # raises if a service died: the scheduler alone is a live stack
        listed = json.loads(stack.layout.info.read_text())
        assert list(listed["services"]) == ["scheduler"]

        stack.finish_start()
        assert _labels(stack) == ["scheduler", "trial-runner-0", "trial-runner-1", "deployer", "evaluator"]
        listed = json.loads(stack.layout.info.read_text())
        assert list(listed["services"]) == _labels(stack), "tweakline status sees every service"
        assert not stack.deferred
        stack.finish_start()  # idempotent
        assert len(stack.services) == 5
        stack.check()
    finally:
        stack.stop()
