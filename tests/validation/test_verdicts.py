"""Passed deep checks remembered per user (`tweakline run` and its stack's scheduler only).

What must hold: a pass of an identical spec under the same allow-list is reused (scikit-learn's
checks do not run again); a refusal is never remembered; what the key cannot cover (a file on
disk, a URL, a code trainer) is never cached; an entry anyone else could have written is ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import tweakline.validation as validation
from tests.factories import make_tweak
from tweakline.runtime.settings import Settings
from tweakline.validation import problems_of
from tweakline.validation.verdicts import CheckCache, check_cache_of, verdict_key

ALLOWED = ["sklearn."]


@pytest.fixture
def deep_calls(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every call of the deep (scikit-learn) checks, which still run."""
    calls: list[object] = []
    real = validation.spec_problems

    def counting(spec, allowed, base_dir):  # type: ignore[no-untyped-def]
        calls.append(spec)
        return real(spec, allowed, base_dir)

    monkeypatch.setattr(validation, "spec_problems", counting)
    return calls


def test_a_passed_check_is_reused_for_the_same_spec_and_allow_list(tmp_path: Path, deep_calls: list[object]) -> None:
    cache = CheckCache(tmp_path)
    tweak = make_tweak()
    assert problems_of(tweak, ALLOWED, verdicts=cache) == []
    assert len(deep_calls) == 1
    assert problems_of(tweak, ALLOWED, verdicts=cache) == []
    assert len(deep_calls) == 1, "the recorded pass was not reused"
    # Another allow-list is another check; so is another spec.
    assert problems_of(tweak, ["sklearn.svm."], verdicts=cache) == []
    other = make_tweak(search={"space": {"C": {"type": "float", "low": 1e-2, "high": 1e2, "log": True}}})
    assert problems_of(other, ALLOWED, verdicts=cache) == []
    assert len(deep_calls) == 3
    # Without a cache (a platform's scheduler, `tweakline validate`), every check runs.
    assert problems_of(tweak, ALLOWED) == []
    assert len(deep_calls) == 4


def test_a_refused_spec_is_checked_every_time(tmp_path: Path, deep_calls: list[object]) -> None:
    cache = CheckCache(tmp_path)
    tweak = make_tweak(model={"estimator": "sklearn.svm.SVC", "fixed": {"nonsense": 1}})
    for attempt in (1, 2):
        problems = problems_of(tweak, ALLOWED, verdicts=cache)
        assert [p.path for p in problems] == ["spec.model.fixed.nonsense"], problems
        assert len(deep_calls) == attempt
    checks = tmp_path / "checks"
    assert not checks.exists() or not any(checks.iterdir()), "a refusal was recorded"


@pytest.mark.parametrize(
    "sections",
    [
        {"dataset": {"source": "csv:/data/train.csv", "target": "y"}},
        {"dataset": {"source": "https://example.org/train.csv", "target": "y"}},
        {"model": {"trainer": {"callable": "train.py:fit"}}},
    ],
    ids=["csv-file", "url", "code-trainer"],
)
def test_what_the_key_cannot_cover_is_never_cached(sections: dict) -> None:
    try:
        tweak = make_tweak(**sections)
    except ValueError as exc:  # the factory's schema moved on: say so rather than pass
        pytest.fail(f"the test's spec no longer parses: {exc}")
    assert verdict_key(tweak.spec, ALLOWED) is None


def test_entries_are_private_and_one_others_could_write_is_ignored(tmp_path: Path, deep_calls: list[object]) -> None:
    cache = CheckCache(tmp_path)
    tweak = make_tweak()
    assert problems_of(tweak, ALLOWED, verdicts=cache) == []
    key = verdict_key(tweak.spec, ALLOWED)
    assert key is not None
    entry = tmp_path / "checks" / key
    assert entry.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "checks").stat().st_mode & 0o077 == 0
    assert cache.passed(tweak.spec, ALLOWED)

    os.chmod(entry, 0o666)  # anyone could have written it
    assert not cache.passed(tweak.spec, ALLOWED)
    os.chmod(entry, 0o600)
    os.chmod(tmp_path / "checks", 0o777)  # anyone could have put it there
    assert not cache.passed(tweak.spec, ALLOWED)
    os.chmod(tmp_path / "checks", 0o700)
    entry.write_text("not the key")
    assert not cache.passed(tweak.spec, ALLOWED)
    entry.unlink()
    entry.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text(key)
    assert not cache.passed(tweak.spec, ALLOWED), "an entry that is a link was trusted"


def test_only_settings_that_ask_for_it_get_a_cache(tmp_path: Path) -> None:
    assert check_cache_of(Settings()) is None
    cache = check_cache_of(Settings(check_cache=True, cache_dir=tmp_path))
    assert cache is not None and cache.directory == tmp_path / "checks"
