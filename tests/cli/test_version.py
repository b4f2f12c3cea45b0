"""`tweakline --version`: prints the version and exits 0, with no command needed."""

from __future__ import annotations

from tests.conftest import run_cli
from tweakline import __version__


def test_version_prints_the_version_and_exits_0() -> None:
    result = run_cli("--version")
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == __version__
    assert "Missing command" not in result.stderr
