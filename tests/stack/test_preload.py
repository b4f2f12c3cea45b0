"""What the fork server preloads covers what the forked processes import: a module imported after
the fork is a private copy in every process that imports it (docs/benchmarks.md, memory)."""

from __future__ import annotations

import json
import subprocess
import sys

from tweakline.stack.forkserver import PRELOAD
from tweakline.stack.local import LocalStack
from tweakline.trial_runner.worker import TRAINING_MODULES


def test_the_training_zygote_imports_nothing_the_fork_server_did_not() -> None:
    preload = [*PRELOAD, *LocalStack.PRELOADED["trial-runner"]]
    code = (
        "import importlib, json, sys\n"
        f"for name in {preload!r}:\n"
        "    importlib.import_module(name)\n"
        "before = set(sys.modules)\n"
        f"for name in {list(TRAINING_MODULES)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_every_service_the_stack_forks_gets_the_same_preload() -> None:
    # One preload for all: a service forked before another's preload would import that one's modules itself.
    assert set(LocalStack.PRELOADED) == {"trial-runner", "deployer", "scheduler", "evaluator"}
    assert len(set(LocalStack.PRELOADED.values())) == 1
    assert {f"tweakline.{name.replace('-', '_')}.app" for name in LocalStack.PRELOADED} <= set(LocalStack.PRELOADED["deployer"])
