"""Connecting to NATS over mutual TLS, and the JetStream topology (streams, consumers, buckets).

The topology is declared here once, from the names in :mod:`tweakline.proto.subjects`; the
local stack and the chart's setup job call :func:`ensure_topology`, services only bind to it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from tweakline.errors import BusError, ConfigurationError
from tweakline.proto.permissions import inbox_prefix
from tweakline.proto.subjects import (
    CONSUMER_FILTERS,
    DEFAULT_POOL,
    DUPLICATE_WINDOW_S,
    SCHEDULER_LEASE_TTL_S,
    STREAM_SUBJECTS,
    WEBHOOK_REPLAY_TTL_S,
    Bucket,
    Consumer,
    Stream,
    pool_consumer,
    pool_filter,
)
from tweakline.runtime.pki import TlsFiles
from tweakline.runtime.settings import Settings
from tweakline.runtime.tlsreload import LoadedContext

log = logging.getLogger(__name__)

DAY_S = 86_400.0
# Deliveries of a message to the other services' consumers before nats-server gives up on it;
# a handler that fails on the last one dead-letters the message instead of letting it vanish.
SERVICE_MAX_DELIVER = 5


def tls_context(files: TlsFiles) -> ssl.SSLContext:
    """A client context presenting this identity's certificate and trusting only its CA."""
    files.require()
    digest = files.digest()  # before loading: a renewal racing the load is seen as a change later
    try:
        ctx = LoadedContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server's certificate and name
        ctx.load_verify_locations(cafile=str(files.ca))
        ctx.load_cert_chain(str(files.cert), str(files.key))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(f"cannot load TLS files from {files.directory}: {exc}") from exc
    ctx.loaded_digest = digest
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def servers_of(nats_url: str) -> list[str]:
    """The server URLs in ``TWEAKLINE_NATS_URL``: one, or a cluster's nodes separated by commas."""
    return [url.strip() for url in nats_url.split(",") if url.strip()]


def connect_options(settings: Settings, name: str) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` (and FastStream's broker) for this process.

    ``tls`` is ``None`` only in the benchmark-only plaintext mode
    (``TWEAKLINE_INSECURE_PLAINTEXT_FOR_BENCHMARKS``); by default it is always mutual TLS.
    """
    if settings.insecure_plaintext_for_benchmarks:
        log.warning("INSECURE: connecting without TLS (TWEAKLINE_INSECURE_PLAINTEXT_FOR_BENCHMARKS is set)")
        return {
            "servers": servers_of(settings.nats_url),
            "tls": None,
            "tls_hostname": None,
            "name": name,
            "inbox_prefix": inbox_prefix(settings.principal()),
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": 5,
        }
    return {
        "servers": servers_of(settings.nats_url),
        "tls": tls_context(TlsFiles(settings.tls_path())),
        "tls_hostname": "localhost" if "127.0.0.1" in settings.nats_url or "localhost" in settings.nats_url else None,
        "name": name,
        # Replies come to this identity's own inbox: the only one its permissions let it read.
        "inbox_prefix": inbox_prefix(settings.principal()),
        "max_reconnect_attempts": -1,  # a restarted server is waited for, never given up on
        "reconnect_time_wait": 0.5,
        "connect_timeout": 5,
    }


async def connect(settings: Settings, name: str, **overrides: Any) -> Client:
    """Connect to NATS over mTLS as ``settings.identity``; raise :class:`BusError` with the reason."""
    options = connect_options(settings, name)
    options.update(overrides)
    for optional in ("tls_hostname", "tls"):
        if options.get(optional) is None:
            options.pop(optional, None)

    async def _quiet(exc: Exception) -> None:
        log.debug("nats: %s", exc)

    options.setdefault("error_cb", _quiet)
    try:
        return await nats.connect(**options)
    except Exception as exc:  # nats-py raises a mix of ssl, OSError and its own errors
        raise BusError(f"cannot connect to {settings.nats_url} as {settings.principal()}: {exc}") from exc


def pool_consumer_config(pool: str, settings: Settings) -> api.ConsumerConfig:
    """Runner pool ``pool``'s durable consumer on the trials work queue: only its own pool's trials."""
    return _runner_consumer_config(pool_consumer(pool), pool_filter(pool), settings)


def _runner_consumer_config(name: str, subject: str, settings: Settings) -> api.ConsumerConfig:
    # A runner heartbeats (in_progress) while training, so ack_wait bounds a *dead* runner.
    # Deliveries are unlimited here on purpose: the runner itself fails a trial delivered more
    # than trial_max_deliver times. With a server-side limit, a runner dying on the last
    # delivery would leave the trial undelivered and unreported for ever.
    return api.ConsumerConfig(
        durable_name=name,
        filter_subject=subject,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=settings.trial_ack_wait_s,
        max_deliver=-1,
        max_ack_pending=1024,
        deliver_policy=api.DeliverPolicy.ALL,
    )


def consumer_config(consumer: Consumer, settings: Settings) -> api.ConsumerConfig:
    """The durable consumer's configuration: explicit acks, bounded redelivery with back-off."""
    _stream, subject = CONSUMER_FILTERS[consumer]
    if consumer is Consumer.TRIAL_RUNNERS:
        return _runner_consumer_config(consumer.value, subject, settings)
    return api.ConsumerConfig(
        durable_name=consumer.value,
        filter_subject=subject,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=60.0,
        max_deliver=SERVICE_MAX_DELIVER,
        max_ack_pending=256,
        deliver_policy=api.DeliverPolicy.ALL,
    )


def stream_config(stream: Stream, replicas: int = 1) -> api.StreamConfig:
    """Storage, retention, de-duplication and replication of each stream."""
    common: dict[str, Any] = {
        "name": stream.value,
        "num_replicas": replicas,
        "subjects": STREAM_SUBJECTS[stream],
        "storage": api.StorageType.FILE,  # a restarted server keeps the work
        "duplicate_window": DUPLICATE_WINDOW_S,
    }
    if stream is Stream.TRIALS:
        return api.StreamConfig(retention=api.RetentionPolicy.WORK_QUEUE, max_age=7 * DAY_S, **common)
    if stream is Stream.DEAD_LETTERS:
        return api.StreamConfig(retention=api.RetentionPolicy.LIMITS, max_age=14 * DAY_S, max_msgs=100_000, **common)
    return api.StreamConfig(retention=api.RetentionPolicy.LIMITS, max_age=90 * DAY_S, **common)


async def _ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    try:
        await js.stream_info(config.name or "")
    except NotFoundError:
        await js.add_stream(config)
        return
    try:
        await js.update_stream(config)
    except BadRequestError as exc:  # e.g. retention cannot change: keep the existing stream
        log.warning("stream %s kept as is: %s", config.name, exc.description)


def cluster_replicas(nc: Client) -> int:
    """How many copies of each stream the server we are connected to can keep: 3 in a cluster of
    three or more nodes (JetStream's usual production choice), else the cluster's size (1 alone)."""
    info = getattr(nc, "_server_info", None) or {}  # nats-py keeps the server's INFO here
    if not info.get("cluster"):
        return 1
    return max(1, min(3, len(info.get("connect_urls") or [])))


async def wait_for_jetstream(js: JetStreamContext, timeout: float = 60.0) -> None:
    """Wait until JetStream answers (a fresh cluster first elects its meta leader)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await js.account_info()
            return
        except Exception as exc:  # timeouts and 503s while the cluster forms
            if asyncio.get_running_loop().time() >= deadline:
                raise BusError(f"JetStream not ready within {timeout:.0f}s: {exc}") from exc
            await asyncio.sleep(0.25)


async def ensure_topology(js: JetStreamContext, settings: Settings, replicas: int | None = None) -> None:
    """Create or update every stream, durable consumer, KV bucket and object store (idempotent).

    ``replicas``: copies of every stream, bucket and store; by default what the cluster we are
    connected to allows (:func:`cluster_replicas`: 3 on a cluster, 1 on a single server).
    """
    await wait_for_jetstream(js)  # on a cluster: once it has a meta leader, it knows its peers
    if replicas is None:
        replicas = settings.stream_replicas or cluster_replicas(js._nc)
    # Independent of each other: asked for at once, not one round trip after the other (the local
    # stack's start waits for this). Consumers need their streams first.
    await asyncio.gather(*(_ensure_stream(js, stream_config(stream, replicas)) for stream in Stream))
    consumers = [(stream, consumer_config(consumer, settings)) for consumer, (stream, _s) in CONSUMER_FILTERS.items()]
    # One consumer per runner pool the platform has (the default pool's is Consumer.TRIAL_RUNNERS).
    consumers += [(Stream.TRIALS, pool_consumer_config(pool, settings)) for pool in settings.pools if pool != DEFAULT_POOL]

    async def _ensure_consumer(stream: Stream, config: api.ConsumerConfig) -> None:
        name = config.durable_name or ""
        try:
            await js.consumer_info(stream.value, name)
        except NotFoundError:
            await js.add_consumer(stream.value, config)
            return
        try:  # bring an existing consumer's editable settings (ack_wait, max_deliver, filter) up to date
            await js.add_consumer(stream.value, config)
        except BadRequestError as exc:
            log.warning("consumer %s kept as is: %s", name, exc.description)

    async def _ensure_consumers(stream: Stream) -> None:
        # One after the other, in order, within a stream: on a work queue no two consumers' filters
        # may overlap, so a consumer of before pools is narrowed before a pool's own is added.
        for of, config in consumers:
            if of is stream:
                await _ensure_consumer(stream, config)

    file = api.StorageType.FILE
    await asyncio.gather(
        *(_ensure_consumers(stream) for stream in dict.fromkeys(stream for stream, _ in consumers)),
        js.create_key_value(api.KeyValueConfig(bucket=Bucket.EXPERIMENTS.value, history=5, storage=file, replicas=replicas)),
        js.create_key_value(api.KeyValueConfig(bucket=Bucket.RELEASES.value, history=20, storage=file, replicas=replicas)),
        js.create_key_value(api.KeyValueConfig(bucket=Bucket.LINEAGE.value, history=5, storage=file, replicas=replicas)),
        # Scheduler ownership leases expire by themselves: a key not renewed within the TTL vanishes.
        js.create_key_value(
            api.KeyValueConfig(
                bucket=Bucket.SCHEDULER_LEASES.value, history=1, ttl=SCHEDULER_LEASE_TTL_S, storage=file, replicas=replicas
            )
        ),
        js.create_object_store(Bucket.ARTIFACTS.value, config=api.ObjectStoreConfig(storage=file, replicas=replicas)),
        js.create_object_store(Bucket.DATASETS.value, config=api.ObjectStoreConfig(storage=file, replicas=replicas)),
        # Webhook request ids expire by themselves: replays are refused for the TTL, nothing piles up.
        js.create_key_value(
            api.KeyValueConfig(
                bucket=Bucket.WEBHOOK_DELIVERIES.value, history=1, ttl=WEBHOOK_REPLAY_TTL_S, storage=file, replicas=replicas
            )
        ),
    )
