"""/predict with text feature columns: the model's own encoder decides which inputs are labels."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from tests import factories
from tests.ml.tables_data import shop_rows, write_shop_parquet
from tests.model_server.serving import promote, start_server
from tweakline.evaluator.scoring import probe_set, refit_and_score
from tweakline.ml.datasets import DatasetCache


async def test_a_model_trained_on_a_text_column_answers_rows_with_labels(nats, tmp_path: Path) -> None:
    write_shop_parquet(tmp_path / "shop.parquet", shop_rows())
    spec = factories.make_spec(
        dataset={"source": f"parquet:{tmp_path / 'shop.parquet'}", "target": "y"},
        model={"estimator": "sklearn.ensemble.RandomForestClassifier", "fixed": {"n_estimators": 20}},
        search={"space": {"max_depth": {"type": "int", "low": 1, "high": 6}}},
        objective={"metric": "accuracy", "cv": 3},
    )
    split = DatasetCache().get(spec.dataset)
    refit = refit_and_score(split, spec, {"max_depth": 4}, ["sklearn."], "classification")
    release = f"txt-{uuid.uuid4().hex[:6]}"
    features = list(split.feature_names)
    assert await promote(nats, release, f"{release}-a", refit.model, features=features) == 1
    server = start_server(nats, release, tmp_path)
    try:
        version = await server.wait_for_revision(1)
        assert version["features"] == ["size", "colour"] and version["text_features"] == ["colour"]

        probe = json.loads(probe_set(split, 8))  # what the deployer's post-deploy check sends
        r = await server.client.post("/predict", json={"rows": probe["rows"]})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == refit.model.predict(split.X_test[:8]).tolist()

        rows = [{"size": 0.3, "colour": "red"}, {"size": 0.3, "colour": "purple"}, {"size": -1.0, "colour": None}]
        r = await server.client.post("/predict", json={"rows": rows})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 3  # an unseen label and a missing one are answered

        r = await server.client.post("/predict", json={"rows": [{"size": 0.3, "colour": 3}]})
        assert r.status_code == 422 and r.json()["field"] == "rows[0].colour"
        assert "expected a text label" in r.json()["error"]
        r = await server.client.post("/predict", json={"rows": [{"size": "big", "colour": "red"}]})
        assert r.status_code == 422 and r.json()["field"] == "rows[0].size" and "expected a number" in r.json()["error"]
        r = await server.client.post("/predict", json={"rows": [{"size": 0.3, "colour": "x" * 300}]})
        assert r.status_code == 422 and "at most 256 characters" in r.json()["error"]
    finally:
        await server.close()
