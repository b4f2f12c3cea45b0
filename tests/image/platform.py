"""The platform run from the image: nats-server on the host, everything else as containers.

Every container runs on the host network (the private engine has no bridge, and the traffic
stays on loopback) with its own identity's certificate, key and CA copied and handed to the
image's user (UID 10001 cannot read the 0600 root-owned originals), and its own health port
(two services on one port: the second exits with EADDRINUSE).
"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.factories import tweak_dict
from tests.image.docker import IMAGE_USER, Docker
from tests.waiting import wait_until
from tweakline.proto.permissions import SERVICE_IDENTITIES, Identity
from tweakline.runtime.natsserver import EmbeddedNatsServer, ServerConfig
from tweakline.runtime.pki import TlsFiles, ensure_pki

TLS_IN_IMAGE = "/etc/tweakline/tls"  # the Dockerfile's TWEAKLINE_TLS_DIR
START_TIMEOUT = 180.0  # a loaded machine: image start-up, imports and the first connection


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hand_over(files: Path, to: Path, uid: int, gid: int) -> Path:
    """Copy one identity's tls.crt, tls.key and ca.crt into ``to``, owned by ``uid:gid``, key 0600."""
    to.mkdir(parents=True, exist_ok=True)
    tls = TlsFiles(files)
    for source in (tls.cert, tls.key, tls.ca):
        target = to / source.name
        shutil.copyfile(source, target)
        target.chmod(0o600 if source == tls.key else 0o644)
        if os.geteuid() == 0:
            os.chown(target, uid, gid)
        elif source == tls.key:
            target.chmod(0o644)  # not root: cannot chown; a throwaway test key readable by the container
    if os.geteuid() == 0:
        os.chown(to, uid, gid)
    return to


@dataclass
class Platform:
    """A running platform built from ``image``."""

    docker: Docker
    image: str
    root: Path
    prefix: str
    pki: Path = field(init=False)
    url: str = field(init=False)
    server: EmbeddedNatsServer = field(init=False)
    containers: list[str] = field(default_factory=list)
    model_server_url: str = ""

    def __post_init__(self) -> None:
        self.pki = self.root / "pki"
        ensure_pki(self.pki)

    def tls(self, identity: Identity) -> Path:
        """This identity's files, copied for the image's user."""
        return hand_over(self.pki / identity.value, self.root / "certs" / identity.value, IMAGE_USER, IMAGE_USER)

    def start_nats(self) -> None:
        """nats-server (the embedded one, on the host) with mTLS and the per-identity permissions; no topology yet."""
        store = self.root / "jetstream"
        self.server = EmbeddedNatsServer(
            ServerConfig(store_dir=store, tls=TlsFiles(self.pki / Identity.NATS_SERVER)), store / "run"
        )
        self.url = self.server.start(timeout=60)

    def run(self, name: str, identity: Identity, *args: str, env: dict[str, str] | None = None, detach: bool = True):
        """``docker run`` the image as ``identity`` with ``args`` (a detached container, or run to completion)."""
        options = ["--network", "host", "-v", f"{self.tls(identity)}:{TLS_IN_IMAGE}:ro"]
        for key, value in {"TWEAKLINE_NATS_URL": self.url, "TWEAKLINE_IDENTITY": identity.value, **(env or {})}.items():
            options += ["-e", f"{key}={value}"]
        container = f"{self.prefix}-{name}"
        if detach:
            self.containers.append(container)
            return self.docker("run", "-d", "--name", container, *options, self.image, *args, timeout=300)
        return self.docker("run", "--rm", "--name", container, *options, self.image, *args, timeout=300, check=False)

    def logs(self, container: str) -> str:
        proc = self.docker("logs", "--tail", "60", container, check=False)
        return proc.stdout + proc.stderr

    def wait_ready(self, container: str, url: str) -> None:
        """Wait until ``url`` answers 200, failing early (with the log) if the container exits."""

        def ready() -> bool:
            state = self.docker("inspect", "--format", "{{.State.Running}}", container, check=False).stdout.strip()
            if state != "true":
                raise AssertionError(f"{container} is not running:\n{self.logs(container)}")
            try:
                return httpx.get(url, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, f"{container} to answer {url}", timeout=START_TIMEOUT, interval=0.5)

    def start(self, release: str) -> None:
        """NATS, ``bus init`` as admin, the four services and the model server of ``release``."""
        self.start_nats()
        init = self.run("bus-init", Identity.ADMIN, "bus", "init", "--wait", "60", detach=False)
        assert init.returncode == 0 and "topology ready" in init.stdout, init.stdout + init.stderr
        probes = []
        for identity in SERVICE_IDENTITIES:
            port = free_port()
            self.run(identity.value, identity, "service", identity.value, env={"TWEAKLINE_HEALTH_PORT": str(port)})
            probes.append((f"{self.prefix}-{identity.value}", f"http://127.0.0.1:{port}/readyz"))
        port = free_port()
        self.run("model-server", Identity.MODEL_SERVER, "serve", release, "--host", "127.0.0.1", "--port", str(port))
        self.model_server_url = f"http://127.0.0.1:{port}"
        probes.append((f"{self.prefix}-model-server", f"{self.model_server_url}/healthz"))
        for container, url in probes:  # started together above, so their start-ups overlap
            self.wait_ready(container, url)

    def stop(self) -> None:
        """Remove every container and stop NATS."""
        for container in self.containers:
            self.docker("rm", "-f", container, check=False, timeout=60)
        if hasattr(self, "server"):
            self.server.stop()


def container_prefix() -> str:
    """Unique per test session: sessions of other engineers may share the engine."""
    return f"tl-pytest-{os.getpid()}"


def wine_tweak(name: str, release: str, endpoint: str | None = None) -> dict:
    """A quick experiment (two SVC trials on wine) whose model passes the gate and is deployed to ``release``."""
    deploy = {"target": "local", "release": release}
    if endpoint is not None:
        deploy["endpoint"] = endpoint  # the deployer's post-deploy check calls this model server
    return tweak_dict(
        name,
        dataset={"source": "sklearn:wine", "test_size": 0.25, "seed": 0},
        model={"estimator": "sklearn.svm.SVC", "pipeline": ["sklearn.preprocessing.StandardScaler"]},
        search={"algorithm": "random", "seed": 0, "space": {"C": {"type": "categorical", "choices": [1.0, 10.0]}}},
        objective={"metric": "accuracy", "cv": 2},
        budget={"max_trials": 2, "parallelism": 1},
        gate={"thresholds": {"accuracy": 0.5}},
        deploy=deploy,
    )
