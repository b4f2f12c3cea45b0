"""Pydantic records in a JetStream KV bucket, updated with compare-and-set.

Every write names the revision it read, so two writers (or a redelivered message) can never
silently overwrite each other: the loser gets :class:`StaleRecordError` and re-reads.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel

from tweakline.errors import TweaklineError
from tweakline.proto.messages import ExperimentState, ResultsSegment, SealedResults, is_state_key
from tweakline.proto.subjects import Bucket

R = TypeVar("R", bound=BaseModel)


class StaleRecordError(TweaklineError):
    """The record changed since it was read."""


class InvalidRecordKeyError(TweaklineError):
    """A key that is not a valid, bounded KV key (it would fail, or take the connection down, on every try)."""


# nats-py's own KV key charset, bounded: `$KV.<bucket>.<key>` must stay far below nats-server's
# 4 KiB control line, past which the server closes the whole connection.
KEY_MAX_LENGTH = 256
# How many results segments a reader asks for at once.
SEGMENT_READS = 16
_KEY = re.compile(rf"[-/_=.a-zA-Z0-9]{{1,{KEY_MAX_LENGTH}}}")


def check_key(key: str) -> str:
    """``key`` if it is a valid record key; otherwise :class:`InvalidRecordKeyError` naming it."""
    if not isinstance(key, str) or not _KEY.fullmatch(key) or key.startswith(".") or key.endswith("."):
        shown = key if not isinstance(key, str) or len(key) <= 40 else f"{key[:40]}... ({len(key)} characters)"
        raise InvalidRecordKeyError(
            f"record key {shown!r} is not valid: expected 1-{KEY_MAX_LENGTH} letters, digits or '-/_=.', "
            "not starting or ending with '.'"
        )
    return key


class RecordStore(Generic[R]):
    """Typed records keyed by id in one KV bucket."""

    def __init__(self, kv: KeyValue, model: type[R]):
        self.kv = kv
        self.model = model

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str, model: type[R]) -> RecordStore[R]:
        """Bind to an existing bucket (created by ``ensure_topology``)."""
        return cls(await js.key_value(bucket), model)

    async def get(self, key: str) -> tuple[R, int] | None:
        """The record and its revision, or ``None``."""
        try:
            entry = await self.kv.get(check_key(key))
        except (KeyNotFoundError, NotFoundError):
            return None
        if entry.value is None or entry.operation in ("DEL", "PURGE"):
            return None
        return self.model.model_validate_json(entry.value), int(entry.revision or 0)

    async def create(self, key: str, record: R) -> int | None:
        """Store a new record; ``None`` when the key already exists."""
        try:
            return await self.kv.create(check_key(key), record.model_dump_json().encode())
        except (KeyWrongLastSequenceError, BadRequestError):
            return None

    async def update(self, key: str, record: R, revision: int, *, data: bytes | None = None) -> int:
        """Replace the record read at ``revision``; raise :class:`StaleRecordError` if it moved on.

        ``data``: the record's JSON when the caller serialised it already (it must equal
        ``record.model_dump_json()``; the scheduler assembles its states from cached parts).
        """
        try:
            payload = record.model_dump_json().encode() if data is None else data
            return await self.kv.update(check_key(key), payload, last=revision)
        except (KeyWrongLastSequenceError, BadRequestError) as exc:
            raise StaleRecordError(f"{key} changed since revision {revision}") from exc

    async def mutate(self, key: str, change: Callable[[R | None], Awaitable[R] | R], attempts: int = 10) -> R:
        """Read-modify-write with retries on conflict; ``change`` gets the current record or ``None``."""
        for _ in range(attempts):
            current = await self.get(key)
            result = change(current[0] if current else None)
            record = await result if isinstance(result, Awaitable) else result
            if current is None:
                if await self.create(key, record) is not None:
                    return record
                continue
            try:
                await self.update(key, record, current[1])
                return record
            except StaleRecordError:
                continue
        raise StaleRecordError(f"{key}: gave up after {attempts} conflicting updates")

    async def keys(self) -> list[str]:
        """Every key in the bucket."""
        for attempt in range(2):
            try:
                return list(await self.kv.keys())
            except NotFoundError:
                return []
            except Exception as exc:  # nats-py raises NoKeysError (a NatsError subclass) for an empty bucket
                if type(exc).__name__ != "NoKeysError":
                    raise
            # nats-py's watcher can report "no keys" before the first entry arrived (seen once in a
            # full test run): an empty answer from a bucket holding values is asked again, once.
            if attempt or (await self.kv.status()).values == 0:
                return []
        return []


class ExperimentStore(RecordStore[ExperimentState]):
    """The experiments bucket: each experiment's state, and the results segments it names.

    :meth:`get` returns the whole state (segments joined in, as :meth:`ExperimentState.with_segments`
    says); :meth:`get_stored` the state as stored, for what only needs its summary
    (:attr:`ExperimentState.trials_recorded`, :meth:`ExperimentState.best_score`) or, with
    :meth:`segments`, for the scheduler. :meth:`keys` lists states only, filtered by the server.
    Only the scheduler writes (:meth:`RecordStore.update` with the stored form, and
    :meth:`put_segment`).
    """

    def __init__(self, kv: KeyValue):
        super().__init__(kv, ExperimentState)

    @classmethod
    async def open_bucket(cls, js: JetStreamContext) -> ExperimentStore:
        """Bind to the experiments bucket (created by ``ensure_topology``)."""
        return cls(await js.key_value(Bucket.EXPERIMENTS.value))

    async def get_stored(self, key: str) -> tuple[ExperimentState, int] | None:
        """The state as stored (results since the last segment, ``sealed`` naming the rest) and its revision."""
        return await super().get(key)

    async def get(self, key: str) -> tuple[ExperimentState, int] | None:
        """The whole state (every result, ``sealed`` empty) and the revision of its stored entry."""
        found = await self.get_stored(key)
        if found is None or not found[0].sealed:
            return found
        return found[0].with_segments(await self.segments(found[0])), found[1]

    async def segments(self, state: ExperimentState) -> list[ResultsSegment]:
        """The segments ``state`` names, in its order; :class:`MissingSegmentError` if one is gone."""

        async def one(sealed: SealedResults) -> ResultsSegment:
            try:
                entry = await self.kv.get(check_key(sealed.key))
            except (KeyNotFoundError, NotFoundError):
                entry = None
            if entry is None or not entry.value:
                raise MissingSegmentError(
                    f"experiment {state.experiment_id}: its results segment {sealed.key!r} "
                    f"({sealed.trials} trials) is missing from the experiments bucket"
                )
            return ResultsSegment.model_validate_json(entry.value)

        out: list[ResultsSegment] = []
        for start in range(0, len(state.sealed), SEGMENT_READS):  # a few requests in flight, not hundreds
            out += await asyncio.gather(*(one(sealed) for sealed in state.sealed[start : start + SEGMENT_READS]))
        return out

    async def put_segment(self, key: str, segment: ResultsSegment, data: bytes | None = None) -> int:
        """Write a new segment (its key is new: never one a state already names)."""
        return await self.kv.put(check_key(key), segment.model_dump_json().encode() if data is None else data)

    async def keys(self) -> list[str]:
        """The experiments' ids: the keys of their states, never of their segments (the server filters)."""
        for attempt in range(2):
            try:
                # One token: an id has no '.', a segment's key has two (results_key).
                watcher = await self.kv.watch("*", ignore_deletes=True, meta_only=True)
            except NotFoundError:
                return []
            keys: list[str] = []
            try:
                async for entry in watcher:
                    if entry is None:  # everything stored so far was sent
                        break
                    if is_state_key(entry.key):
                        keys.append(entry.key)
            finally:
                await watcher.stop()
            # As in RecordStore.keys: an empty answer from a bucket holding values is asked again, once.
            if keys or attempt or (await self.kv.status()).values == 0:
                return keys
        return []


class MissingSegmentError(TweaklineError):
    """A results segment an experiment's state names is not in the bucket (deleted by hand, or lost)."""
