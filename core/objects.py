"""Artifacts in the JetStream object store, addressed by name and checked by SHA-256 on every read."""

from __future__ import annotations

import hashlib

from nats.js import JetStreamContext
from nats.js.errors import ObjectNotFoundError

from tweakline.errors import ArtifactError
from tweakline.proto.messages import ArtifactRef
from tweakline.proto.subjects import Bucket


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
