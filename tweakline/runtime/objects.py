"""Objects in the JetStream object store: content-addressed, written once, checked by SHA-256 on every read.

The layout never needs a purge, so no writer holds ``STREAM.PURGE``: every object's name
carries the SHA-256 of its bytes (``models/<exp>/<sha256>.skops``, ``sha256/<sha256>`` for
datasets), so new content always gets a new name and a name is never overwritten. The name is
never trusted: a reader hashes what it got, and an uploader that finds an object under the name
it wants hashes that too. An object whose bytes do not match its name (someone with write access
stored garbage there, "store poisoning") is treated as absent: the uploader writes the right
bytes under the name again without purging (:func:`_write_new`: new chunks, then a meta record
that rolls the old one up; the garbage chunks are left unreferenced), and a reader refuses it
with a clear error.

A read is also bounded in time by its progress, not its size: a meta record whose chunks do not
exist (forged: nats-py would wait for them forever) counts as foreign content, and a read that
receives no chunk for :data:`READ_STALL_S` (a missing flow-control grant, a lost consumer) ends
with an :class:`ArtifactError` saying how far it got, while a slow but moving 500 MB read goes on.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import time
from collections.abc import Awaitable
from datetime import UTC, datetime

from nats.js import JetStreamContext, api
from nats.js.errors import BadObjectMetaError, DigestMismatchError, NotFoundError, ObjectNotFoundError

from tweakline.errors import ArtifactError
from tweakline.proto.messages import ArtifactRef
from tweakline.proto.subjects import Bucket, dataset_object_name

CHUNK_BYTES = 128 * 1024  # nats-py's default chunk size
READ_STALL_S = 60.0
"""Seconds without a chunk after which a read is stuck, not slow (chunks of a healthy read arrive in milliseconds)."""


def content_name(name: str, digest: str) -> str:
    """The stored name of ``name`` with content ``digest``: ``models/x.skops`` -> ``models/x/<sha256>.skops``.

    The whole suffix from the file name's first dot is kept (``x.trainer.tar.gz`` stays a
    ``.trainer.tar.gz``), so readers can still tell an artifact's kind by its name.
    """
    folder, slash, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return f"{name}/{digest}"
    return f"{folder}{slash}{stem}/{digest}.{ext}"


class _Sink(io.BytesIO):
    """An object's bytes as its chunks arrive, and when the last one came (to tell stuck from slow)."""

    def __init__(self) -> None:
        super().__init__()
        self.progressed = time.monotonic()

    def write(self, data) -> int:  # nats-py calls it from a worker thread, once per chunk
        self.progressed = time.monotonic()
        return super().write(data)


async def _has_chunks(js: JetStreamContext, bucket: str, nuid: str | None) -> bool:
    """Whether the chunks a meta record points at exist (writers store them before the meta record)."""
    if not nuid or not nuid.isalnum():  # a forged nuid could name every chunk of the bucket (``>``)
        return False
    try:
        await js.get_last_msg(f"OBJ_{bucket}", f"$O.{bucket}.C.{nuid}")
    except NotFoundError:
        return False
    return True


async def _progressing(read: Awaitable[object], sink: _Sink, stall_s: float, what: str, size: int) -> None:
    """Await ``read`` while chunks keep arriving in ``sink``; :class:`ArtifactError` once none came for ``stall_s``."""
    task = asyncio.ensure_future(read)
    try:
        while not task.done():
            idle = time.monotonic() - sink.progressed
            if idle >= stall_s:
                raise ArtifactError(
                    f"reading {what} stalled: {sink.tell()} of {size} bytes arrived, then nothing for {stall_s:g} s "
                    "(does this identity have JetStream flow control on the store?)"
                )
            await asyncio.wait({task}, timeout=stall_s - idle)
        task.result()
    finally:
        if not task.done():  # stalled, or we are cancelled: stop nats-py's read (its outcome is not wanted)
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            task.cancel()


async def _read(js: JetStreamContext, bucket: str, name: str, stall_s: float = READ_STALL_S) -> bytes | None:
    """The bytes stored under ``name`` (``None`` if there is no such object, ``b""`` for foreign content).

    :class:`ArtifactError` if no chunk arrives for ``stall_s`` seconds.
    """
    store = await js.object_store(bucket)
    try:
        info = await store.get_info(name)
    except ObjectNotFoundError:
        return None
    if info.options is not None and info.options.link is not None:
        return b""  # a link is never what we stored: treat it as foreign content
    if info.size and not await _has_chunks(js, bucket, info.nuid):
        return b""  # a meta record without its chunks (forged): nats-py would wait for them forever
    sink = _Sink()  # nats-py appends bytes chunk by chunk otherwise (quadratic for big models)
    try:
        await _progressing(store.get(name, writeinto=sink), sink, stall_s, f"{bucket}/{name}", info.size or 0)
    except ObjectNotFoundError:
        return None
    except (DigestMismatchError, BadObjectMetaError):  # chunks that do not match their own meta record
        return b""
    return sink.getvalue()


async def _write_new(js: JetStreamContext, bucket: str, name: str, data: bytes) -> None:
    """Store ``data`` under ``name`` without ever purging (nats-py's ``put`` purges replaced chunks).

    Chunks go to a fresh subject; the meta record is published with a rollup header, which
    replaces any earlier meta record of the name. Earlier chunks, if any, stay unreferenced.
    """
    nuid = js._nc._nuid.next().decode()  # the same unique ids nats-py's put uses
    chunk_subject = f"$O.{bucket}.C.{nuid}"
    view = memoryview(data)
    chunks = 0
    for start in range(0, len(data), CHUNK_BYTES):
        await js.publish(chunk_subject, bytes(view[start : start + CHUNK_BYTES]))
        chunks += 1
    info = api.ObjectInfo(
        name=name,
        bucket=bucket,
        nuid=nuid,
        size=len(data),
        chunks=chunks,
        mtime=datetime.now(UTC).isoformat(),
        digest="SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode(),
        options=api.ObjectMetaOptions(max_chunk_size=CHUNK_BYTES),
    )
    meta_subject = f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
    await js.publish(meta_subject, json.dumps(info.as_dict()).encode(), headers={"Nats-Rollup": "sub"})


async def _store(js: JetStreamContext, bucket: str, name: str, data: bytes, digest: str) -> bool:
    """Make sure ``name`` holds ``data``; ``True`` if it had to be written."""
    present = await _read(js, bucket, name)
    if present is not None and hashlib.sha256(present).hexdigest() == digest:
        return False
    await _write_new(js, bucket, name, data)
    return True


async def put_artifact(js: JetStreamContext, name: str, data: bytes, bucket: Bucket = Bucket.ARTIFACTS) -> ArtifactRef:
    """Store ``data`` content-addressed under ``name`` (see :func:`content_name`); the reference carries its hash and size.

    Idempotent: storing the same bytes again writes nothing.
    """
    digest = hashlib.sha256(data).hexdigest()
    stored = content_name(name, digest)
    await _store(js, bucket.value, stored, data, digest)
    return ArtifactRef(bucket=bucket.value, name=stored, sha256=digest, size=len(data))


async def get_artifact(js: JetStreamContext, ref: ArtifactRef) -> bytes:
    """The bytes of ``ref``; :class:`ArtifactError` if missing or not what was recorded (tampered)."""
    data = await _read(js, ref.bucket, ref.name)
    if data is None:
        raise ArtifactError(f"artifact {ref.bucket}/{ref.name} not found")
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise ArtifactError(
            f"artifact {ref.bucket}/{ref.name} has sha256 {digest[:12]}..., expected {ref.sha256[:12]}...: refusing to load it"
        )
    return data


async def put_dataset(js: JetStreamContext, data: bytes) -> tuple[str, bool]:
    """Store a dataset file content-addressed; returns ``(sha256, uploaded)``.

    A file already stored under its hash is not sent again (``uploaded`` is ``False``); an object
    under that name whose bytes do not hash to it (poisoned) is replaced.
    """
    digest = hashlib.sha256(data).hexdigest()
    uploaded = await _store(js, Bucket.DATASETS.value, dataset_object_name(digest), data, digest)
    return digest, uploaded


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
