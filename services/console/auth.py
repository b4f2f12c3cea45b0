"""Who is asking: tokens per role, signed session cookies, CSRF tokens. Plain logic, no HTTP server.

Two roles: ``read`` sees everything; ``operator`` may also cancel experiments and roll releases
back. A request proves its role with ``Authorization: Bearer <token>``, HTTP basic credentials
(any user name, the token as password) or the session cookie a login with the token set. Every
comparison of a secret is constant-time. Actions need the operator role and, unless the request
carried a bearer token (which a browser never adds on its own), a CSRF token bound to the
session (the synchronizer-token pattern: rendered into the page's forms, never in a cookie).
A session stores a fingerprint of the token it was made with, so rotating a token ends its
sessions. No token is ever written into a page or a log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from tweakline.console.settings import ConsoleSettings
from tweakline.errors import ConfigurationError

SESSION_COOKIE = "tweakline_console"
MAX_COOKIE_BYTES = 2048
MAX_TOKEN_BYTES = 512
MAX_USER_CHARS = 64


class Role(StrEnum):
    """What a principal may do."""

    READ = "read"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Principal:
    """An authenticated requester."""

    role: Role
    user: str
    via: str  # "session", "bearer" or "basic"
    csrf: str  # the token its forms must send back ("" for bearer: no ambient credential)

    @property
    def operator(self) -> bool:
        """Whether it may act (cancel, roll back)."""
        return self.role is Role.OPERATOR

    def needs_csrf(self) -> bool:
        """Whether an action must carry :attr:`csrf` (credentials a browser sends by itself)."""
        return self.via != "bearer"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authenticator:
    """Checks credentials and issues/reads sessions with the console's settings."""

    def __init__(self, settings: ConsoleSettings, now: object = time.time):
        self.tokens: dict[Role, bytes] = {}
        for role, secret in ((Role.OPERATOR, settings.operator_token), (Role.READ, settings.read_token)):
            if secret is not None and secret.get_secret_value():
                self.tokens[role] = secret.get_secret_value().encode()
        if not self.tokens:
            raise ConfigurationError(
                "console: no credentials configured: set TWEAKLINE_CONSOLE_OPERATOR_TOKEN and/or "
                "TWEAKLINE_CONSOLE_READ_TOKEN (the chart takes them from a Secret)"
            )
        if len(set(self.tokens.values())) != len(self.tokens):
            raise ConfigurationError("console: the read-only and operator tokens must differ")
        key = settings.session_secret.get_secret_value().encode() if settings.session_secret else b""
        self.key = key or secrets.token_bytes(32)
        self.ttl = settings.session_ttl_s
        self._now = now

    def _fingerprint(self, role: Role) -> str:
        return _b64(hmac.new(self.key, b"token:" + self.tokens[role], hashlib.sha256).digest()[:12])

    def role_of(self, token: str) -> Role | None:
        """The role ``token`` grants, or ``None`` (every role is compared, in constant time each)."""
        raw = token.encode()[:MAX_TOKEN_BYTES]
        found = None
        for role, expected in self.tokens.items():
            if hmac.compare_digest(raw, expected):
                found = role
        return found

    def login(self, token: str, user: str = "") -> tuple[Principal, str] | None:
        """A new session for ``token``: the principal and the signed cookie value; ``None`` if refused."""
        role = self.role_of(token)
        if role is None:
            return None
        user = (user.strip() or role.value)[:MAX_USER_CHARS]
        csrf = secrets.token_urlsafe(24)
        body = {"r": role.value, "u": user, "e": self._now() + self.ttl, "c": csrf, "f": self._fingerprint(role)}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return Principal(role, user, "session", csrf), f"{payload}.{self._sign(payload)}"

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self.key, b"session:" + payload.encode(), hashlib.sha256).digest())

    def session(self, cookie: str | None) -> Principal | None:
        """The principal of a session cookie, or ``None`` (missing, forged, expired or rotated token)."""
        if not cookie or len(cookie) > MAX_COOKIE_BYTES or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            body = json.loads(_unb64(payload))
            role = Role(body["r"])
            expires, user, csrf, fingerprint = float(body["e"]), str(body["u"]), str(body["c"]), str(body["f"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        if expires < self._now() or role not in self.tokens or not hmac.compare_digest(fingerprint, self._fingerprint(role)):
            return None
        return Principal(role, user[:MAX_USER_CHARS], "session", csrf)

    def authorization(self, header: str | None) -> Principal | None:
        """The principal of an ``Authorization`` header (bearer or basic), or ``None``."""
        if not header or len(header) > MAX_COOKIE_BYTES:
            return None
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            role = self.role_of(value.strip())
            return None if role is None else Principal(role, role.value, "bearer", "")
        if scheme == "basic":
            try:
                user, _, token = _unb64(value.strip()).decode("utf-8").partition(":")
            except (ValueError, binascii.Error):
                return None
            role = self.role_of(token)
            if role is None:
                return None
            user = (user or role.value)[:MAX_USER_CHARS]
            # Browsers resend basic credentials by themselves: bind a CSRF token to them.
            csrf = _b64(hmac.new(self.key, f"basic:{role.value}:{user}".encode(), hashlib.sha256).digest()[:18])
            return Principal(role, user, "basic", csrf)
        return None

    def identify(self, authorization: str | None, cookie: str | None) -> Principal | None:
        """The requester: the ``Authorization`` header when present (it must then be valid), else the session."""
        if authorization:
            return self.authorization(authorization)
        return self.session(cookie)

    @staticmethod
    def csrf_ok(principal: Principal, submitted: str | None) -> bool:
        """Whether an action's CSRF token matches its principal's (always true for bearer tokens)."""
        if not principal.needs_csrf():
            return True
        return bool(submitted) and hmac.compare_digest(str(submitted).encode(), principal.csrf.encode())


class LoginThrottle:
    """At most ``limit`` refused logins per client address per minute (then 429 until they age out)."""

    def __init__(self, limit: int, now: object = time.monotonic, max_clients: int = 10_000):
        self.limit = limit
        self._now = now
        self._failures: dict[str, deque[float]] = {}
        self.max_clients = max_clients

    def _recent(self, client: str) -> deque[float]:
        stamps = self._failures.get(client, deque())
        cutoff = self._now() - 60.0
        while stamps and stamps[0] < cutoff:
            stamps.popleft()
        return stamps

    def blocked(self, client: str) -> bool:
        """Whether ``client`` has used up its refused logins for now."""
        return len(self._recent(client)) >= self.limit

    def failed(self, client: str) -> None:
        """Count one refused login of ``client`` (the table is bounded: the oldest client is forgotten)."""
        if client not in self._failures and len(self._failures) >= self.max_clients:
            self._failures.pop(next(iter(self._failures)))
        stamps = self._recent(client)
        stamps.append(self._now())
        self._failures[client] = stamps
