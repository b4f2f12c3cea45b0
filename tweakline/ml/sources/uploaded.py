"""``object:csv:<sha256>`` and ``object:parquet:<sha256>``: files uploaded to the datasets object store.

``tweakline submit`` and the webhook upload a local table by its content; runners fetch it once per
machine into a :class:`BlobCache` (named and verified by its SHA-256) and read it from there.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Callable, Hashable
from pathlib import Path

from tweakline.errors import DatasetError
from tweakline.ml.sources.base import Dataset, DatasetLoader, Task, register_source
from tweakline.ml.sources.csv_file import CsvLoader
from tweakline.proto.tweakfile import DatasetSpec

# A dataset uploaded to the object store by its content: object:<format>:<sha256 hex>.
OBJECT_SOURCE = re.compile(r"^object:(csv|parquet):[0-9a-f]{64}$")

BlobFetcher = Callable[[str], bytes]
"""Returns the bytes of the uploaded file with this SHA-256 (blocking; called from a worker thread)."""


class BlobCache:
    """Downloaded dataset files on local disk, named by their SHA-256 and verified before use.

    Runners keep these between experiments, so an uploaded dataset is fetched once per machine.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fetches = 0

    def path(self, digest: str) -> Path:
        """Where the file with this hash is kept."""
        return self.directory / digest[:2] / digest

    def get(self, digest: str, fetch: Callable[[], bytes], what: str) -> Path:
        """The local path of ``digest``, calling ``fetch`` (and checking the hash) on a miss."""
        path = self.path(digest)
        if path.is_file() and _sha256_file(path) == digest:
            return path
        self.fetches += 1
        data = fetch()
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise DatasetError(f"{what}: content has sha256 {actual[:12]}..., expected {digest[:12]}...; refusing it")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
        partial.write_bytes(data)
        partial.replace(path)  # atomic: a concurrent reader never sees half a file
        return path


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_csv_file(spec: DatasetSpec, path: Path, task: Task | None, name: str) -> Dataset:
    """The CSV file at ``path`` (fetched already), read as ``csv:`` reads it, shown as ``name``."""
    dataset = CsvLoader().load(spec.model_copy(update={"source": f"csv:{path}"}), None, task)
    dataset.name = name
    return dataset


def _load_uploaded(spec: DatasetSpec, path: Path, task: Task | None, name: str) -> Dataset:
    """An uploaded file in the format its source names (``object:csv:`` or ``object:parquet:``)."""
    if spec.source.startswith("object:parquet:"):
        from tweakline.ml.sources.parquet_file import object_parquet

        return object_parquet(path, spec, task, name)
    return load_csv_file(spec, path, task, name)


@register_source
class ObjectLoader(DatasetLoader):
    """``object:csv:<sha256>`` (or ``object:parquet:<sha256>``): a file uploaded by ``tweakline submit`` (or the webhook) to the
    datasets object store, fetched once into the local :class:`BlobCache` and read from there.

    The process configures where the bytes come from with :func:`use_object_store` (the runner and
    evaluator do at start-up, with their NATS connection).
    """

    scheme = "object"
    form = "object:csv:<sha256>"
    fetcher: BlobFetcher | None = None
    cache: BlobCache = BlobCache(Path(tempfile.gettempdir()) / "tweakline-datasets")

    def source_problem(self, source: str) -> str | None:
        if OBJECT_SOURCE.match(source):
            return None
        return f"'{source}' is not object:csv:<sha256> or object:parquet:<sha256> (64 hex digits of the file's sha256)"

    @staticmethod
    def digest(spec: DatasetSpec) -> str:
        """The sha256 the source names."""
        return spec.source.rsplit(":", 1)[1]

    def fingerprint(self, spec: DatasetSpec, base_dir: Path | None) -> Hashable:
        return ("sha256", self.digest(spec))

    def load(self, spec: DatasetSpec, base_dir: Path | None, task: Task | None) -> Dataset:
        digest = self.digest(spec)
        fetcher = type(self).fetcher
        if fetcher is None:
            raise DatasetError(f"{spec.source}: this process has no connection to the datasets object store")
        path = type(self).cache.get(digest, lambda: fetcher(digest), spec.source)
        return _load_uploaded(spec, path, task, f"sha256:{digest[:12]}")


def needs_prefetch(spec: DatasetSpec) -> bool:
    """Whether :func:`prefetch` has anything to do for ``spec`` (only uploaded datasets)."""
    return spec.source.startswith(f"{ObjectLoader.scheme}:")


def prefetch(spec: DatasetSpec) -> None:
    """Bring an uploaded (``object:``) dataset into the local cache; other sources need nothing.

    The runner calls it before handing a trial to its training process, which has no NATS
    connection and reads the same cache directory.
    """
    if not needs_prefetch(spec):
        return
    digest = ObjectLoader.digest(spec)
    fetcher = ObjectLoader.fetcher
    if fetcher is None:
        raise DatasetError(f"{spec.source}: this process has no connection to the datasets object store")
    ObjectLoader.cache.get(digest, lambda: fetcher(digest), spec.source)


def use_object_store(fetcher: BlobFetcher | None, cache_dir: Path | None = None) -> None:
    """Make ``object:`` sources loadable in this process: where bytes come from and where they are kept."""
    ObjectLoader.fetcher = fetcher
    if cache_dir is not None:
        ObjectLoader.cache = BlobCache(cache_dir)
