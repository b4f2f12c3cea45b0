"""What each service process pays for at start: services that never train never import scikit-learn."""

from __future__ import annotations

import json
import subprocess
import sys

# Heavy libraries (2 CPU-s and ~80 MB together) a service imports only once it uses them: the trial
# runner's training child and the evaluator need them, the other processes only name things in them.
HEAVY = ("sklearn", "scipy", "optuna", "skops")
# In this order: those allowed more come last, as imports accumulate in the one process.
LIGHT_AT_START = {
    "deployer": HEAVY,
    "webhook": HEAVY,
    "console": HEAVY,
    "trial-runner": ("sklearn", "scipy", "skops"),  # Optuna's pruners judge early stopping; training is the child's
    "scheduler": ("sklearn", "scipy", "skops"),  # Optuna is its search engine
}


def test_services_that_do_not_train_start_without_scikit_learn() -> None:
    code = (
        "import json, sys\n"
        "from tweakline.cli.services import app_factory\n"
        "seen = {}\n"
        f"for name in {list(LIGHT_AT_START)!r}:\n"
        "    app_factory(name)\n"
        f"    seen[name] = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "print(json.dumps(seen))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    # Imports accumulate in one process: the first service that pulls a library in is the culprit.
    for name, forbidden in LIGHT_AT_START.items():
        assert not set(seen[name]) & set(forbidden), f"{name} imports {sorted(set(seen[name]) & set(forbidden))} at start"
