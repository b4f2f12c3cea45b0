"""The NATS server the chart deploys: mutual TLS with verify_and_map, and the permission map
generated from ``tweakline.proto.permissions``, enforced by a real nats-server.

The rendered ``nats.conf`` (written by the official NATS chart from our values) and the
rendered authorisation ConfigMap are laid out on disk as the StatefulSet mounts them, with the
dev PKI standing in for cert-manager's Secrets, and run by the real ``nats-server`` binary;
the bus-security checks of the local stack (tests/runtime/test_bus_security.py) then run
unchanged against it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import NatsFixture, serving
from tests.helm.conftest import RELEASE, REPO, find, render
from tests.runtime import test_bus_security as bus_security
from tweakline.cli import generate
from tweakline.proto.permissions import Identity, nats_user
from tweakline.runtime.bus import connect
from tweakline.runtime.natsserver import EmbeddedNatsServer, ServerConfig
from tweakline.runtime.pki import TlsFiles

NATS_CONFIG = f"{RELEASE}-nats-config"
NATS_AUTH = f"{RELEASE}-nats-auth"


def _rendered(*values: str) -> tuple[str, dict, dict]:
    manifests = render("tweakline", *values)
    (config,) = find(manifests, "ConfigMap", NATS_CONFIG)
    (auth,) = find(manifests, "ConfigMap", NATS_AUTH)
    (statefulset,) = find(manifests, "StatefulSet")
    return config.doc["data"]["nats.conf"], auth.doc["data"], statefulset.doc


def test_nats_requires_client_certificates_mapped_to_users() -> None:
    conf, _auth, statefulset = _rendered()
    blocks = re.findall(r'"tls": \{(.*?)\}', conf, re.S)
    (tls,) = [b for b in blocks if "/etc/nats-certs/nats/" in b]  # the client port's (routes have their own)
    assert '"verify_and_map": true' in tls
    assert '"ca_file": "/etc/nats-ca-cert/ca.crt"' in tls
    # By default a 3-node cluster whose routes are mutual TLS too.
    (route_tls,) = [b for b in blocks if "/etc/nats-certs/cluster/" in b]
    assert '"verify": true' in route_tls
    assert statefulset["spec"]["replicas"] == 3
    # No plaintext listener: one client port, TLS on it; no websocket/leafnode/mqtt ports.
    for listener in ("websocket", "leafnodes", "mqtt", "gateway"):
        assert f'"{listener}"' not in conf
    assert "include ../nats-auth/authorization.json;" in conf
    pod = statefulset["spec"]["template"]["spec"]
    (nats,) = [c for c in pod["containers"] if c["name"] == "nats"]
    mounts = {m["name"]: m["mountPath"] for m in nats["volumeMounts"]}
    assert mounts["tweakline-auth"] == "/etc/nats-auth"
    assert mounts["config"] == "/etc/nats-config"  # so ../nats-auth resolves to the mount above
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tweakline-auth"]
    assert volume["configMap"]["name"] == NATS_AUTH
    # The config reloader watches the map and the certificates: renewals need no NATS restart.
    (reloader,) = [c for c in pod["containers"] if c["name"] == "reloader"]
    assert "/etc/nats-auth/authorization.json" in reloader["args"]
    assert "/etc/nats-certs/nats/tls.crt" in reloader["args"]


def test_the_rendered_map_is_the_one_proto_generates() -> None:
    _conf, auth, _statefulset = _rendered()
    assert auth["authorization.json"] == generate.render_nats_authorization()
    # ...which is also the block the local stack's server runs with.
    local = ServerConfig(store_dir=Path("/x"), tls=TlsFiles(Path("/x"))).render()
    block = json.loads(local[local.index("authorization: ") + len("authorization: ") :])
    assert block == json.loads(auth["authorization.json"])["authorization"]


def test_committed_map_is_not_stale(tmp_path: Path) -> None:
    """`python -m tweakline.cli.generate --check` as a test, and proof that it can fail."""
    assert generate.main(["--check", "--root", str(REPO)]) == 0
    copy = tmp_path / generate.NATS_AUTHORIZATION
    copy.parent.mkdir(parents=True)
    shutil.copy(REPO / generate.NATS_AUTHORIZATION, copy)
    assert generate.NATS_AUTHORIZATION not in generate.stale_artefacts(tmp_path)
    document = json.loads(copy.read_text())
    document["authorization"]["users"][0]["permissions"]["publish"]["allow"].append(">")
    copy.write_text(json.dumps(document, indent=2) + "\n")
    assert generate.NATS_AUTHORIZATION in generate.stale_artefacts(tmp_path)
    assert generate.main(["--check", "--root", str(tmp_path)]) == 1


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more trailing tokens."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def _allowed(user: str, subject: str) -> bool:
    users = json.loads(generate.render_nats_authorization())["authorization"]["users"]
    (entry,) = [u for u in users if u["user"] == user]
    return any(_matches(p, subject) for p in entry["permissions"]["publish"]["allow"])


def test_the_map_forbids_a_runner_publishing_a_deployment() -> None:
    runner = nats_user(Identity.TRIAL_RUNNER)
    assert not _allowed(runner, "tweakline.deployments.completed.digits")
    assert not _allowed(runner, "tweakline.deployments.requested.digits")
    assert not _allowed(runner, "$KV.tweakline-releases.digits")
    assert _allowed(runner, "tweakline.trials.completed.t-1")
    assert _allowed(nats_user(Identity.DEPLOYER), "tweakline.deployments.completed.digits")


class _RenderedConfig:
    """Stands in for ServerConfig: the chart's nats.conf, rewritten to local paths."""

    def __init__(self, text: str):
        self.text = text

    def render(self) -> str:
        return self.text


def _lay_out_pod(conf: str, auth: dict, pki_root: Path, root: Path) -> str:
    """Put the rendered files where the NATS pod mounts them (under ``root``), with the dev PKI
    standing in for cert-manager's Secrets; return nats.conf rewritten to those paths."""
    etc = root / "etc"
    (etc / "nats-config").mkdir(parents=True)
    (etc / "nats-auth").mkdir()
    (etc / "nats-auth" / "authorization.json").write_text(auth["authorization.json"])
    server_tls = TlsFiles(pki_root / Identity.NATS_SERVER)
    for secret in ("nats", "cluster"):
        (etc / "nats-certs" / secret).mkdir(parents=True)
        shutil.copy(server_tls.cert, etc / "nats-certs" / secret / "tls.crt")
        shutil.copy(server_tls.key, etc / "nats-certs" / secret / "tls.key")
    (etc / "nats-ca-cert").mkdir()
    shutil.copy(server_tls.ca, etc / "nats-ca-cert" / "ca.crt")
    # Only what differs between a pod and this machine: mount roots, ports, the pod's name.
    local = (
        conf.replace('"/etc/', f'"{etc}/')
        .replace('"/data"', json.dumps(str(root / "data")))
        .replace('"/var/run/nats/nats.pid"', json.dumps(str(root / "nats.pid")))
        .replace('"port": 4222', '"port": -1')
        .replace('"port": 6222', '"port": -1')
        .replace('"http_port": 8222', '"http_port": -1')
        .replace("$SERVER_NAME", '"tl-nats-0"')
        .replace("{", '{\n  "host": "127.0.0.1",', 1)
    )
    assert '"/etc/' not in local and "4222" not in local
    (etc / "nats-config" / "nats.conf").write_text(local)
    return local


def test_clustered_nats_config_is_accepted_by_nats_server(pki_root: Path, tmp_path: Path) -> None:
    """The full-features values (3 routed servers with route TLS) give a config nats-server accepts."""
    from tweakline.runtime.natsserver import nats_server_binary

    manifests = render("tweakline", "ci/full-values.yaml")
    (config,) = find(manifests, "ConfigMap", NATS_CONFIG)
    (auth,) = find(manifests, "ConfigMap", NATS_AUTH)
    conf = config.doc["data"]["nats.conf"]
    assert '"routes"' in conf and '"verify_and_map": true' in conf
    _lay_out_pod(conf, auth.doc["data"], pki_root, tmp_path)
    path = tmp_path / "etc" / "nats-config" / "nats.conf"
    check = subprocess.run([str(nats_server_binary()), "-c", str(path), "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr or check.stdout


@pytest.fixture(scope="module")
def chart_nats(pki_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsFixture]:
    """A real nats-server running the chart's configuration, with the files where the pod has them."""
    conf, auth, _statefulset = _rendered("ci/single-node-values.yaml")  # one server here: no peers to route to
    root = tmp_path_factory.mktemp("nats-pod")
    local = _lay_out_pod(conf, auth, pki_root, root)
    etc = root / "etc"
    # EmbeddedNatsServer writes its config into run_dir: run it from the config directory so
    # the relative include resolves exactly as in the pod.
    server = EmbeddedNatsServer(_RenderedConfig(local), etc / "nats-config")  # type: ignore[arg-type]
    yield from serving(server, pki_root)


# The local stack's bus-security checks, reused unchanged against the chart's server.
REUSED: list[Callable[..., Awaitable[None]]] = [
    bus_security.test_client_with_certificate_from_our_ca_connects,
    bus_security.test_client_without_certificate_is_refused,
    bus_security.test_plaintext_client_is_refused,
    bus_security.test_runner_cannot_publish_a_deployment,
    bus_security.test_runner_may_publish_results,
]


@pytest.mark.parametrize("check", REUSED, ids=[c.__name__.removeprefix("test_") for c in REUSED])
async def test_chart_nats_server_enforces(check: Callable[..., Awaitable[None]], chart_nats: NatsFixture) -> None:
    await check(chart_nats)


async def test_chart_nats_server_refuses_a_foreign_ca(chart_nats: NatsFixture, tmp_path: Path) -> None:
    await bus_security.test_client_with_certificate_from_another_ca_is_refused(chart_nats, tmp_path)


async def test_chart_nats_server_takes_messages_as_large_as_the_local_stacks(chart_nats: NatsFixture) -> None:
    # An experiment's state is one KV value (about 450 bytes per trial): NATS's default 1 MB
    # would hold about 2,300 trials on Kubernetes where the local stack holds 18,000.
    nc = await connect(chart_nats.settings(Identity.SCHEDULER), "chart-max-payload")
    try:
        assert nc.max_payload == ServerConfig.max_payload == 8 * 1024 * 1024
    finally:
        await nc.close()
