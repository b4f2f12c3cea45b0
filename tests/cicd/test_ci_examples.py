"""The CI examples stay true: valid YAML, and every tweakline command and flag they use exists."""

from __future__ import annotations

import re
import shlex

import yaml
from typer.testing import CliRunner

from tests.conftest import EXAMPLES
from tweakline.cli.main import app

CI = EXAMPLES / "ci"


def _tweakline_commands(lines: list[str]) -> list[list[str]]:
    """Each ``tweakline ...`` invocation in shell lines (up to a ;, &&, || or redirection)."""
    commands = []
    for line in lines:
        for match in re.finditer(r"(?:^|[;&|]\s*)tweakline\s+([^;&|>]*)", line.strip()):
            commands.append(shlex.split(match.group(1)))
    return commands


def _accepted(command: list[str]) -> bool:
    """Whether the real CLI accepts these options (checked against its --help, without running it)."""
    name, options = command[0], [w.split("=")[0] for w in command if w.startswith("--")]
    text = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "300"}).output
    return all(option in text for option in options)


def test_bitbucket_pipeline_runs_in_pipeline_and_submits_to_a_platform() -> None:
    pipeline = yaml.safe_load((CI / "bitbucket-pipelines.yml").read_text())
    steps = {s["step"]["name"]: s["step"] for s in pipeline["definitions"]["steps"]}
    commands = {name: _tweakline_commands(step["script"]) for name, step in steps.items()}
    embedded = commands["Tune (embedded platform, no cluster)"]
    platform = commands["Tune on the tweakline platform"]
    assert any(c[0] == "run" for c in embedded)
    assert any(c[0] == "submit" and "--wait" in c for c in platform)
    for command in embedded + platform:
        assert _accepted(command), command
    assert set(pipeline["pipelines"]) == {"default", "pull-requests", "branches"}


def test_jenkinsfile_submits_and_maps_exit_codes() -> None:
    text = (CI / "Jenkinsfile").read_text()
    script = re.search(r"script: '''(.*?)'''", text, re.S)
    assert script is not None
    [submit] = [c for c in _tweakline_commands(script.group(1).replace("\\\n", " ").splitlines()) if c[0] == "submit"]
    assert "--wait" in submit and _accepted(submit)
    assert "code == 1" in text and "unstable(" in text
