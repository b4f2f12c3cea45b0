"""What every service shares: its broker over mTLS, safe decoding with dead letters, de-duplicated publishing.

A service is a FastStream app built by ``tweakline.<name>.app.create_app(settings)`` and run
by ``tweakline service NAME`` (:mod:`tweakline.cli.services` maps names to apps) — the same entry point on a laptop and in a pod.

Handlers take their pydantic payload (``async def on_x(body: Model, msg: NatsMessage)``);
FastStream decodes and validates it. A payload that cannot be decoded (too large, not JSON,
wrong shape) never reaches a handler: :class:`_Intake`, the innermost broker middleware, sends it
to the dead-letter subject once and terminates it. :func:`make_app` runs the service's start-up
hooks before any subscriber starts, so no handler sees a message before its stores are bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from faststream import FastStream
from faststream.message import StreamMessage
from faststream.middlewares import BaseMiddleware
from faststream.nats import NatsBroker, NatsMessage, NatsRouter
from faststream.nats.schemas import JStream, PullSub
from faststream.nats.security import NatsSecurity
from faststream.specification import AsyncAPI
from nats.errors import ConnectionClosedError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ValidationError

import tweakline
from tweakline.errors import BusError, ConfigurationError
from tweakline.observability import telemetry
from tweakline.proto.messages import DeadLetter, Message
from tweakline.proto.permissions import inbox_prefix
from tweakline.proto.subjects import CONSUMER_FILTERS, Consumer, Stream, Subject, pool_consumer, pool_filter
from tweakline.runtime.bus import connect_options
from tweakline.runtime.health import start_health_server
from tweakline.runtime.pki import TlsFiles
from tweakline.runtime.settings import Settings
from tweakline.runtime.tlsreload import CertificateReloader

log = logging.getLogger(__name__)

DEAD_LETTER_PAYLOAD_BYTES = 2048

# (stream, durable) of the consumers this process binds to, for the queue-depth gauges.
_consumed: list[tuple[str, str]] = []


class ConnectionWatch:
    """Knows whether a broker's connection was closed for good, by the server rather than by us.

    nats-py reconnects by itself after a dropped connection (``max_reconnect_attempts=-1``), but a
    connection the server *closes* with a protocol error ("maximum control line exceeded", an
    unparsable ``PUB``) is closed for good: the process would stay up and do nothing. The watch
    records why, answers ``/healthz`` with 503 and calls its ``on_lost`` callbacks (the scaffold
    stops the app and :func:`run_service` exits non-zero), so a supervisor or a liveness probe
    restarts the service.
    """

    def __init__(self, service: str):
        self.service = service
        self.lost: str | None = None
        self.stopping = False
        self._callbacks: list[Callable[[], None]] = []

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once if the connection is closed for good while the service runs."""
        self._callbacks.append(callback)

    def alive(self) -> bool:
        """False once the connection was closed for good (the liveness probe's answer)."""
        return self.lost is None

    async def stop(self) -> None:
        """The service is stopping: its own close of the connection is expected."""
        self.stopping = True

    def closed(self, connection: Any) -> None:
        """The connection closed: if nobody asked for it, the service has lost the bus for good."""
        if self.stopping or self.lost is not None:
            return
        error = getattr(connection, "last_error", None)
        self.lost = str(error) if error is not None else "closed by the server"
        log.error("%s: the connection to NATS was closed for good (%s); stopping so it can be restarted", self.service, self.lost)
        for callback in self._callbacks:
            callback()


# The watch of each broker made by make_broker (one per service process; tests make several).
_watches: dict[int, ConnectionWatch] = {}


def connection_watch(broker: NatsBroker) -> ConnectionWatch:
    """The :class:`ConnectionWatch` of a broker made by :func:`make_broker`."""
    return _watches[id(broker)]


def make_broker(settings: Settings, name: str) -> NatsBroker:
    """A FastStream NATS broker connecting as this process's identity over mutual TLS."""
    options = connect_options(settings, name)
    watch = ConnectionWatch(name)
    holder: list[NatsBroker] = []

    async def _closed() -> None:
        try:
            connection = holder[0].connection
        except Exception:  # no connection object (never connected)
            connection = None
        watch.closed(connection)

    broker = NatsBroker(
        # Traces: W3C context in NATS headers, a span per message, experiment ids on spans and logs.
        middlewares=telemetry.broker_middlewares(),
        servers=options["servers"],
        security=None
        if options["tls"] is None
        else NatsSecurity(ssl_context=options["tls"], tls_hostname=options["tls_hostname"]),
        name=name,
        inbox_prefix=options["inbox_prefix"],
        max_reconnect_attempts=options["max_reconnect_attempts"],
        reconnect_time_wait=options["reconnect_time_wait"],
        connect_timeout=options["connect_timeout"],
        closed_cb=_closed,
        log_level=logging.DEBUG,  # FastStream's per-message lines are debug noise for operators
    )
    holder.append(broker)
    _watches[id(broker)] = watch
    return broker


Hook = Callable[[], Awaitable[None]]


def make_app(ctx: ServiceContext, title: str, *, start: Iterable[Hook] = (), stop: Iterable[Hook] = ()) -> FastStream:
    """The FastStream application of one service, with its AsyncAPI description.

    ``start`` hooks (binding stores, resuming state, starting workers) run in order once the
    broker is connected and before any subscriber starts: FastStream would otherwise start the
    subscribers before ``after_startup`` hooks, and a message arriving in between would find no
    store (and, unacked, come back only after ``ack_wait``). ``stop`` hooks run in order on
    shutdown, before the broker closes, so a handler's last result or nak still goes out.
    """
    broker = ctx.broker
    watch = _watches.get(id(broker))
    if watch is not None:
        app_stop: list[Hook] = [watch.stop]  # our own close of the connection is not a loss
    else:
        app_stop = []
    broker.add_middleware(_Intake.factory(ctx))  # innermost: sees the handler's own exceptions first
    app = FastStream(
        broker,
        specification=AsyncAPI(title=f"tweakline {title}", version=tweakline.__version__),
        logger=logging.getLogger(f"tweakline.{title}"),
    )
    watcher: list[asyncio.Task[None]] = []

    async def _watch_queues() -> None:
        if _consumed:
            watcher.append(asyncio.create_task(telemetry.watch_queues(broker.connection.jetstream(), list(_consumed))))

    async def _stop_watching() -> None:
        for task in watcher:
            task.cancel()

    starts, stops = list(start), [*app_stop, *stop]

    async def _start() -> None:
        await broker.connect()  # idempotent: broker.start() reuses this connection
        for hook in starts:
            await hook()

    async def _stop() -> None:
        for hook in stops:
            await hook()

    app.on_startup(_start)
    app.on_shutdown(_stop)
    app.after_startup(_watch_queues)
    app.on_shutdown(_stop_watching)
    return app


def durable_subscription(consumer: Consumer, *, batch_size: int = 1, timeout: float = 1.0) -> dict[str, Any]:
    """Arguments binding a FastStream subscriber to a durable consumer made by ``ensure_topology``."""
    stream, subject = CONSUMER_FILTERS[consumer]
    return _durable(stream, consumer.value, subject, batch_size=batch_size, timeout=timeout)


def pool_subscription(pool: str, *, batch_size: int = 1, timeout: float = 1.0) -> dict[str, Any]:
    """Arguments binding a FastStream subscriber to runner pool ``pool``'s consumer (made by ``ensure_topology``)."""
    return _durable(Stream.TRIALS, pool_consumer(pool), pool_filter(pool), batch_size=batch_size, timeout=timeout)


def _durable(stream: Stream, durable: str, subject: str, *, batch_size: int, timeout: float) -> dict[str, Any]:
    if (stream.value, durable) not in _consumed:
        _consumed.append((stream.value, durable))
    return {
        "subject": subject,
        "stream": JStream(name=stream.value, declare=False),
        "durable": durable,
        "pull_sub": PullSub(batch_size=batch_size, timeout=timeout),
    }


class ServiceContext:
    """Per-process helpers handed to a service's handlers."""

    def __init__(self, settings: Settings, broker: NatsBroker, service: str):
        self.settings = settings
        self.broker = broker
        self.service = service
        # Payload model of each handler by name, to say what a refused payload should have been.
        self.payloads: dict[str, type[BaseModel]] = {}

    def subscribe(self, router: NatsRouter, handler: Callable[..., Awaitable[None]], **subscription: Any) -> None:
        """Register ``handler`` (first parameter: its pydantic payload) as a subscriber of ``router``."""
        parameters = list(inspect.signature(handler, eval_str=True).parameters.values())
        model = parameters[0].annotation if parameters else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"handler {handler.__name__}: first parameter is {model!r}, expected a pydantic model (its payload)")
        self.payloads[handler.__name__] = model
        if len(parameters) > 1:
            handler = self._with_message(handler, model, parameters[1:])
        if "pull_sub" in subscription:
            # nats-py gives pull subscriptions the default "_INBOX." unless told: use this identity's own.
            subscription.setdefault("inbox_prefix", f"{inbox_prefix(self.settings.principal())}.".encode())
        router.subscriber(**subscription)(handler)

    def _with_message(
        self, handler: Callable[..., Awaitable[None]], model: type[BaseModel], rest: list[inspect.Parameter]
    ) -> Callable[..., Awaitable[None]]:
        """``handler(payload, msg)`` as a subscriber of the payload alone, handed the message from the broker's context.

        FastStream 0.7 resolves a ``msg: NatsMessage`` parameter in a worker thread (fast_depends runs
        a context field's sync resolver through ``anyio.to_thread``): a thread hop per message, on
        every hot path (trial requests, results). The message is the same object either way.
        """
        if len(rest) != 1 or rest[0].annotation is not NatsMessage:
            raise TypeError(f"handler {handler.__name__}: after its payload it may take only 'msg: NatsMessage'")
        broker = self.broker

        async def subscriber(payload: BaseModel) -> None:
            # Read at call time: the app, made after the subscribers, gives the broker its context.
            await handler(payload, broker.context.get_local("message"))

        subscriber.__name__ = subscriber.__qualname__ = handler.__name__
        subscriber.__doc__ = handler.__doc__
        # The payload's model, as FastStream reads it from the signature (decoding, AsyncAPI).
        subscriber.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("payload", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=model)]
        )
        subscriber.__annotations__ = {"payload": model, "return": None}
        return subscriber

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context of the broker's connection (valid once the broker started)."""
        return self.broker.connection.jetstream()

    async def publish(
        self, message: Message, subject: str, *, msg_id: str, stream: Stream, trace_parent: str | None = None
    ) -> None:
        """Publish to a stored subject with a ``Nats-Msg-Id``, so a retry is stored once.

        ``trace_parent`` (the experiment's ``traceparent``) hangs the publish under the experiment's
        span, in a span of its own (e.g. ``trial.dispatch``), whatever message is being handled.
        """
        with telemetry.publish_span(message, trace_parent):
            await self.broker.publish(message, subject, headers={"Nats-Msg-Id": msg_id}, stream=stream.value)
        telemetry.observe_published(message)

    async def refuse(self, msg: StreamMessage[Any], reason: str) -> None:
        """Dead-letter a message that can never be handled and terminate it (never redelivered)."""
        raw = msg.raw_message
        await self.dead_letter(getattr(raw, "subject", ""), msg.body, reason, dict(msg.headers or {}))
        await msg.reject()

    async def dead_letter(self, subject: str, raw: bytes, reason: str, headers: dict[str, Any] | None = None) -> None:
        """Record a refused message with its reason on ``tweakline.deadletter.<service>``."""
        log.warning("dead letter from %s: %s", subject, reason)
        telemetry.observe_dead_letter(self.service)
        letter = DeadLetter(
            service=self.service,
            subject=subject,
            reason=reason,
            payload=raw[:DEAD_LETTER_PAYLOAD_BYTES].decode("utf-8", errors="replace"),
            headers={str(k): str(v) for k, v in (headers or {}).items()},
        )
        try:
            await self.broker.publish(letter, f"{Subject.DEAD_LETTER.value}.{self.service}", stream=Stream.DEAD_LETTERS.value)
        except Exception:  # a dead letter must never take the service down
            log.exception("could not record a dead letter")


# Frames of these packages sit between the middleware and a handler: an error raised with no
# other frame in between was raised before the handler ran (decoding its arguments).
_DECODING_PACKAGES = ("faststream", "fast_depends", "pydantic", "pydantic_core", "json")


def _raised_before_handler(exc: BaseException) -> bool:
    tb = exc.__traceback__.tb_next if exc.__traceback__ else None  # skip consume_scope's own frame
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.split(".")[0] not in _DECODING_PACKAGES:
            return False
        tb = tb.tb_next
    return True


class _Intake(BaseMiddleware):
    """Dead-letters a payload no handler can take: too large, not JSON, or not the handler's model.

    Such a message can never succeed, so it is recorded once on ``tweakline.deadletter.<service>``
    with the reason and terminated; the handler is not called and the service keeps running.
    Everything else (acks, naks, the handler's own errors) stays the handler's business.
    """

    def __init__(self, msg: Any, /, *, context: Any, service: ServiceContext):
        super().__init__(msg, context=context)
        self.service = service

    @classmethod
    def factory(cls, service: ServiceContext) -> Callable[..., _Intake]:
        """The broker middleware (called once per message) bound to ``service``."""

        def make(msg: Any, /, *, context: Any) -> _Intake:
            return cls(msg, context=context, service=service)

        return make

    async def consume_scope(self, call_next: Callable[[StreamMessage[Any]], Awaitable[Any]], msg: StreamMessage[Any]) -> Any:
        """Refuse an undecodable payload; otherwise hand the message to the typed handler."""
        limit = self.service.settings.max_payload_bytes
        if len(msg.body) > limit:
            await self.service.refuse(msg, f"payload of {len(msg.body)} bytes exceeds the limit of {limit}")
            return None
        try:
            return await call_next(msg)
        except ValidationError as exc:
            if not _raised_before_handler(exc):
                raise  # the handler's own bug: not the sender's fault
            model = self.service.payloads.get(exc.title)
            name = model.__name__ if model else "payload"
            first = exc.errors(include_url=False)[:3]
            reason = f"not a valid {name}: " + "; ".join(
                f"{'.'.join(map(str, e['loc'][1:])) or '<body>'}: {e['msg']}" for e in first
            )
        except ValueError as exc:  # declared JSON that does not parse (json.JSONDecodeError, UnicodeDecodeError)
            if not _raised_before_handler(exc):
                raise
            reason = f"not JSON: {exc}"
        await self.service.refuse(msg, reason)
        return None


async def keep_alive(msg: NatsMessage, interval: float) -> None:
    """Tell JetStream a long-running message is still being worked on (until cancelled)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await msg.in_progress()
        except Exception:  # connection flapping: the next beat or a redelivery covers it
            log.debug("in_progress heartbeat failed", exc_info=True)


def _watch_certificates(app: FastStream, settings: Settings) -> Callable[[], Awaitable[None]]:
    """A start-up hook reloading a renewed certificate into the live connection (no restart)."""

    async def start() -> None:
        nc = app.broker.connection
        reloader = CertificateReloader(TlsFiles(settings.tls_path()), nc.ssl_context)
        task = asyncio.create_task(reloader.watch(settings.tls_reload_interval_s, nc.force_reconnect))

        async def stop() -> None:
            task.cancel()

        app.on_shutdown(stop)

    return start


# How long a stop may run past the runner's grace (its hand-back is bounded by 30 s more) before
# the process ends anyway: a stop stuck for ever (a client reconnecting to a server that is gone,
# after the stack that started the service died) must not leave the service running for ever.
STOP_OVERRUN_S = 60.0


def exit_if_stuck(limit_s: float, name: str) -> threading.Thread:
    """Start a daemon thread that ends this process (exit code 1) if it still runs ``limit_s`` seconds from now."""

    def _watch() -> None:
        time.sleep(limit_s)
        with contextlib.suppress(Exception):
            sys.stderr.write(f"{name}: still stopping {limit_s:g}s after the stop was asked for; exiting now\n")
            sys.stderr.flush()
        os._exit(1)

    thread = threading.Thread(target=_watch, name="stop-watchdog", daemon=True)
    thread.start()
    return thread


def run_service(name: str, settings: Settings, create_app: Callable[[Settings], FastStream]) -> None:
    """Run service ``name``, built by ``create_app``, until SIGTERM/SIGINT (container and local process).

    Once a stop is asked for (a signal, or the bus lost for good), the process ends within
    ``shutdown_grace_s`` + :data:`STOP_OVERRUN_S` seconds, however the stop goes.
    """
    telemetry.setup_telemetry(name, settings)
    app = create_app(settings)
    watch = _watches.get(id(app.broker)) or ConnectionWatch(name)
    watchdog: list[threading.Thread] = []
    stop_app = app.exit

    def _stop() -> None:
        if not watchdog:
            watchdog.append(exit_if_stuck(settings.shutdown_grace_s + STOP_OVERRUN_S, name))
        stop_app()

    # FastStream's run() installs its own SIGTERM/SIGINT handler, which calls ``app.exit()``: so
    # every way to stop (a signal, the bus lost for good) goes through _stop and arms the watchdog.
    app.exit = _stop  # type: ignore[method-assign]
    watch.on_lost(_stop)  # a service without its bus stops, and exits non-zero below

    async def _main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # until run() installs FastStream's (calling _stop too)
            loop.add_signal_handler(sig, _stop)
        if settings.health_port is not None:
            await start_health_server(settings.health_port, lambda: app.broker.connection.is_connected, alive=watch.alive)
        app.after_startup(_watch_certificates(app, settings))
        try:
            await app.run(log_level=logging.INFO)
        except ConnectionClosedError:
            if watch.lost is None:
                raise  # closed, but not by the server: not ours to explain
            # FastStream's shutdown drains the connection, which the server already closed.

    try:
        asyncio.run(_main())
        if watch.lost is not None:
            raise BusError(f"{name}: the connection to NATS was closed for good ({watch.lost}); exiting so that it is restarted")
    except NotFoundError as exc:  # a durable consumer's stream is missing: nothing to bind to
        raise ConfigurationError(
            f"the JetStream topology is missing ({exc.description}); create it with 'tweakline bus init' "
            "as the admin identity (the chart's bus-init Job does)"
        ) from None
    finally:
        telemetry.shutdown()  # flush the spans still buffered
