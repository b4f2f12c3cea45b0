"""The tree is the architecture: every package folder is in the wheel, under the import path its place says."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def _expected_packages() -> dict[str, Path]:
    """Import path -> folder, by the one rule: tweakline/ is tweakline, proto/ is tweakline.proto,
    services/<name>/ is tweakline.<name with '-' as '_'>."""
    found = {".".join(d.relative_to(REPO).parts): d for d in (REPO / "tweakline").rglob("*") if (d / "__init__.py").is_file()}
    found["tweakline"] = REPO / "tweakline"
    found["tweakline.proto"] = REPO / "proto"
    for service in (REPO / "services").iterdir():
        if service.is_dir():
            found[f"tweakline.{service.name.replace('-', '_')}"] = service
    return found


def test_every_package_folder_is_listed_for_the_wheel() -> None:
    listed = set(_setuptools()["packages"])
    expected = _expected_packages()
    assert set(expected) == listed, (
        f"missing from pyproject: {sorted(set(expected) - listed)}; stale: {sorted(listed - set(expected))}"
    )


def test_folders_map_by_the_one_rule() -> None:
    package_dir = _setuptools()["package-dir"]
    for package, folder in _expected_packages().items():
        if (
            package.startswith("tweakline.")
            and package.count(".") == 1
            and package not in {".".join(folder.relative_to(REPO).parts)}
        ):
            assert package_dir.get(package) == folder.relative_to(REPO).as_posix(), package
    for service in (REPO / "services").iterdir():
        assert (service / "__init__.py").is_file(), f"{service.name} has no __init__.py"
        assert (service / "app.py").is_file() or service.name == "model-server", f"{service.name} has no app.py"
