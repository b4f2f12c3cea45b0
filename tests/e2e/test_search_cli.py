"""Warm start through 'tweakline run': the second push of a lineage continues from the first.

Two runs of the real command share a state directory (the JetStream store holds the lineage);
the second narrows the space, so its summary reports both reused and incompatible trials.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli

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
