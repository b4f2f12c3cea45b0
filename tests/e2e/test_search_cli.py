"""Search through 'tweakline run': warm start across pushes, and early stopping on rungs.

Two runs of the real command share a state directory (the JetStream store holds the lineage);
the second narrows the space, so its summary reports both reused and incompatible trials. The
rung example grows boosted trees in rungs and stops weak trials on small models.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import EXAMPLES, run_cli

pytestmark = pytest.mark.e2e

TWEAK = """
apiVersion: tweakline/v1
kind: Experiment
metadata: {{name: iris-warm}}
spec:
  dataset: {{source: "sklearn:iris"}}
  model: {{estimator: sklearn.svm.SVC}}
  search:
    algorithm: tpe
    seed: 3
    space:
      C: {{type: float, low: {low}, high: 100.0, log: true}}
  objective: {{metric: accuracy, cv: 3}}
  budget: {{max_trials: 8, parallelism: 2}}
"""


def test_second_run_of_a_lineage_reuses_compatible_trials_and_reports_the_rest(tmp_path: Path) -> None:
    state = tmp_path / "state"
    tweak = tmp_path / "iris.tweak.yaml"
    tweak.write_text(TWEAK.format(low=0.01))
    first = run_cli("run", str(tweak), "--json", "--state-dir", str(state), "--runners", "1")
    assert first.code == 0, first.stderr
    assert first.json()["warm_start"]["available"] == 0

    tweak.write_text(TWEAK.format(low=1.0))  # the next commit narrows C
    second = run_cli("run", str(tweak), "--json", "--state-dir", str(state), "--runners", "1")
    assert second.code in (0, 1), second.stderr
    report = second.json()["warm_start"]
    assert report["lineage"] == "local/iris-warm"
    assert report["available"] == 8
    assert report["reused"] + report["incompatible"] == 8
    assert report["reused"] >= 1
    if report["incompatible"]:
        assert report["reasons"] == {"parameter 'C' outside its new range or choices": report["incompatible"]}
    assert second.json()["trials"]["total"] == 8


def test_the_rung_example_stops_weak_trials_on_small_models_and_decides(tmp_path: Path) -> None:
    # The example as committed, with half its trials and 3 folds instead of 5 (the suite's time):
    # the rungs, the pruner and the resource are exactly the example's.
    doc = yaml.safe_load((EXAMPLES / "breast-cancer-gbc-rungs.tweak.yaml").read_text())
    budget = doc["spec"]["budget"]["max_trials"] = 12
    doc["spec"]["objective"]["cv"] = 3
    tweak = tmp_path / "rungs.tweak.yaml"
    tweak.write_text(yaml.safe_dump(doc))
    done = run_cli("run", str(tweak), "--json", "--ephemeral", "--runners", "2")
    assert done.code in (0, 1), done.stderr
    result = done.json()
    trials = result["trials"]
    assert trials["total"] == budget and trials["failed"] == 0
    assert trials["pruned"] >= 1, trials  # stopped at 11 or 33 trees
    assert trials["ok"] + trials["pruned"] == budget
    assert "n_estimators" not in result["best_params"]  # the resource is not a searched parameter
    assert result["test_metrics"]["accuracy"] >= 0.9  # the refit model has the whole 100 trees' quality
