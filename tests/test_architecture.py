"""The layering rule and the linter, as part of the test command (a violation fails CI)."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from tests.architecture import REPO, lint_imports, stage


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wheel-layout")
    stage(root)
    return root


def test_the_layering_contracts_hold(staged: Path) -> None:
    result = lint_imports(staged)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


def test_every_optional_layer_exists_where_the_contract_is_checked(staged: Path) -> None:
    # The services and proto are optional layers only so a bare `lint-imports` works in a checkout;
    # on the wheel's layout each must exist, or the contract above would skip it silently.
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    optional = [m for c in contracts for layer in c.get("layers", []) for m in re.findall(r"\(([\w.]+)\)", layer)]
    assert "tweakline.proto" in optional and "tweakline.scheduler" in optional
    missing = [m for m in optional if not (staged / m.replace(".", "/") / "__init__.py").is_file()]
    assert not missing, f"optional layers missing from the wheel's layout: {missing}"


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        (
            "scheduler/_violation.py",
            "import tweakline.evaluator.handlers",
            "tweakline.scheduler is not allowed to import tweakline.evaluator",
        ),
        (
            "ml/_violation.py",
            "import tweakline.trial_runner.worker",
            "tweakline.ml is not allowed to import tweakline.trial_runner",
        ),
        ("proto/_violation.py", "import tweakline.errors", "tweakline.proto is not allowed to import tweakline.errors"),
        ("runtime/_violation.py", "import tweakline.cli.main", "tweakline.runtime is not allowed to import tweakline.cli"),
    ],
)
def test_a_wrong_import_breaks_a_contract(tmp_path: Path, module: str, bad_import: str, contract: str) -> None:
    stage(tmp_path)
    (tmp_path / "tweakline" / module).write_text(f'"""A deliberate violation."""\n\n{bad_import}\n')
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert contract in result.stdout, result.stdout


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sysconfig.get_path("scripts")) / "ruff"
    return subprocess.run([str(exe), *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_ruff_finds_nothing() -> None:
    result = _ruff("check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_code_is_formatted() -> None:
    result = _ruff("format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_would_catch_an_unused_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('"""x"""\n\nimport os\n')
    result = _ruff("check", "--no-cache", "--config", str(REPO / "pyproject.toml"), str(bad))
    assert result.returncode != 0 and "F401" in result.stdout


def test_python_is_the_test_interpreter() -> None:
    # The tools above are taken from the interpreter's own scripts folder (the venv the README makes).
    assert (Path(sysconfig.get_path("scripts")) / "lint-imports").exists(), sys.executable
