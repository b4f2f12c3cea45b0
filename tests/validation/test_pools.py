"""An unknown runner pool is refused at validation, naming the field, the value and the pools that exist."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.factories import tweak_dict
from tweakline.runtime.settings import Settings
from tweakline.validation import inspect

ALLOWED = ["sklearn."]


def test_an_unknown_pool_is_refused_with_the_field_the_value_and_the_pools() -> None:
    tweak, problems = inspect(tweak_dict(resources={"pool": "gpu"}), ALLOWED, pools=["small", "large"])
    assert tweak is not None
    assert [p.path for p in problems] == ["spec.resources.pool"]
    assert str(problems[0]) == "spec.resources.pool: no runner pool 'gpu' on this platform; expected one of: 'small', 'large'"


def test_a_known_pool_and_no_pool_are_accepted() -> None:
    assert inspect(tweak_dict(resources={"pool": "large"}), ALLOWED, pools=["small", "large"])[1] == []
    assert inspect(tweak_dict(resources={"threads": 2}), ALLOWED, pools=["small", "large"])[1] == []
    assert inspect(tweak_dict(), ALLOWED)[1] == []


def test_a_platform_without_pools_configured_has_the_default_pool_only() -> None:
    problems = inspect(tweak_dict(resources={"pool": "large"}), ALLOWED)[1]
    assert [str(p) for p in problems] == [
        "spec.resources.pool: no runner pool 'large' on this platform; expected one of: 'default'"
    ]


def test_the_pool_is_checked_with_the_other_problems_of_a_broken_file() -> None:
    # the structure is wrong elsewhere (an unknown key): the pool is still reported in the same pass
    document = tweak_dict(resources={"pool": "gpu"})
    document["spec"]["surprise"] = 1
    paths = [p.path for p in inspect(document, ALLOWED, pools=["default"])[1]]
    assert "spec.resources.pool" in paths and "spec.surprise" in paths


def test_the_platforms_pools_are_typed_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWEAKLINE_POOLS", "default, small,large")
    settings = Settings()
    assert settings.pools == ["default", "small", "large"] and settings.default_pool() == "default"
    monkeypatch.setenv("TWEAKLINE_POOLS", '["small", "large"]')
    assert Settings().default_pool() == "small"  # no 'default' pool: the first one
    for bad, said in (("small,small", "names a pool twice"), ("Large", "is not a pool name"), (",", "at least one")):
        monkeypatch.setenv("TWEAKLINE_POOLS", bad)
        with pytest.raises(ValidationError, match=said):
            Settings()
