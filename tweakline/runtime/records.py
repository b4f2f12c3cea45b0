"""Pydantic records in a JetStream KV bucket, updated with compare-and-set.

Every write names the revision it read, so two writers (or a redelivered message) can never
silently overwrite each other: the loser gets :class:`StaleRecordError` and re-reads.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel

from tweakline.errors import TweaklineError

R = TypeVar("R", bound=BaseModel)


class StaleRecordError(TweaklineError):
    """The record changed since it was read."""


class InvalidRecordKeyError(TweaklineError):
    """A key that is not a valid, bounded KV key (it would fail, or take the connection down, on every try)."""


# nats-py's own KV key charset, bounded: `$KV.<bucket>.<key>` must stay far below nats-server's
# 4 KiB control line, past which the server closes the whole connection.
KEY_MAX_LENGTH = 256
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
