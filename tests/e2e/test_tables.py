"""A Parquet table with a text column on the real stack: 'tweakline run' tunes, promotes, and /predict takes labels."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli
from tests.ml.tables_data import shop_rows, write_shop_parquet
from tests.model_server.serving import start_server_on
from tweakline.stack.local import LocalStack

pytestmark = pytest.mark.e2e

RELEASE = "shop-colour"


def test_a_parquet_table_with_a_text_column_is_tuned_promoted_and_served(tmp_path: Path) -> None:
    write_shop_parquet(tmp_path / "shop.parquet", shop_rows(400))
    tweak = {
        "apiVersion": "tweakline/v1",
        "kind": "Experiment",
        "metadata": {"name": "shop-colour"},
        "spec": {
            "dataset": {"source": "parquet:shop.parquet", "target": "y"},
            "model": {
                "estimator": "sklearn.linear_model.LogisticRegression",
                "pipeline": ["sklearn.preprocessing.StandardScaler"],
            },
            "search": {"algorithm": "random", "space": {"C": {"type": "float", "low": 1e-3, "high": 10, "log": True}}},
            "objective": {"metric": "accuracy", "cv": 3},
            "budget": {"max_trials": 4, "parallelism": 2},
            "gate": {"thresholds": {"accuracy": 0.8}},
            "deploy": {"release": RELEASE},
        },
    }
    file = tmp_path / "shop.tweak.yaml"
    file.write_text(yaml.safe_dump(tweak))
    state = tmp_path / "state"
    result = run_cli("run", str(file), "--json", "--state-dir", str(state), "--runners", "1", timeout=900)
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    assert summary["decision"] == "promote", summary
    assert summary["trials"]["ok"] == 4, summary["trials"]
    assert summary["test_metrics"]["accuracy"] > 0.8  # only an encoded colour gets there
    assert summary["release"] == RELEASE and summary["revision"] == 1

    stack = LocalStack(state, runners=0)
    stack.start()
    server = None
    try:
        server = start_server_on(stack.url, state, RELEASE, tmp_path, timeout=120)
        asyncio.run(_predict(server))
    finally:
        if server is not None:
            server.process.kill()
        stack.stop()


async def _predict(server) -> None:
    try:
        version = await server.wait_for_revision(1, timeout=120)
        assert version["text_features"] == ["colour"]
        rows = [{"size": 1.0, "colour": "red"}, {"size": -1.0, "colour": "blue"}, {"size": 0.5, "colour": None}]
        response = await server.client.post("/predict", json={"rows": rows})
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][:2] == [1, 0]  # red is 1, a blue is 0: the label was read
    finally:
        await server.client.aclose()
