"""The benchmark-only plaintext transport: off unless asked for, and it works when asked for.

bench/platform.py uses it to measure what mTLS costs; nothing else may turn it on.
"""

from __future__ import annotations

from pathlib import Path

from tweakline.proto.permissions import Identity
from tweakline.runtime.bus import connect, connect_options
from tweakline.runtime.natsserver import EmbeddedNatsServer, ServerConfig
from tweakline.runtime.pki import TlsFiles
from tweakline.runtime.settings import Settings


def test_mutual_tls_is_the_default(pki_root: Path, tmp_path: Path) -> None:
    settings = Settings(state_dir=pki_root.parent)
    assert settings.insecure_plaintext_for_benchmarks is False
    assert connect_options(settings, "x")["tls"] is not None
    conf = ServerConfig(store_dir=tmp_path, tls=TlsFiles(pki_root / Identity.NATS_SERVER)).render()
    assert "verify_and_map: true" in conf
    assert "authorization" in conf


def test_the_setting_is_read_only_from_its_explicit_name(monkeypatch) -> None:
    monkeypatch.setenv("TWEAKLINE_INSECURE_PLAINTEXT_FOR_BENCHMARKS", "true")
    assert Settings().insecure_plaintext_for_benchmarks is True
    monkeypatch.delenv("TWEAKLINE_INSECURE_PLAINTEXT_FOR_BENCHMARKS")
    assert Settings().insecure_plaintext_for_benchmarks is False


async def test_plaintext_server_and_client_for_benchmarks(pki_root: Path, tmp_path: Path) -> None:
    config = ServerConfig(
        store_dir=tmp_path / "js", tls=TlsFiles(pki_root / Identity.NATS_SERVER), insecure_plaintext_for_benchmarks=True
    )
    assert "tls {" not in config.render() and "authorization" not in config.render()
    server = EmbeddedNatsServer(config, tmp_path / "run")
    url = server.start()
    try:
        assert url.startswith("nats://")
        settings = Settings(nats_url=url, state_dir=pki_root.parent, insecure_plaintext_for_benchmarks=True)
        nc = await connect(settings, "bench-plaintext", allow_reconnect=False)
        try:
            assert nc.is_connected
            sub = await nc.subscribe("bench.ping")
            await nc.publish("bench.ping", b"1")
            assert (await sub.next_msg(timeout=5)).data == b"1"
        finally:
            await nc.close()
    finally:
        server.stop()
