"""Validation of /predict bodies: every refusal names the field and what was expected."""

from __future__ import annotations

import math

import pytest

from tests.conftest import run_cli
from tweakline.model_server.inputs import MAX_ROWS, InputError, rows_to_matrix

FEATURES = ("a", "b")


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({}, "rows", 'expected a JSON object {"rows"'),
        ({"rows": []}, "rows", "expected a non-empty list of objects, got list"),
        ({"rows": {"a": 1}}, "rows", "expected a non-empty list of objects, got dict"),
        ({"rows": [{"a": 1, "b": 2}], "extra": 1}, "extra", "unknown field; the body has only 'rows'"),
        ({"rows": [[1, 2]]}, "rows[0]", "expected an object mapping feature names to numbers, got list"),
        ({"rows": [{"a": 1}]}, "rows[0].b", "missing feature (expected all of: a, b)"),
        ({"rows": [{"a": 1, "b": 2, "c": 3}]}, "rows[0].c", "unknown feature; expected only: a, b"),
        ({"rows": [{"a": 1, "b": True}]}, "rows[0].b", "expected a number, got True"),
        ({"rows": [{"a": 1, "b": None}]}, "rows[0].b", "expected a number, got None"),
        ({"rows": [{"a": math.nan, "b": 1}]}, "rows[0].a", "expected a finite number, got nan"),
    ],
)
def test_refusals_name_the_field(body: object, field: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        rows_to_matrix(body, FEATURES)
    assert info.value.field == field
    assert message in str(info.value)


def test_rows_become_a_matrix_in_training_order() -> None:
    X = rows_to_matrix({"rows": [{"b": 2, "a": 1}, {"a": 3.5, "b": -1}]}, FEATURES)
    assert X.tolist() == [[1.0, 2.0], [3.5, -1.0]]


def test_too_many_rows() -> None:
    with pytest.raises(InputError, match=f"at most {MAX_ROWS} rows"):
        rows_to_matrix({"rows": [{"a": 1, "b": 2}] * (MAX_ROWS + 1)}, FEATURES)


def test_serve_without_a_bus_is_a_clear_error(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWEAKLINE_NATS_URL", raising=False)
    done = run_cli("serve", "wine", "--state-dir", str(tmp_path))
    assert done.code == 2
    assert "no NATS server to follow: no local stack is running in" in done.stderr
    assert "Traceback" not in done.stderr
