"""Artifacts in the JetStream object store, addressed by name and checked by SHA-256 on every read."""

from __future__ import annotations

import asyncio
import hashlib

from nats.js import JetStreamContext
from nats.js.errors import ObjectNotFoundError

from tweakline.errors import ArtifactError
from tweakline.proto.messages import ArtifactRef
from tweakline.proto.subjects import Bucket, dataset_object_name


async def put_artifact(js: JetStreamContext, name: str, data: bytes, bucket: Bucket = Bucket.ARTIFACTS) -> ArtifactRef:
    """Store ``data`` under ``name``; the returned reference carries its hash and size."""
    store = await js.object_store(bucket.value)
    await store.put(name, data)
    return ArtifactRef(bucket=bucket.value, name=name, sha256=hashlib.sha256(data).hexdigest(), size=len(data))


async def get_artifact(js: JetStreamContext, ref: ArtifactRef) -> bytes:
    """The bytes of ``ref``; :class:`ArtifactError` if missing or not what was recorded (tampered)."""
    store = await js.object_store(ref.bucket)
    try:
        result = await store.get(ref.name)
    except ObjectNotFoundError:
        raise ArtifactError(f"artifact {ref.bucket}/{ref.name} not found") from None
    data = result.data or b""
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise ArtifactError(
            f"artifact {ref.bucket}/{ref.name} has sha256 {digest[:12]}..., expected {ref.sha256[:12]}...: refusing to load it"
        )
    return data


async def put_dataset(js: JetStreamContext, data: bytes) -> tuple[str, bool]:
    """Store a dataset file content-addressed; returns ``(sha256, uploaded)``.

    A file whose hash is already stored is not sent again (``uploaded`` is ``False``).
    """
    digest = hashlib.sha256(data).hexdigest()
    store = await js.object_store(Bucket.DATASETS.value)
    name = dataset_object_name(digest)
    try:
        info = await store.get_info(name)
        if not info.deleted and info.size == len(data):
            return digest, False
    except ObjectNotFoundError:
        pass
    await store.put(name, data)
    return digest, True


async def get_dataset(js: JetStreamContext, sha256: str) -> bytes:
    """The bytes of the uploaded dataset ``sha256``, checked against the hash."""
    ref = ArtifactRef(bucket=Bucket.DATASETS.value, name=dataset_object_name(sha256), sha256=sha256, size=0)
    return await get_artifact(js, ref)


def blocking_dataset_fetcher(js: JetStreamContext, loop: asyncio.AbstractEventLoop, timeout: float = 600.0):
    """A ``sha256 -> bytes`` function for worker threads, fetching through ``loop``'s NATS connection."""

    def fetch(sha256: str) -> bytes:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:  # waiting on our own loop would deadlock
            raise ArtifactError("dataset fetch must run in a worker thread, not on the event loop")
        return asyncio.run_coroutine_threadsafe(get_dataset(js, sha256), loop).result(timeout)

    return fetch
