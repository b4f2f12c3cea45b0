"""The console's pages, live streams and actions (Starlette), on a :class:`TweaklineClient`.

Pages are HTML rendered with Jinja2 (autoescaped) plus one static script; live parts arrive as
server-sent events (``sse-starlette``): the experiments list from a watch of the experiment
records, an experiment page from its stored events (``TweaklineClient.events``) — each change
is pushed once, nothing re-reads the whole state. Actions are ``POST`` forms that need the
operator role and the session's CSRF token; a rollback first shows a confirmation page naming
the revision live now and the one that will be, and the request carries both, so the deployer
refuses it if someone else changed the release in between.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tweakline.client import RollbackRefusedError, TweaklineClient, UnknownExperimentError
from tweakline.console.auth import SESSION_COOKIE, Authenticator, LoginThrottle, Principal
from tweakline.console.settings import ConsoleSettings
from tweakline.console.views import event_row, release_view, rollback_choice, summary_row
from tweakline.errors import TweaklineError
from tweakline.proto.ids import EXPERIMENT_ID_PATTERN, NAME_PATTERN
from tweakline.proto.messages import ExperimentStatus

HERE = Path(__file__).parent
log = logging.getLogger(__name__)
_EXPERIMENT_ID = re.compile(EXPERIMENT_ID_PATTERN)
_NAME = re.compile(NAME_PATTERN)
_SECURITY_HEADERS = {
    # Scripts only from the console itself (no inline script, no CDN: plotly.js is served from the package).
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

Handler = Callable[[Request], Awaitable[Response]]


class FormError(TweaklineError):
    """A form that cannot be read (too large: 413, not a form: 400)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@lru_cache(maxsize=1)
def plotly_js() -> bytes:
    """plotly.js as shipped in the plotly package (the HTML report inlines the same file)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode()


class _Headers:
    """Pure ASGI middleware adding the security headers (it never buffers, so event streams stay live)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope.get("path", "").startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if not static:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, with_headers)


class Pages:
    """The route handlers, bound to one client, authenticator and settings."""

    def __init__(self, client: TweaklineClient, auth: Authenticator, settings: ConsoleSettings):
        self.client = client
        self.auth = auth
        self.settings = settings
        self.throttle = LoginThrottle(settings.login_failures_per_minute)
        self.streams = 0
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]), auto_reload=False
        )

    # -- helpers --------------------------------------------------------------------------------

    def render(self, name: str, principal: Principal | None, status_code: int = 200, **context: Any) -> HTMLResponse:
        """A page from its template; the principal's role and CSRF token go to the forms, never a credential."""
        html = self.templates.get_template(name).render(principal=principal, **context)
        return HTMLResponse(html, status_code=status_code)

    def who(self, request: Request) -> Principal | None:
        """The requester, or ``None``."""
        return self.auth.identify(request.headers.get("authorization"), request.cookies.get(SESSION_COOKIE))

    async def form(self, request: Request) -> dict[str, str]:
        """A url-encoded form body, read up to the configured size (first value of each field)."""
        limit = self.settings.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise FormError(f"form body exceeds {limit} bytes", 413)
            chunks.append(chunk)
        try:
            parsed = parse_qs(b"".join(chunks).decode("utf-8"), max_num_fields=20, strict_parsing=False)
        except (UnicodeDecodeError, ValueError) as exc:
            raise FormError(f"not a form: {exc}") from None
        return {key: values[0] for key, values in parsed.items() if values}

    def needs(self, handler: Callable[[Request, Principal], Awaitable[Response]], *, operator: bool = False) -> Handler:
        """``handler`` behind authentication (pages redirect to the login, the rest get 401) and the role."""

        async def guarded(request: Request) -> Response:
            principal = self.who(request)
            if principal is None:
                wants_html = request.method == "GET" and "text/html" in request.headers.get("accept", "")
                if wants_html:
                    return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
                return PlainTextResponse(
                    "authentication required",
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="tweakline", Basic realm="tweakline"'},
                )
            if operator and not principal.operator:
                return self.render("error.html", principal, 403, title="Not allowed", message="This needs the operator role.")
            return await handler(request, principal)

        return guarded

    async def action(self, request: Request, principal: Principal) -> dict[str, str] | Response:
        """The form of an operator action, or the refusal (bad form, missing or wrong CSRF token)."""
        try:
            form = await self.form(request)
        except FormError as exc:
            return self.render("error.html", principal, exc.status, title="Refused", message=str(exc))
        if not self.auth.csrf_ok(principal, form.get("csrf")):
            return self.render(
                "error.html", principal, 403, title="Refused", message="The form's CSRF token is missing or wrong."
            )
        return form

    @contextlib.asynccontextmanager
    async def stream_slot(self) -> AsyncIterator[bool]:
        """Count an open live stream; yields ``False`` when the limit is reached."""
        if self.streams >= self.settings.max_streams:
            yield False
            return
        self.streams += 1
        try:
            yield True
        finally:
            self.streams -= 1

    def sse(self, events: AsyncIterator[dict[str, str]]) -> Response:
        """A server-sent-event response over ``events``, within the open-stream limit."""

        async def bounded() -> AsyncIterator[dict[str, str]]:
            async with self.stream_slot() as ok:
                if not ok:
                    yield {"event": "busy", "data": json.dumps({"message": "too many live views open; reload later"})}
                    return
                async for event in events:
                    yield event

        return EventSourceResponse(bounded(), ping=15, send_timeout=30, headers={"Cache-Control": "no-store"})

    # -- login ------------------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        """The login form."""
        return self.render("login.html", None, next=_safe_next(request.query_params.get("next")), error="")

    async def login(self, request: Request) -> Response:
        """Check the token; on success a session cookie (HttpOnly, SameSite=Strict) and a redirect."""
        client = request.client.host if request.client else "?"
        if self.throttle.blocked(client):
            return self.render("login.html", None, 429, next="/", error="Too many refused logins; wait a minute.")
        try:
            form = await self.form(request)
        except FormError as exc:
            return self.render("login.html", None, exc.status, next="/", error=str(exc))
        nxt = _safe_next(form.get("next"))
        made = self.auth.login(form.get("token", ""), form.get("user", ""))
        if made is None:
            self.throttle.failed(client)
            return self.render("login.html", None, 401, next=nxt, error="Refused: that token is not valid.")
        _principal, cookie = made
        response = RedirectResponse(nxt, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=int(self.settings.session_ttl_s),
            httponly=True,
            samesite="strict",
            secure=self.settings.tls_dir is not None or self.settings.secure_cookie,
            path="/",
        )
        return response

    async def logout(self, request: Request, principal: Principal) -> Response:
        """End the session (a CSRF-checked form)."""
        form = await self.action(request, principal)
        if isinstance(form, Response):
            return form
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # -- experiments -------------------------------------------------------------------------------

    async def experiments_page(self, request: Request, principal: Principal) -> Response:
        """The experiments list (filled and kept current by its event stream)."""
        return self.render("experiments.html", principal, title="Experiments")

    async def experiments_stream(self, request: Request, principal: Principal) -> Response:
        """Server-sent events: a ``row`` per experiment, ``ready`` after the current ones, then each change."""

        async def events() -> AsyncIterator[dict[str, str]]:
            async for summary in self.client.watch_experiments():
                if summary is None:
                    yield {"event": "ready", "data": "{}"}
                else:
                    yield {"event": "row", "data": json.dumps(summary_row(summary))}

        return self.sse(events())

    async def experiment_page(self, request: Request, principal: Principal) -> Response:
        """One experiment: header, trial table and optimisation-history plot (filled by its event stream)."""
        exp_id = request.path_params["experiment_id"]
        if not _EXPERIMENT_ID.fullmatch(exp_id):
            return self.render("error.html", principal, 404, title="Not found", message="Not an experiment id.")
        try:
            summary = await self.client.experiment(exp_id)
        except UnknownExperimentError as exc:
            return self.render("error.html", principal, 404, title="Not found", message=str(exc))
        return self.render(
            "experiment.html",
            principal,
            title=f"Experiment {summary.name}",
            row=summary_row(summary),
            running=summary.status is ExperimentStatus.RUNNING,
        )

    async def experiment_stream(self, request: Request, principal: Principal) -> Response:
        """Server-sent events: the experiment's stored events from the first, then live ones."""
        exp_id = request.path_params["experiment_id"]
        if not _EXPERIMENT_ID.fullmatch(exp_id):
            return PlainTextResponse("not an experiment id", status_code=404)

        async def events() -> AsyncIterator[dict[str, str]]:
            async for event in self.client.events(exp_id, until_final=False):
                row = event_row(event)
                if row is not None:
                    yield {"event": row[0], "data": json.dumps(row[1])}

        return self.sse(events())

    async def cancel(self, request: Request, principal: Principal) -> Response:
        """Ask the scheduler to cancel the experiment (operator, CSRF)."""
        exp_id = request.path_params["experiment_id"]
        form = await self.action(request, principal)
        if isinstance(form, Response):
            return form
        if not _EXPERIMENT_ID.fullmatch(exp_id):
            return self.render("error.html", principal, 404, title="Not found", message="Not an experiment id.")
        reason = (form.get("reason") or "cancelled from the console")[:500]
        await self.client.cancel(exp_id, reason=reason, user=principal.user)
        return RedirectResponse(f"/experiments/{exp_id}", status_code=303)

    # -- releases ----------------------------------------------------------------------------------

    async def releases_page(self, request: Request, principal: Principal) -> Response:
        """Every release with its live revision."""
        histories = await self.client.releases()
        rows = [
            {"release": h.release, "target": h.target, "current": h.current, "revisions": len(h.revisions)} for h in histories
        ]
        return self.render("releases.html", principal, title="Releases", releases=rows)

    async def _history(self, request: Request, principal: Principal) -> Any:
        name = request.path_params["release"]
        if not _NAME.fullmatch(name):
            return self.render("error.html", principal, 404, title="Not found", message="Not a release name.")
        try:
            return await self.client.history(name)
        except TweaklineError as exc:
            return self.render("error.html", principal, 404, title="Not found", message=str(exc))

    async def release_page(self, request: Request, principal: Principal) -> Response:
        """A release's revisions with their evidence, its steps, and rollback buttons for operators."""
        history = await self._history(request, principal)
        if isinstance(history, Response):
            return history
        notice = request.query_params.get("done", "")[:200]
        return self.render(
            "release.html", principal, title=f"Release {history.release}", view=release_view(history), notice=notice
        )

    async def rollback_confirm(self, request: Request, principal: Principal) -> Response:
        """The confirmation step: what is live, what will be, and the form that does it."""
        history = await self._history(request, principal)
        if isinstance(history, Response):
            return history
        to = _int(request.query_params.get("to"))
        target, why = rollback_choice(history, to)
        status = 200 if target is not None else 409
        return self.render(
            "rollback.html",
            principal,
            status,
            title=f"Roll back {history.release}",
            view=release_view(history),
            to=target,
            why=why,
        )

    async def rollback(self, request: Request, principal: Principal) -> Response:
        """Roll back (operator, CSRF, the confirmed revisions): wait for the deployer's answer."""
        form = await self.action(request, principal)
        if isinstance(form, Response):
            return form
        history = await self._history(request, principal)
        if isinstance(history, Response):
            return history
        to, expect = _int(form.get("to")), _int(form.get("expect_current"))
        if to is None or expect is None:
            return self.render(
                "error.html", principal, 400, title="Refused", message="The rollback form needs 'to' and 'expect_current'."
            )
        try:
            done = await self.client.rollback(
                history.release,
                to=to,
                expect_current=expect,
                reason=(form.get("reason") or "rolled back from the console")[:500],
                user=principal.user,
                timeout=self.settings.rollback_timeout_s,
            )
        except RollbackRefusedError as exc:
            return self.render(
                "rollback.html",
                principal,
                409,
                title=f"Roll back {history.release}",
                view=release_view(history),
                to=None,
                why=str(exc),
            )
        message = quote(f"revision {done.revision} is live again (was {done.previous})")
        return RedirectResponse(f"/releases/{history.release}?done={message}", status_code=303)

    # -- static ------------------------------------------------------------------------------------

    async def static(self, request: Request) -> Response:
        """The console's script and style, and plotly.js (cached by the browser for a day)."""
        name = request.path_params["name"]
        cache = {"Cache-Control": "public, max-age=86400"}
        if name == "plotly.min.js":
            return Response(plotly_js(), media_type="text/javascript", headers=cache)
        files = {"console.js": "text/javascript", "console.css": "text/css"}
        if name not in files:
            return PlainTextResponse("not found", status_code=404)
        return Response((HERE / "static" / name).read_bytes(), media_type=files[name], headers=cache)


def _safe_next(value: str | None) -> str:
    """A same-site path to go to after login (never another host: ``//x`` or ``/\\x`` are refused)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value or len(value) > 200:
        return "/"
    return value


def _int(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit() or len(value) > 9:
        return None
    return int(value)


def http_app(client: TweaklineClient, auth: Authenticator, settings: ConsoleSettings) -> Starlette:
    """The console's Starlette application."""
    pages = Pages(client, auth, settings)
    need = pages.needs
    routes = [
        Route("/login", pages.login_page, methods=["GET"]),
        Route("/login", pages.login, methods=["POST"]),
        Route("/logout", need(pages.logout), methods=["POST"]),
        Route("/", need(pages.experiments_page), methods=["GET"]),
        Route("/events/experiments", need(pages.experiments_stream), methods=["GET"]),
        Route("/experiments/{experiment_id}", need(pages.experiment_page), methods=["GET"]),
        Route("/events/experiments/{experiment_id}", need(pages.experiment_stream), methods=["GET"]),
        Route("/experiments/{experiment_id}/cancel", need(pages.cancel, operator=True), methods=["POST"]),
        Route("/releases", need(pages.releases_page), methods=["GET"]),
        Route("/releases/{release}", need(pages.release_page), methods=["GET"]),
        Route("/releases/{release}/rollback", need(pages.rollback_confirm, operator=True), methods=["GET"]),
        Route("/releases/{release}/rollback", need(pages.rollback, operator=True), methods=["POST"]),
        Route("/static/{name}", pages.static, methods=["GET"]),
        Route("/healthz", lambda _request: PlainTextResponse("ok"), methods=["GET"]),
    ]

    async def on_error(request: Request, exc: Exception) -> Response:
        # A bus failure or a bug: a short message, never a traceback (the log has it).
        if isinstance(exc, TweaklineError):
            log.warning("console request %s failed: %s", request.url.path, exc)
            return PlainTextResponse(f"the console could not do that: {exc}", status_code=502)
        log.exception("console request %s failed", request.url.path)
        return PlainTextResponse(f"the console could not do that ({type(exc).__name__}); see its log", status_code=500)

    return Starlette(routes=routes, middleware=[Middleware(_Headers)], exception_handlers={Exception: on_error})
