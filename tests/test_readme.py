"""The README's promises: the two commands stay the ones CI runs, and its tweak file is valid."""

from __future__ import annotations

import re
from pathlib import Path

from tweakline.validation.loading import parse_tweak_file

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_exactly_the_readme_test_command() -> None:
    commands = re.findall(r"^python3 -m venv .*$", README, flags=re.MULTILINE)
    assert len(commands) == 2, commands
    demo, tests = commands
    assert "tweakline run examples/" in demo
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines()
    demo_file = re.search(r"tweakline run (\S+)", demo)
    assert demo_file and (ROOT / demo_file.group(1)).is_file()


def test_readme_tweak_file_is_valid() -> None:
    block = re.search(r"```yaml\n(apiVersion: tweakline/v1.*?)```", README, flags=re.DOTALL)
    assert block, "the README shows a tweak file"
    tweak = parse_tweak_file(block.group(1), source="README.md")
    assert tweak.spec.deploy is not None and tweak.spec.deploy.release == "wine"
