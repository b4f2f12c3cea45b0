"""'tweakline submit --wait' against a running platform (the embedded stack), as a CI step runs it.

The csv dataset is uploaded by content once; the second submission finds it stored and sends
nothing, and the runners read it from the object store by hash.
"""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sklearn.datasets import load_wine

from tests.conftest import run_cli
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Bucket
from tweakline.runtime.bus import connect
from tweakline.stack.local import LocalStack

pytestmark = pytest.mark.e2e

TWEAK = """\
apiVersion: tweakline/v1
kind: Experiment
metadata: {{name: {name}}}
spec:
  dataset: {{source: "csv:data/wine.csv", target: cultivar, test_size: 0.25}}
  model:
    estimator: sklearn.linear_model.LogisticRegression
    pipeline: [sklearn.preprocessing.StandardScaler]
    fixed: {{max_iter: 500}}
  search:
    algorithm: random
    seed: 3
    space:
      C: {{type: float, low: 1.0e-2, high: 10, log: true}}
  objective: {{metric: accuracy, cv: 3}}
  budget: {{max_trials: 3, parallelism: 1, timeout: 3m}}
  gate:
    thresholds: {{{threshold}}}
  deploy: {{target: local, release: {name}}}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A running platform: nats-server with mTLS and every service, one runner."""
    local = LocalStack(tmp_path_factory.mktemp("platform"), runners=1)
    local.start()
    yield local
    local.stop()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A checkout with a csv dataset generated from scikit-learn's wine data."""
    data = load_wine()
    (tmp_path / "data").mkdir()
    with (tmp_path / "data" / "wine.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*data.feature_names, "cultivar"])
        for row, label in zip(data.data, data.target, strict=True):
            writer.writerow([*row, int(label)])
    return tmp_path


def _submit(stack: LocalStack, tweak: Path, *extra: str, env: dict[str, str] | None = None):
    return run_cli(
        "submit",
        str(tweak),
        "--wait",
        "--json",
        "--timeout",
        "240",
        "--nats-url",
        stack.url or "",
        "--tls-dir",
        str(stack.layout.pki / Identity.SUBMITTER.value),
        *extra,
        env=env,
        timeout=300,
    )


async def _stored_datasets(stack: LocalStack) -> list[str]:
    nc = await connect(stack.settings_for(Identity.ADMIN), "test")
    try:
        store = await nc.jetstream().object_store(Bucket.DATASETS.value)
        return [info.name for info in await store.list()]
    finally:
        await nc.close()


def test_submit_wait_exits_with_the_gate_code_and_uploads_a_dataset_once(stack: LocalStack, repo: Path) -> None:
    passing = repo / "wine.tweak.yaml"
    passing.write_text(TWEAK.format(name="wine-csv", threshold="accuracy: 0.5"))
    reports = repo / "reports"
    first = _submit(
        stack,
        passing,
        "--report-dir",
        str(reports),
        env={"BITBUCKET_COMMIT": "a" * 40, "BITBUCKET_REPO_FULL_NAME": "acme/models", "BITBUCKET_BRANCH": "main"},
    )
    assert first.code == 0, first.stderr
    result = first.json()
    assert result["decision"] == "promote" and result["trials"]["ok"] == 3
    [dataset] = result["datasets"]
    assert dataset["uploaded"] is True and dataset["location"].endswith("data/wine.csv")
    status = json.loads((reports / "build-status.json").read_text())
    assert status["state"] == "SUCCESSFUL" and status["key"] == "tweakline-wine"
    assert status["description"].startswith("accuracy ") and "promoted rev 1" in status["description"]
    assert "| accuracy (objective) |" in (reports / "report.md").read_text()

    # Same data, a gate it cannot pass: exit 1, and the dataset is found by hash, not re-sent.
    failing = repo / "strict.tweak.yaml"
    failing.write_text(TWEAK.format(name="wine-strict", threshold="log_loss: 0.000001"))
    second = _submit(stack, failing)
    assert second.code == 1, second.stderr
    again = second.json()
    assert again["decision"] == "reject"
    assert again["datasets"] == [dict(dataset, uploaded=False)]
    assert "already stored, not uploaded again" in second.stderr
    assert asyncio.run(_stored_datasets(stack)) == [f"sha256/{dataset['sha256']}"]


def test_submit_refuses_an_invalid_file_before_connecting(repo: Path) -> None:
    bad = repo / "bad.tweak.yaml"
    bad.write_text(TWEAK.format(name="wine-csv", threshold="accuracy: 0.5").replace("data/wine.csv", "data/missing.csv"))
    result = run_cli("submit", str(bad), "--nats-url", "tls://127.0.0.1:1", "--tls-dir", str(repo))
    assert result.code == 2
    assert "spec.dataset.source" in result.stderr and "missing.csv" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_in_a_pipeline_writes_the_same_reports(repo: Path) -> None:
    tweak = repo / "models" / "wine.tweak.yaml"
    tweak.parent.mkdir()
    tweak.write_text(TWEAK.format(name="wine-run", threshold="accuracy: 0.5").replace("data/wine.csv", "../data/wine.csv"))
    reports = repo / "reports"
    result = run_cli(
        "run", "models/wine.tweak.yaml", "--ephemeral", "--runners", "1", "--report-dir", str(reports), cwd=repo, timeout=300
    )
    assert result.code == 0, result.stderr
    status = json.loads((reports / "build-status.json").read_text())
    assert status["key"] == "tweakline-models-wine" and status["state"] == "SUCCESSFUL"
    assert json.loads((reports / "summary.json").read_text())["decision"] == "promote"
    assert "### tweakline · `wine-run` · ✅ promoted" in (reports / "report.md").read_text()
