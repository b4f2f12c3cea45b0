"""The permission matrix: every identity x every JetStream API family x every stream, bucket and durable.

Generated from the map's operations (:func:`tweakline.proto.permissions.allowed_operations`) and
JetStream's API subject list (:data:`tweakline.proto.permissions.JS_API`), tried on a real
nats-server of its own (refused attempts must not harm other tests; allowed destructive ones would).
Each identity gets one connection; every attempt is sent at once, then a sentinel publish that is
always refused and a flush: the server answers in order, so once the sentinel's violation is back,
every refusal of an earlier attempt is too, and an attempt with no violation was allowed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import NatsFixture, serving
from tests.waiting import until
from tweakline.proto.permissions import (
    CONSUMER_OPS,
    JS_API,
    KV_BUCKETS,
    LIMITED_IDENTITIES,
    OBJECT_BUCKETS,
    STREAM_OPS,
    Identity,
    Op,
    Permissions,
    all_streams,
    allowed_operations,
    inbox_prefix,
    render_identity_table,
)
from tweakline.proto.subjects import CONSUMER_FILTERS, Subject
from tweakline.runtime.bus import connect
from tweakline.runtime.natsserver import EmbeddedNatsServer, ServerConfig
from tweakline.runtime.pki import TlsFiles

REPO = Path(__file__).resolve().parents[2]
SENTINEL = "tweakline.matrix-sentinel"
# nats-py reports the server's -ERR in lower case: subjects are compared lower-cased (none collide).
VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]+)"', re.IGNORECASE)


@dataclass(frozen=True)
class Attempt:
    """One operation on one resource: the subjects it publishes (or subscribes to)."""

    op: Op
    resource: str
    subjects: tuple[str, ...]
    subscribe: bool = False


def _fill(op: Op, **names: str) -> tuple[str, ...]:
    fill = {"tail": "matrix.probe", "name": "matrix-probe", **names}
    return tuple(t.format(**fill) for t in JS_API[op])


def attempts(identity: Identity) -> list[Attempt]:
    """Every operation the matrix tries for ``identity`` (the same list for every identity but the inboxes)."""
    out: list[Attempt] = []
    for stream in all_streams():
        out += [Attempt(op, stream, _fill(op, stream=stream)) for op in STREAM_OPS]
    for consumer, (stream, _f) in CONSUMER_FILTERS.items():
        res = f"{stream.value}/{consumer.value}"
        out += [Attempt(op, res, _fill(op, stream=stream.value, consumer=consumer.value)) for op in CONSUMER_OPS]
    out += [Attempt(Op.KV_PUT, b.value, _fill(Op.KV_PUT, bucket=b.value)) for b in KV_BUCKETS]
    out += [Attempt(Op.OBJECT_PUT, b.value, _fill(Op.OBJECT_PUT, bucket=b.value)) for b in OBJECT_BUCKETS]
    for family in Subject:
        out.append(Attempt(Op.PUBLISH, family.value, (f"{family.value}.matrix-exp",)))
        out.append(Attempt(Op.SUBSCRIBE, family.value, (f"{family.value}.>",), subscribe=True))
    out.append(Attempt(Op.INBOX_OWN, "", (f"{inbox_prefix(identity)}.>",), subscribe=True))
    out.append(Attempt(Op.INBOX_ALL, "", ("_INBOX.>",), subscribe=True))
    for other in LIMITED_IDENTITIES + (Identity.ADMIN,):
        if other is not identity:
            out.append(Attempt(Op.INBOX_OTHER, other.value, (f"{inbox_prefix(other)}.>",), subscribe=True))
    out += [Attempt(op, "", _fill(op)) for op in (Op.ACCOUNT_INFO, Op.STREAM_NAMES)]
    return out


async def try_all(fixture: NatsFixture, identity: Identity) -> dict[Attempt, bool]:
    """``attempt -> allowed`` as the server decides, for one identity on one connection."""
    refused: set[str] = set()

    async def on_error(exc: Exception) -> None:
        found = VIOLATION.search(str(exc))
        if found:
            refused.add(found.group(2).lower())

    nc = await connect(fixture.settings(identity), f"matrix-{identity}", error_cb=on_error, allow_reconnect=False)
    try:
        reply = f"{inbox_prefix(identity)}.matrix"
        todo = attempts(identity)
        for attempt in todo:
            for subject in attempt.subjects:
                if attempt.subscribe:
                    await nc.subscribe(subject)
                else:
                    await nc.publish(subject, b"", reply=reply)
        await nc.publish(SENTINEL, b"")
        await nc.flush(timeout=30)
        await until(lambda: SENTINEL.lower() in refused, f"the sentinel's violation for {identity}", timeout=30)
    finally:
        await nc.close()
    # An operation is allowed only if every one of its subjects is (a partial grant is a defect too).
    return {a: not any(s.lower() in refused for s in a.subjects) for a in todo}


def mismatches(results: dict[Identity, dict[Attempt, bool]]) -> list[str]:
    """Where the server and the documented operations disagree."""
    wrong = []
    for identity, outcome in results.items():
        expected = allowed_operations(identity)
        for attempt, allowed in outcome.items():
            should = (attempt.op, attempt.resource) in expected
            if allowed != should:
                verdict = "allowed" if allowed else "refused"
                wrong.append(f"{identity} {attempt.op} {attempt.resource or '-'}: server {verdict}, table says {not allowed}")
    return wrong


async def run_matrix(fixture: NatsFixture) -> dict[Identity, dict[Attempt, bool]]:
    """Every limited identity's attempts, in parallel."""
    outcomes = await asyncio.gather(*(try_all(fixture, identity) for identity in LIMITED_IDENTITIES))
    return dict(zip(LIMITED_IDENTITIES, outcomes, strict=True))


def matrix_server(pki_root: Path, store: Path, permissions: dict[Identity, Permissions] | None = None) -> Iterator[NatsFixture]:
    """A nats-server of its own with the topology, enforcing ``permissions`` (default: proto's map)."""
    config = ServerConfig(store_dir=store, tls=TlsFiles(pki_root / Identity.NATS_SERVER), permissions=permissions)
    yield from serving(EmbeddedNatsServer(config, store / "run"), pki_root)


@pytest.fixture(scope="module")
def matrix_nats(pki_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsFixture]:
    yield from matrix_server(pki_root, tmp_path_factory.mktemp("matrix"))


async def test_every_identity_can_do_exactly_what_the_table_says(matrix_nats: NatsFixture) -> None:
    results = await run_matrix(matrix_nats)
    tried = sum(len(r) for r in results.values())
    assert tried > 7 * 150, tried  # the whole API for every identity, not a sample
    assert sum(sum(r.values()) for r in results.values()) > 100  # and plenty of it allowed
    assert mismatches(results) == []


def test_no_identity_but_admin_may_destroy_or_snoop() -> None:
    """The rules the table must keep whatever grants are added."""
    never = {Op.STREAM_CREATE, Op.STREAM_UPDATE, Op.STREAM_DELETE, Op.STREAM_PURGE, Op.STREAM_MSG_DELETE}
    never |= {Op.STREAM_SNAPSHOT, Op.CONSUMER_DELETE, Op.CONSUMER_LIST, Op.INBOX_ALL, Op.INBOX_OTHER}
    for identity in LIMITED_IDENTITIES:
        caps = allowed_operations(identity)
        assert not {op for op, _r in caps} & never, identity
        streams_read = {r for op, r in caps if op in (Op.EPHEMERAL_CREATE, Op.NAMED_CREATE)}
        assert streams_read == {r for op, r in caps if op is Op.FLOW_CONTROL}, identity  # big objects need it
        # the legacy create carries the consumer's name in its body: never where durables live
        durable_streams = {s.value for s, _f in CONSUMER_FILTERS.values()}
        assert not {r for op, r in caps if op is Op.EPHEMERAL_CREATE} & durable_streams, identity


def test_the_documented_table_is_the_generated_one() -> None:
    doc = (REPO / "docs" / "security.md").read_text()
    assert render_identity_table() in doc, "docs/security.md is stale: run python -m tweakline.cli.generate"
