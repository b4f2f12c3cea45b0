"""A Docker engine for the image tier, found or started, and the image built from this repository.

The engine: ``DOCKER_HOST`` when set, else the private engine of ``tools/docker/engine.sh``
(``unix:///var/lib/tweakline-docker/docker.sock``), else Docker's default socket. When none
answers and the tests run as root, ``engine.sh start`` starts one (installing Debian's
``docker.io`` when ``dockerd`` is missing); otherwise the tier is skipped with the reason.

The base: ``python:3.11-slim`` when present or pullable, else ``tools/docker/base-image.sh``
makes a stand-in with debootstrap (it trusts this host's local CAs: never push it anywhere).

Builds use the legacy builder (``DOCKER_BUILDKIT=0``: BuildKit fetches the ``# syntax=``
frontend from a registry) and ``--network host`` (the private engine has no bridge). The
engine's build cache is kept, and the Dockerfile installs the dependencies before it copies the
sources, so a rebuild after a change to the sources re-runs only the wheel's small layers (the
dependencies, and the Helm variant's engine, come from the cache while the pins do not change),
and an unchanged tree rebuilds in about a second.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools" / "docker"
PRIVATE_SOCKET = "unix:///var/lib/tweakline-docker/docker.sock"
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
BASE = "python:3.11-slim"
IMAGE_USER = 10001  # the Dockerfile's USER
# Set to an image ID or tag to test that image instead of building one (e.g. an older build).
IMAGE_OVERRIDE = "TWEAKLINE_TEST_IMAGE"


class EngineUnavailable(Exception):
    """No Docker engine answers and none can be started here (the reason is the message)."""


@dataclass
class Docker:
    """The ``docker`` CLI bound to one engine."""

    host: str
    cli: str
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.env = {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "0"}

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``docker ARGS``; with ``check``, fail with its output on a non-zero exit."""
        proc = subprocess.run([self.cli, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def answers(self) -> bool:
        """Whether the engine responds."""
        try:
            return self("version", "--format", "{{.Server.Version}}", timeout=20, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def has_image(self, ref: str) -> bool:
        return self("image", "inspect", ref, check=False).returncode == 0

    def build(self, tag: str, *build_args: str, timeout: float = 1800) -> str:
        """Build this repository's Dockerfile, tag it, and return the image ID."""
        args = [item for arg in build_args for item in ("--build-arg", arg)]
        proc = self("build", "--network", "host", "--quiet", "--tag", tag, *args, str(REPO), timeout=timeout)
        return proc.stdout.strip().splitlines()[-1]


def _root() -> bool:
    return os.geteuid() == 0


def _cli() -> str | None:
    # Debian's client (20.10) matches Debian's engine; any other works with DOCKER_BUILDKIT=0.
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def engine() -> Docker:
    """A responding engine: found, or started with ``tools/docker/engine.sh`` as root."""
    candidates = [os.environ["DOCKER_HOST"]] if os.environ.get("DOCKER_HOST") else [PRIVATE_SOCKET, DEFAULT_SOCKET]
    cli = _cli()
    if cli is not None:
        for host in candidates:
            docker = Docker(host, cli)
            if docker.answers():
                return docker
    if not _root():
        raise EngineUnavailable(f"no Docker engine answers at {', '.join(candidates)} and starting one needs root")
    if shutil.which("dockerd") is None and shutil.which("apt-get") is None:
        raise EngineUnavailable("no Docker engine answers, and neither dockerd nor apt-get (to install docker.io) is here")
    proc = subprocess.run([str(TOOLS / "engine.sh"), "start"], capture_output=True, text=True, timeout=600)
    cli = _cli()
    if proc.returncode != 0 or cli is None:
        raise AssertionError(f"tools/docker/engine.sh start failed ({proc.returncode}):\n{proc.stderr}")
    docker = Docker(PRIVATE_SOCKET, cli)
    assert docker.answers(), f"engine.sh started dockerd but {PRIVATE_SOCKET} does not answer:\n{proc.stderr}"
    return docker


def ensure_base(docker: Docker) -> str:
    """``python:3.11-slim``: present, pulled, or the debootstrap stand-in. Returns how it was found."""
    if docker.has_image(BASE):
        return "present"
    if docker("pull", BASE, timeout=300, check=False).returncode == 0:
        return "pulled"
    if not _root():
        raise EngineUnavailable(f"{BASE} cannot be pulled and making the stand-in base needs root")
    env = {**docker.env}
    proc = subprocess.run([str(TOOLS / "base-image.sh")], env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise AssertionError(f"tools/docker/base-image.sh failed ({proc.returncode}):\n{proc.stderr}")
    return "stand-in"
