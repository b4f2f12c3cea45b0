"""Code bundles: the trainer's folder as one content-addressed, size-limited tar.gz.

``tweakline submit`` packs the code folder (``model.trainer.code``), stores it in the datasets
object store under its sha256 and rewrites the tweak file to ``code: object:code:<sha256>``.
Runners and the evaluator fetch it once by that hash (the store's bytes are checked against it,
and again here before unpacking), unpack it into ``<cache>/<sha256>`` and run the trainer there.
A bundle whose bytes do not match its name is refused.
"""

from __future__ import annotations

import gzip
import hmac
import io
import re
import tarfile
from pathlib import Path

from tweakline.errors import ArtifactError
from tweakline.ml.artifacts import _SKIPPED_DIRS, MAX_CODE_BYTES, _add_tree, sha256_hex

CODE_SOURCE = re.compile(r"^object:code:([0-9a-f]{64})$")

SKIPPED_DIRS: frozenset[str] = _SKIPPED_DIRS
"""Directory names a bundle leaves out (``.git``, ``.venv``, caches): whoever collects the files can skip them too."""


def pack_code(code_dir: Path, limit: int = MAX_CODE_BYTES) -> tuple[bytes, str]:
    """The code folder as a deterministic tar.gz (``.git``, ``.venv``, caches left out) and its sha256."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_tree(tar, code_dir, "code", limit)
    data = gzip.compress(raw.getvalue(), mtime=0)
    return data, sha256_hex(data)


def bundle_digest(code: str) -> str | None:
    """The sha256 of an ``object:code:<sha256>`` source, else None."""
    match = CODE_SOURCE.match(code)
    return match.group(1) if match else None


def unpack_code(data: bytes, expected_sha256: str, cache_dir: Path) -> Path:
    """Check ``data`` against its hash and unpack it into ``cache_dir/<sha256>`` (once); the code folder."""
    actual = sha256_hex(data)
    if not hmac.compare_digest(actual, expected_sha256):
        raise ArtifactError(
            f"code bundle sha256:{expected_sha256[:12]} has sha256:{actual[:12]}: the bytes were changed "
            "(tampered or truncated), refusing to run them"
        )
    root = cache_dir / actual
    if not root.is_dir():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f"{actual}.partial"
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                tar.extractall(tmp, filter="data")  # no absolute paths, '..' or links out
        except (tarfile.TarError, OSError) as exc:
            raise ArtifactError(f"code bundle sha256:{actual[:12]} is not a readable tar.gz: {exc}") from None
        (tmp / "code").mkdir(exist_ok=True)
        (tmp / "code").replace(root)
    return root


def cached_code(code: str, cache_dir: Path | None) -> Path | None:
    """The unpacked folder of bundle ``code`` if it is in ``cache_dir``."""
    digest = bundle_digest(code)
    if digest is None or cache_dir is None:
        return None
    root = cache_dir / digest
    return root if root.is_dir() else None


async def fetch_code_bundle(js: object, code: str, cache_dir: Path) -> Path | None:
    """Make bundle ``code`` available in ``cache_dir`` (fetched by hash over NATS once); None for a local folder.

    Raises :class:`ArtifactError` when the stored bytes do not match the hash (refused, never run).
    """
    import asyncio

    from tweakline.runtime.objects import get_dataset

    digest = bundle_digest(code)
    if digest is None:
        return None
    cached = cached_code(code, cache_dir)
    if cached is not None:
        return cached
    data = await get_dataset(js, digest)  # type: ignore[arg-type]
    return await asyncio.to_thread(unpack_code, data, digest, cache_dir)
