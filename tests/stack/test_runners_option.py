"""`--runners`: a number of default-pool runners, or pools with their runners; bad input is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli
from tests.factories import tweak_dict
from tweakline.errors import ConfigurationError
from tweakline.stack.runners import format_runners, parse_runners, runner_pools


def test_pools_with_their_runners_and_a_plain_number() -> None:
    assert parse_runners("small=2,large=1") == {"small": 2, "large": 1}
    assert parse_runners(" small = 2 , large=1 ") == {"small": 2, "large": 1}
    assert parse_runners("3") == {"default": 3}
    assert parse_runners(None) is None
    assert parse_runners(format_runners({"small": 2, "large": 1})) == {"small": 2, "large": 1}
    assert runner_pools(None, default=4) == {"default": 4}
    assert runner_pools(0, default=4) == {}  # a stack without runners (reports, rollbacks)


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("small=x", "the runners of pool 'small' is 'x' in 'small=x'; expected a whole number from 1"),
        ("=2", "'=2' in '=2' names no pool before '='"),
        ("small=2,small=1", "pool 'small' is given twice in 'small=2,small=1'; expected each pool once"),
        ("small", "'small' in 'small' has no '='"),
        ("Small=1", "pool 'Small' in 'Small=1' is not a pool name"),
        ("small=0", "the runners of pool 'small' is 0 in 'small=0'; expected 1 to 256"),
        ("0", "the number of runners is 0 in '0'; expected 1 to 256"),
    ],
)
def test_bad_runners_are_refused_naming_the_option_and_the_value(value: str, said: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_runners(value)
    assert str(caught.value).startswith("--runners: ") and said in str(caught.value)


def test_the_cli_refuses_bad_runners_before_starting_anything(tmp_path: Path) -> None:
    file = tmp_path / "t.tweak.yaml"
    file.write_text(yaml.safe_dump(tweak_dict()))
    for command in (["run", str(file), "--state-dir", str(tmp_path / "s")], ["up", "--state-dir", str(tmp_path / "s")]):
        result = run_cli(*command, "--runners", "small=x", timeout=120)
        assert result.code == 2, result.stderr
        said = " ".join(result.stderr.replace("│", " ").split())
        assert "--runners" in said and "the runners of pool 'small' is 'x'" in said, said
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "s" / "run" / "stack.json").exists()


def test_run_refuses_a_pool_its_runners_do_not_have(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "t.tweak.yaml"
    file.write_text(yaml.safe_dump(tweak_dict(resources={"pool": "gpu"})))
    result = run_cli("run", str(file), "--state-dir", str(tmp_path / "s"), "--runners", "small=1,large=1", timeout=120)
    assert result.code == 2
    said = " ".join(result.stderr.split())
    assert "spec.resources.pool: no runner pool 'gpu' on this platform; expected one of: 'small', 'large'" in said, said
    # `validate` checks the platform's pools where it is told them (TWEAKLINE_POOLS) ...
    refused = run_cli("validate", str(file), env={"TWEAKLINE_POOLS": "default,large"}, timeout=120)
    assert refused.code == 2
    said = " ".join(refused.stderr.split())
    assert "spec.resources.pool: no runner pool 'gpu' on this platform; expected one of: 'default', 'large'" in said, said
    assert run_cli("validate", str(file), env={"TWEAKLINE_POOLS": "default,gpu"}, timeout=120).code == 0
    # ... and otherwise leaves the pool to the platform (its scheduler refuses an unknown one)
    monkeypatch.delenv("TWEAKLINE_POOLS", raising=False)  # run_cli passes this environment on
    assert run_cli("validate", str(file), timeout=120).code == 0
