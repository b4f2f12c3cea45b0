"""Tokens, sessions and CSRF tokens of the console (plain logic)."""

from __future__ import annotations

import base64

import pytest

from tweakline.console.auth import Authenticator, LoginThrottle, Role
from tweakline.console.settings import ConsoleSettings
from tweakline.errors import ConfigurationError

READ, OPERATOR = "read-token-1234", "operator-token-5678"


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(clock: Clock | None = None, **overrides) -> Authenticator:
    settings = ConsoleSettings(read_token=READ, operator_token=OPERATOR, session_ttl_s=60, **overrides)
    return Authenticator(settings, now=clock or Clock())


def basic(user: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()


def test_no_credentials_refuse_to_start_and_equal_tokens_too() -> None:
    with pytest.raises(ConfigurationError, match="TWEAKLINE_CONSOLE_OPERATOR_TOKEN"):
        Authenticator(ConsoleSettings())
    with pytest.raises(ConfigurationError, match="must differ"):
        Authenticator(ConsoleSettings(read_token="same", operator_token="same"))


def test_each_token_gives_its_role_and_nothing_else_does() -> None:
    auth = make()
    assert auth.role_of(READ) is Role.READ and auth.role_of(OPERATOR) is Role.OPERATOR
    for wrong in ("", "read-token-123", OPERATOR + "x", "x" * 10_000):
        assert auth.role_of(wrong) is None
    assert auth.authorization(f"Bearer {OPERATOR}").role is Role.OPERATOR
    assert auth.authorization("Bearer nope") is None
    assert auth.authorization(basic("ana", READ)).user == "ana"
    assert auth.authorization(basic("ana", "nope")) is None
    assert auth.authorization("Basic %%%") is None and auth.authorization("Digest x") is None


def test_a_session_round_trips_and_forged_expired_or_rotated_ones_are_refused() -> None:
    clock = Clock()
    auth = make(clock)
    principal, cookie = auth.login(OPERATOR, "ops")
    assert principal.role is Role.OPERATOR and principal.user == "ops" and principal.csrf
    assert OPERATOR not in cookie  # the token never travels in the cookie
    again = auth.session(cookie)
    assert again == principal

    payload, signature = cookie.split(".")
    forged_payload = base64.urlsafe_b64encode(base64.urlsafe_b64decode(payload + "==").replace(b'"ops"', b'"eve"'))
    assert b"eve" in base64.urlsafe_b64decode(forged_payload)  # the forgery changed the user...
    assert auth.session(f"{forged_payload.decode().rstrip('=')}.{signature}") is None  # ...so the signature fails
    _p, read_cookie = auth.login(READ)
    body = read_cookie.split(".")[0]
    assert auth.session(f"{body}.{signature}") is None  # someone else's signature
    assert auth.session(cookie + "x") is None and auth.session("x" * 5000) is None and auth.session(None) is None

    # Another process with another key (no shared session secret) does not accept it.
    assert make(clock).session(cookie) is None
    # A shared secret makes sessions survive a restart...
    shared = make(clock, session_secret="k" * 32)
    _p, kept = shared.login(READ)
    assert make(clock, session_secret="k" * 32).session(kept) is not None
    # ...until the token it was made with is rotated.
    rotated = Authenticator(ConsoleSettings(read_token="new-read", operator_token=OPERATOR, session_secret="k" * 32), now=clock)
    assert rotated.session(kept) is None

    clock.now += 61
    assert auth.session(cookie) is None  # expired


def test_csrf_is_needed_for_credentials_a_browser_sends_by_itself() -> None:
    auth = make()
    principal, _cookie = auth.login(OPERATOR)
    assert not auth.csrf_ok(principal, None) and not auth.csrf_ok(principal, "") and not auth.csrf_ok(principal, "guess")
    assert auth.csrf_ok(principal, principal.csrf)
    basic_principal = auth.authorization(basic("ops", OPERATOR))
    assert basic_principal.needs_csrf() and not auth.csrf_ok(basic_principal, None)
    assert auth.csrf_ok(basic_principal, basic_principal.csrf)
    bearer = auth.authorization(f"Bearer {OPERATOR}")
    assert not bearer.needs_csrf() and auth.csrf_ok(bearer, None)


def test_refused_logins_are_throttled_per_address_and_age_out() -> None:
    clock = Clock()
    throttle = LoginThrottle(3, now=clock, max_clients=2)
    for _ in range(3):
        assert not throttle.blocked("a")
        throttle.failed("a")
    assert throttle.blocked("a") and not throttle.blocked("b")
    clock.now += 61
    assert not throttle.blocked("a")
    throttle.failed("b")
    throttle.failed("c")  # the table stays bounded: the oldest address is forgotten
    assert len(throttle._failures) == 2
