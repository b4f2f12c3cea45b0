"""Following a release's history in KV: load each newly live revision and swap it in."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tweakline.errors import TweaklineError
from tweakline.model_server.api import ServerMetrics
from tweakline.model_server.model import ModelSlot, load_revision
from tweakline.proto.messages import ArtifactRef, ReleaseHistory
from tweakline.proto.subjects import Bucket

log = logging.getLogger(__name__)

RECONCILE_S = 30.0


class ReleaseFollower:
    """Keeps ``slot`` on the live revision of ``release`` (or on one pinned revision)."""

    def __init__(
        self,
        js: Any,
        release: str,
        slot: ModelSlot,
        metrics: ServerMetrics,
        *,
        pin_revision: int = 0,
        artifact: str = "",
        sha256: str = "",
    ):
        self.js = js
        self.release = release
        self.slot = slot
        self.metrics = metrics
        self.pin_revision = pin_revision
        self.artifact = artifact
        self.sha256 = sha256.strip().lower()
        self._applying = asyncio.Lock()

    async def apply(self, history: ReleaseHistory) -> None:
        """Load and swap in the revision ``history`` says should be served, if it is not already."""
        async with self._applying:  # the watch and the periodic re-read never load at the same time
            await self._apply(history)

    async def _apply(self, history: ReleaseHistory) -> None:
        wanted = self.pin_revision or history.current
        if wanted is None:
            self.slot.last_error = f"release {self.release} has no live revision"
            return
        current = self.slot.current
        if current is not None and current.revision == wanted:
            return
        revision = history.revision(wanted)
        if revision is None:
            self.slot.last_error = f"release {self.release} has no revision {wanted}"
            log.error("%s", self.slot.last_error)
            return
        ref = revision.artifact
        if self.sha256 and self.sha256 != ref.sha256:
            if not self.artifact:
                self.slot.last_error = (
                    f"configured sha256 {self.sha256[:12]}... differs from the one recorded for revision {wanted} "
                    f"({ref.sha256[:12]}...): refusing to serve it"
                )
                log.error("%s", self.slot.last_error)
                self.metrics.load_failures.inc()
                return
        if self.artifact:
            ref = ArtifactRef(bucket=ref.bucket, name=self.artifact, sha256=self.sha256 or ref.sha256, size=0)
        try:
            loaded = await load_revision(self.js, self.release, revision, ref)
        except TweaklineError as exc:
            self.slot.last_error = f"revision {wanted}: {exc}"
            self.metrics.load_failures.inc()
            log.error("cannot serve release %s revision %s: %s", self.release, wanted, exc)
            return
        old = self.slot.swap(loaded)
        self.metrics.revision.set(loaded.revision)
        if old is not None:
            self.metrics.swaps.inc()
        log.info(
            "release %s: now serving revision %s (was %s)",
            self.release,
            loaded.revision,
            None if old is None else old.revision,
        )

    async def run(self) -> None:
        """Follow the release until cancelled: a KV watch, plus a periodic re-read in case a watch silently stalls."""
        reconcile = asyncio.create_task(self._reconcile())
        try:
            await self._watch()
        finally:
            reconcile.cancel()

    async def _reconcile(self) -> None:
        kv = await self.js.key_value(Bucket.RELEASES.value)
        while not (self.pin_revision and self.slot.current is not None):
            await asyncio.sleep(RECONCILE_S)
            try:
                entry = await kv.get(self.release)
                if entry.value:
                    await self.apply(ReleaseHistory.model_validate_json(entry.value))
            except Exception as exc:
                log.debug("re-reading release %s: %s", self.release, exc)

    async def _watch(self) -> None:
        kv = await self.js.key_value(Bucket.RELEASES.value)
        while True:
            watcher = None
            try:
                watcher = await kv.watch(self.release)
                async for entry in watcher:
                    if entry is None or entry.value is None or entry.operation in ("DEL", "PURGE"):
                        continue
                    await self.apply(ReleaseHistory.model_validate_json(entry.value))
                    if self.pin_revision and self.slot.current is not None:
                        return  # a pinned server (Helm) loads once; a new revision is a new rollout
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection flaps, a bad record: keep serving what we have
                log.warning("watching release %s failed (%s); retrying", self.release, exc)
            finally:
                if watcher is not None:
                    try:
                        await watcher.stop()
                    except Exception:
                        pass
            await asyncio.sleep(1.0)
