"""Text (categorical) feature columns: typed at load, one-hot encoded inside the model, the same in every step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests import factories
from tests.ml.tables_data import shop_rows, write_shop_csv
from tweakline.errors import DatasetError
from tweakline.ml import tables
from tweakline.ml.artifacts import dump_model, load_model
from tweakline.ml.datasets import DatasetCache, load_dataset
from tweakline.ml.encoding import ENCODER_STEP, text_columns
from tweakline.ml.training import run_trial
from tweakline.proto.messages import TrialStatus
from tweakline.proto.tweakfile import DatasetSpec

ALLOWED = ["sklearn."]


def shop_spec(folder: Path, **model: object):
    write_shop_csv(folder / "shop.csv", shop_rows())
    return factories.make_spec(
        dataset={"source": f"csv:{folder / 'shop.csv'}", "target": "y"},
        model={
            "estimator": "sklearn.linear_model.LogisticRegression",
            "pipeline": ["sklearn.impute.SimpleImputer", "sklearn.preprocessing.StandardScaler"],
            **model,
        },
        search={"space": {"C": {"type": "float", "low": 1e-3, "high": 10, "log": True}}},
        objective={"metric": "accuracy", "cv": 3},
    )


def test_a_text_column_is_encoded_in_the_trials_pipeline_and_in_the_saved_model(tmp_path: Path) -> None:
    spec = shop_spec(tmp_path, fixed={"standardscaler__with_mean": False})
    split = DatasetCache().get(spec.dataset)
    assert split.text_features == ["colour"] and split.X_train.dtype == object

    outcome = run_trial(split, spec, {"C": 5.0}, ALLOWED, seed=0)
    assert outcome.status is TrialStatus.OK, outcome.error
    assert outcome.score > 0.8  # the label decides most of the target: only an encoded colour gets there
    weak = run_trial(split, spec, {"C": 1e-3}, ALLOWED, seed=0)
    assert weak.status is TrialStatus.OK and weak.score < outcome.score

    # what the evaluator refits and the model server loads: the encoder travels inside the skops file
    from tweakline.evaluator.scoring import probe_set, refit_and_score

    refit = refit_and_score(split, spec, {"C": 5.0}, ALLOWED, "classification")
    assert refit.model.steps[0][0] == ENCODER_STEP and refit.metrics["accuracy"] > 0.8
    data, digest = dump_model(refit.model)
    loaded = load_model(data, digest)
    assert text_columns(loaded) == (1,)
    assert loaded.predict(split.X_test).tolist() == refit.model.predict(split.X_test).tolist()
    unseen = np.array([[0.5, "purple"], [0.5, None]], dtype=object)  # a label never trained on, and a missing one
    assert loaded.predict(unseen).shape == (2,)
    import json

    probe = json.loads(probe_set(split, 3))
    assert all(isinstance(row["colour"], str | None) and isinstance(row["size"], float) for row in probe["rows"])


def test_an_all_numeric_table_is_trained_exactly_as_before(tmp_path: Path) -> None:
    (tmp_path / "n.csv").write_text("a,b,y\n" + "".join(f"{i},{i % 7},{i % 2}\n" for i in range(60)))
    data = load_dataset(DatasetSpec(source="csv:n.csv", target="y"), tmp_path)
    assert data.X.dtype == np.float64 and data.categorical == ()


def test_text_values_are_bounded_and_a_typo_in_a_number_column_is_not_a_category(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = DatasetSpec(source="csv:t.csv", target="y")
    (tmp_path / "t.csv").write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(20)) + "1.5O,1\n")
    with pytest.raises(
        DatasetError, match=r"feature column 'x' is not numeric: line 22 has '1.5O' but 20 of its cells are numbers"
    ):
        load_dataset(spec, tmp_path)
    (tmp_path / "t.csv").write_text("x,y\n" + "".join(f"name{i},{i % 2}\n" for i in range(20)))
    monkeypatch.setattr(tables, "MAX_CATEGORIES", 10)
    with pytest.raises(DatasetError, match=r"text feature column 'x' has more than 10 distinct values \('name10' at line 12"):
        load_dataset(spec, tmp_path)
    (tmp_path / "t.csv").write_text("x,y\n" + "".join(f"{'w' * (300 if i == 3 else 2)},{i % 2}\n" for i in range(20)))
    with pytest.raises(DatasetError, match=r"text feature column 'x' has a value of 300 characters at line 5"):
        load_dataset(spec, tmp_path)
    monkeypatch.setattr(tables, "MAX_ROWS", 5)
    with pytest.raises(DatasetError, match="more than 5 data rows"):
        load_dataset(spec, tmp_path)
    monkeypatch.setattr(tables, "MAX_COLUMNS", 1)
    with pytest.raises(DatasetError, match="has 2 columns, more than the 1"):
        load_dataset(spec, tmp_path)


def test_a_trainer_is_told_plainly_that_it_gets_no_text_columns(tmp_path: Path) -> None:
    from tweakline.ml.trainers.trial import run_trainer_trial

    spec = shop_spec(tmp_path)
    spec = spec.model_copy(update={"model": factories.make_spec(model={"trainer": {"callable": "train.py:fit"}}).model})
    split = DatasetCache().get(spec.dataset)
    outcome = run_trainer_trial(split, spec, {}, code_dir=tmp_path)
    assert outcome.status is TrialStatus.FAILED
    assert "text feature columns (colour)" in outcome.error and "model.trainer.data: own" in outcome.error


@pytest.mark.parametrize("resource", [{"name": "n_estimators", "min": 3, "max": 27}, {"name": "fraction", "min": 0.2}])
def test_rungs_grow_the_encoded_model(tmp_path: Path, resource: dict[str, object]) -> None:
    write_shop_csv(tmp_path / "shop.csv", shop_rows())
    spec = factories.make_spec(
        dataset={"source": f"csv:{tmp_path / 'shop.csv'}", "target": "y"},
        model={"estimator": "sklearn.ensemble.RandomForestClassifier"},
        search={"space": {"max_depth": {"type": "int", "low": 1, "high": 5}}, "resource": resource, "pruner": "asha"},
        objective={"metric": "accuracy", "cv": 3},
    )
    outcome = run_trial(DatasetCache().get(spec.dataset), spec, {"max_depth": 4}, ALLOWED, seed=0)
    assert outcome.status is TrialStatus.OK, outcome.error
    assert len(outcome.rung_scores) >= 2 and min(outcome.rung_scores) > 0.8
