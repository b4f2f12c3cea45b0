"""Datasets a runner does not have on disk: uploaded ones (object:csv:<sha256>) and https:// URLs.

The uploaded file is fetched once per machine into a cache named by hash, and refused when its
bytes do not match the hash; the object store is the real one (nats-server over mTLS) with the
runner's own identity.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tweakline.errors import DatasetError
from tweakline.ml.datasets import DatasetCache, ObjectLoader, check_dataset, use_object_store
from tweakline.proto.permissions import Identity
from tweakline.proto.tweakfile import DatasetSpec
from tweakline.runtime.bus import connect
from tweakline.runtime.objects import blocking_dataset_fetcher, put_dataset
from tweakline.validation import validate

CSV = b"a,b,y\n" + b"".join(f"{i},{i % 7},{i % 2}\n".encode() for i in range(60))
DIGEST = hashlib.sha256(CSV).hexdigest()


@pytest.fixture
def restore_object_store() -> Iterator[None]:
    fetcher, cache = ObjectLoader.fetcher, ObjectLoader.cache
    yield
    ObjectLoader.fetcher, ObjectLoader.cache = fetcher, cache


def test_object_source_loads_through_the_fetcher_once_and_then_from_the_disk_cache(
    tmp_path: Path, restore_object_store: None
) -> None:
    fetched: list[str] = []

    def fetch(digest: str) -> bytes:
        fetched.append(digest)
        return CSV

    use_object_store(fetch, tmp_path / "cache")
    spec = DatasetSpec(source=f"object:csv:{DIGEST}", target="y")
    split = DatasetCache().get(spec)
    assert split.X_train.shape[1] == 2 and split.task == "classification"
    assert fetched == [DIGEST]
    assert (tmp_path / "cache" / DIGEST[:2] / DIGEST).read_bytes() == CSV
    DatasetCache().get(spec)  # a new process-level cache: the disk copy is reused
    assert fetched == [DIGEST]


def test_object_source_with_other_bytes_is_refused(tmp_path: Path, restore_object_store: None) -> None:
    use_object_store(lambda _d: CSV + b"1,2,0\n", tmp_path / "cache")
    with pytest.raises(DatasetError, match="expected " + DIGEST[:12]):
        DatasetCache().get(DatasetSpec(source=f"object:csv:{DIGEST}", target="y"))
    assert not (tmp_path / "cache" / DIGEST[:2] / DIGEST).exists()


def test_object_source_without_a_store_says_so(restore_object_store: None) -> None:
    use_object_store(None)
    with pytest.raises(DatasetError, match="no connection to the datasets object store"):
        DatasetCache().get(DatasetSpec(source=f"object:csv:{'0' * 64}", target="y"))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("object:csv:abc", "is not object:csv:<sha256> or object:parquet:<sha256> (64 hex digits"),
        ("https://example.com/data.parquet", "is not an https:// URL of a .csv file"),
        ("http://example.com/data.csv", "unknown dataset source"),
    ],
)
def test_bad_remote_sources_name_the_field_and_the_rule(source: str, message: str) -> None:
    from tweakline.errors import InvalidTweakFileError

    text = f"""
apiVersion: tweakline/v1
kind: Experiment
metadata: {{name: x}}
spec:
  dataset: {{source: "{source}", target: y}}
  model: {{estimator: sklearn.svm.SVC}}
  search: {{algorithm: random, space: {{C: {{type: float, low: 0.1, high: 1}}}}}}
  objective: {{metric: accuracy}}
"""
    with pytest.raises(InvalidTweakFileError) as info:
        validate(text, ["sklearn."])
    [problem] = info.value.problems
    assert problem.path == "spec.dataset.source" and message in problem.message


def test_remote_table_sources_need_a_target() -> None:
    # The tweak file keeps the source a string; the source's plug-in says a table needs a target.
    problems = check_dataset(DatasetSpec(source=f"object:csv:{DIGEST}"))
    assert [(p.path, p.message) for p in problems] == [
        ("spec.dataset.target", "required for csv:, parquet:, https: and object: sources (the name of the target column)")
    ]


async def test_runner_identity_reads_what_a_submitter_uploaded(nats, tmp_path: Path, restore_object_store: None) -> None:
    submitter = await connect(nats.settings(Identity.SUBMITTER), "test-submitter")
    runner = await connect(nats.settings(Identity.TRIAL_RUNNER), "test-runner")
    try:
        digest, uploaded = await put_dataset(submitter.jetstream(), CSV)
        again, uploaded_again = await put_dataset(submitter.jetstream(), CSV)
        assert (digest, again) == (DIGEST, DIGEST) and uploaded_again is False
        use_object_store(blocking_dataset_fetcher(runner.jetstream(), asyncio.get_running_loop()), tmp_path / "cache")
        spec = DatasetSpec(source=f"object:csv:{DIGEST}", target="y")
        split = await asyncio.to_thread(DatasetCache().get, spec)  # runners load in a worker thread
        assert split.X_train.shape[0] + split.X_test.shape[0] == 60
    finally:
        await submitter.close()
        await runner.close()


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    (tmp_path / "data.csv").write_bytes(CSV)
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args: object) -> None:
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    thread.join()


def test_https_loader_downloads_and_checks_a_pinned_hash(
    http_server: tuple[str, list[str]], tmp_path: Path, restore_object_store: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The scheme is https:; the test server speaks plain HTTP on loopback, so the URL is mapped.
    import tweakline.ml.sources.https_url as https_url

    base, requests = http_server
    real = https_url._download
    monkeypatch.setattr(https_url, "_download", lambda url: real(url.replace("https://data.test", base)))
    use_object_store(None, tmp_path / "cache")
    pinned = DatasetSpec(source=f"https://data.test/data.csv#sha256={DIGEST}", target="y")
    assert DatasetCache().get(pinned).X_train.shape[1] == 2
    assert DatasetCache().get(pinned) is not None  # second process-level cache: served from disk by hash
    assert len(requests) == 1
    wrong = DatasetSpec(source=f"https://data.test/data.csv#sha256={'0' * 64}", target="y")
    with pytest.raises(DatasetError, match="expected 000000000000"):
        DatasetCache().get(wrong)
    missing = DatasetSpec(source="https://data.test/nope.csv", target="y")
    with pytest.raises(DatasetError, match="HTTP 404"):
        DatasetCache().get(missing)
