"""Run the layering contracts (import-linter) on the package as the wheel lays it out.

The wheel maps ``proto/`` and ``services/<name>/`` into ``tweakline``; import-linter reads
packages from the file system, so the tree is staged the way the wheel installs it first.
``python -m tests.architecture`` runs the contracts from a checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def stage(into: Path) -> Path:
    """Copy the package sources into ``into`` in the wheel's layout; returns the staged ``tweakline``."""
    package_dir = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    root = into / "tweakline"
    shutil.copytree(REPO / "tweakline", root, ignore=ignore)
    for package, folder in package_dir.items():
        shutil.copytree(REPO / folder, into / package.replace(".", "/"), ignore=ignore)
    return root


def lint_imports(staged: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the repository's contracts over a staged tree."""
    exe = Path(sysconfig.get_path("scripts")) / "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(staged)}
    return subprocess.run(
        [str(exe), str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=staged,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def main() -> int:
    """Stage, lint, print the report; exit non-zero when a contract is broken."""
    with tempfile.TemporaryDirectory() as tmp:
        stage(Path(tmp))
        result = lint_imports(Path(tmp))
    sys.stdout.write(result.stdout + result.stderr)
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
