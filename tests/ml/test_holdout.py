"""The holdout is stable when a dataset grows or is re-ordered: the grown-CSV case of ``bench.search``.

The benchmark's warm-start problem tunes on a 700-row csv and then on the same file grown to
1000 rows. With the old position-shuffled split (``train_test_split``) rows the first model
trained on move into the second run's test split, so comparing the two models there flatters
the first; with the hash-based holdout none do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from bench.search import generated_csv
from tweakline.ml.datasets import load_dataset, split_dataset
from tweakline.ml.holdout import HoldoutRule, digest, held_out, row_keys
from tweakline.proto.tweakfile import DatasetSpec


def rows_of(X: np.ndarray) -> set[bytes]:
    return {np.asarray(x, dtype=np.float64).tobytes() for x in X}


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> tuple[DatasetSpec, DatasetSpec]:
    directory = tmp_path_factory.mktemp("grown")
    small = DatasetSpec(source=f"csv:{generated_csv(directory, rows=700)}", target="label", test_size=0.25, seed=0)
    big = DatasetSpec(source=f"csv:{generated_csv(directory, rows=1000)}", target="label", test_size=0.25, seed=0)
    return small, big


def test_no_row_trained_on_before_the_csv_grew_is_a_test_row_after(grown: tuple[DatasetSpec, DatasetSpec]) -> None:
    small_spec, big_spec = grown
    small, big = load_dataset(small_spec), load_dataset(big_spec)
    before, after = split_dataset(small, small_spec), split_dataset(big, big_spec)
    assert rows_of(before.X_train).isdisjoint(rows_of(after.X_test))
    assert rows_of(before.X_test) <= rows_of(after.X_test)  # the old test rows are still test rows
    new_test = rows_of(after.X_test) - rows_of(before.X_test)
    assert new_test and new_test <= rows_of(big.X[700:])  # what was added is all that is new
    assert set(before.test_keys.tolist()) <= set(after.test_keys.tolist())


def test_the_old_split_would_have_mixed_them(grown: tuple[DatasetSpec, DatasetSpec]) -> None:
    """The split the holdout replaced: the first model's training rows land in the new test split."""
    small_spec, big_spec = grown
    small, big = load_dataset(small_spec), load_dataset(big_spec)

    def old_split(dataset, spec):
        return train_test_split(dataset.X, dataset.y, test_size=spec.test_size, random_state=spec.seed, stratify=dataset.y)

    old_train_before, *_ = old_split(small, small_spec)
    _, old_test_after, *_ = old_split(big, big_spec)
    leaked = rows_of(old_train_before) & rows_of(old_test_after)
    # about 0.25 * 0.75 * 700 rows: far from none
    assert len(leaked) > 50, len(leaked)


def test_reordering_the_rows_changes_nothing(grown: tuple[DatasetSpec, DatasetSpec]) -> None:
    small_spec, _ = grown
    dataset = load_dataset(small_spec)
    order = np.random.default_rng(1).permutation(dataset.n_samples)
    keys = row_keys(dataset.X, dataset.y)
    shuffled = row_keys(dataset.X[order], dataset.y[order])
    rule = HoldoutRule(test_size=0.25, seed=0)
    assert digest(keys[held_out(keys, rule)]) == digest(shuffled[held_out(shuffled, rule)])
    other_seed = HoldoutRule(test_size=0.25, seed=1)
    assert digest(keys[held_out(keys, rule)]) != digest(keys[held_out(keys, other_seed)])


def test_the_split_records_its_rule_and_rows(grown: tuple[DatasetSpec, DatasetSpec]) -> None:
    small_spec, _ = grown
    split = split_dataset(load_dataset(small_spec), small_spec)
    assert split.rule == HoldoutRule(test_size=0.25, seed=0)
    assert len(split.test_keys) == len(split.y_test) and len(split.train_keys) == len(split.y_train)
    assert 0.2 < len(split.y_test) / 700 < 0.3
    assert not set(split.test_keys.tolist()) & set(split.train_keys.tolist())


def test_a_larger_test_size_only_adds_test_rows(tmp_path: Path) -> None:
    """A row held out at test_size 0.2 is held out at 0.3 too (the same hash, a higher bar)."""
    X = np.arange(400, dtype=np.float64).reshape(200, 2)
    y = np.arange(200) % 2
    keys = row_keys(X, y)
    small, large = held_out(keys, HoldoutRule(0.2, 0)), held_out(keys, HoldoutRule(0.3, 0))
    assert small.sum() < large.sum() and not (small & ~large).any()
