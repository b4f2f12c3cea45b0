"""The console's HTTP handlers on a real nats-server (as the ``console`` identity), without a browser.

Authentication, roles, CSRF, bounds and what a page may contain; the live streams and the
actions' end-to-end effects are in ``test_browser.py``.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.deployer.test_history_rollback import promote_three
from tweakline.client import TweaklineClient
from tweakline.console.auth import Authenticator
from tweakline.console.routes import http_app
from tweakline.console.settings import ConsoleSettings
from tweakline.proto.messages import CancelExperiment
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Stream, Subject, subject_for
from tweakline.runtime.bus import connect

READ, OPERATOR = "read-" + uuid.uuid4().hex, "operator-" + uuid.uuid4().hex
HTML = {"accept": "text/html"}


@pytest.fixture
async def console(nats) -> AsyncIterator[httpx.AsyncClient]:
    settings = ConsoleSettings(read_token=READ, operator_token=OPERATOR, login_failures_per_minute=3, max_body_bytes=1024)
    nc = await connect(nats.settings(Identity.CONSOLE), "console-test")
    app = http_app(TweaklineClient(nc, identity="console"), Authenticator(settings), settings)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console") as client:
            yield client
    finally:
        await nc.close()


async def login(client: httpx.AsyncClient, token: str, user: str = "ana") -> str:
    """Log in; returns the CSRF token of the session's forms (read from a page, as a browser would)."""
    done = await client.post("/login", data={"token": token, "user": user, "next": "/releases"})
    assert done.status_code == 303 and done.headers["location"] == "/releases"
    page = await client.get("/releases")
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


async def test_nothing_without_credentials(console: httpx.AsyncClient) -> None:
    page = await console.get("/", headers=HTML)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/"
    for path in ("/events/experiments", "/releases", "/events/experiments/abc"):
        refused = await console.get(path)
        assert refused.status_code == 401 and "Bearer" in refused.headers["www-authenticate"], path
    assert (await console.post("/experiments/abc/cancel", data={"csrf": "x"})).status_code == 401
    assert (await console.get("/", headers={"authorization": "Bearer wrong"})).status_code == 401
    # The login page itself is public and names no token.
    form = await console.get("/login")
    assert form.status_code == 200 and READ not in form.text and OPERATOR not in form.text


async def test_login_sets_a_strict_session_and_refuses_bad_tokens_and_foreign_redirects(console: httpx.AsyncClient) -> None:
    refused = await console.post("/login", data={"token": "nope", "next": "/"})
    assert refused.status_code == 401 and "Refused: that token is not valid." in refused.text
    assert "set-cookie" not in refused.headers
    done = await console.post("/login", data={"token": READ, "next": "//evil.example/x"})
    assert done.status_code == 303 and done.headers["location"] == "/"
    cookie = done.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and READ.lower() not in cookie
    assert "secure" not in cookie  # plain HTTP on loopback: a Secure cookie would never come back
    page = await console.get("/")
    assert page.status_code == 200 and 'id="role">read<' in page.text
    for header in ("content-security-policy", "x-frame-options", "x-content-type-options"):
        assert header in page.headers
    assert "script-src 'self'" in page.headers["content-security-policy"]


async def test_refused_logins_are_throttled(console: httpx.AsyncClient) -> None:
    for _ in range(3):
        assert (await console.post("/login", data={"token": "nope"})).status_code == 401
    blocked = await console.post("/login", data={"token": OPERATOR})
    assert blocked.status_code == 429 and "Too many refused logins" in blocked.text


async def test_a_read_only_login_may_look_but_not_act(console: httpx.AsyncClient, nats) -> None:
    release = "console-read-" + uuid.uuid4().hex[:6]
    await promote_three(nats, release)
    csrf = await login(console, READ)
    page = await console.get(f"/releases/{release}")
    assert page.status_code == 200 and "Roll back to" not in page.text and 'id="current">3<' in page.text
    assert (await console.get(f"/releases/{release}/rollback?to=1")).status_code == 403
    refused = await console.post(f"/releases/{release}/rollback", data={"csrf": csrf, "to": "1", "expect_current": "3"})
    assert refused.status_code == 403 and "operator role" in refused.text
    assert (await console.post("/experiments/abc/cancel", data={"csrf": csrf})).status_code == 403


async def test_operator_actions_need_the_sessions_csrf_token(console: httpx.AsyncClient, nats) -> None:
    release = "console-op-" + uuid.uuid4().hex[:6]
    await promote_three(nats, release)
    csrf = await login(console, OPERATOR, user="ops")
    page = await console.get(f"/releases/{release}")
    assert f'href="/releases/{release}/rollback?to=1"' in page.text and OPERATOR not in page.text

    confirm = await console.get(f"/releases/{release}/rollback?to=1")
    assert confirm.status_code == 200 and "Revision <b>3</b> is live now" in confirm.text
    assert 'name="expect_current" value="3"' in confirm.text and 'name="to" value="1"' in confirm.text
    already = await console.get(f"/releases/{release}/rollback?to=3")
    assert already.status_code == 409 and "revision 3 is already live" in already.text

    exp_id = "console-cancel-" + uuid.uuid4().hex[:8]
    for form in ({}, {"csrf": ""}, {"csrf": csrf + "x"}):
        refused = await console.post(f"/experiments/{exp_id}/cancel", data=form)
        assert refused.status_code == 403 and "CSRF" in refused.text
    too_big = await console.post(f"/experiments/{exp_id}/cancel", data={"csrf": csrf, "reason": "x" * 2000})
    assert too_big.status_code == 413 and "form body exceeds 1024 bytes" in too_big.text
    many = await console.post(f"/experiments/{exp_id}/cancel", data={"csrf": csrf, **{f"f{i}": "x" for i in range(30)}})
    assert many.status_code == 400 and "not a form" in many.text

    done = await console.post(f"/experiments/{exp_id}/cancel", data={"csrf": csrf, "reason": "stale"})
    assert done.status_code == 303 and done.headers["location"] == f"/experiments/{exp_id}"
    admin = await connect(nats.settings(Identity.ADMIN), "console-test-admin")
    try:
        stored = await admin.jetstream().get_last_msg(Stream.EVENTS.value, subject_for(Subject.EXPERIMENT_CANCEL, exp_id))
    finally:
        await admin.close()
    command = CancelExperiment.model_validate_json(stored.data)
    assert command.reason == "stale" and command.requested_by == "console (ops)"


async def test_bearer_tokens_act_without_csrf_and_bad_ids_are_not_found(console: httpx.AsyncClient) -> None:
    bearer = {"authorization": f"Bearer {OPERATOR}"}
    exp_id = "console-bearer-" + uuid.uuid4().hex[:8]
    done = await console.post(f"/experiments/{exp_id}/cancel", data={"reason": "scripted"}, headers=bearer)
    assert done.status_code == 303
    assert (await console.get("/experiments/not.an.id", headers=bearer)).status_code == 404
    assert (await console.get("/experiments/no-such-experiment", headers=bearer)).status_code == 404
    assert (await console.get("/releases/Not_A_Name", headers=bearer)).status_code == 404
    missing = await console.get("/releases/no-such-release", headers=bearer)
    assert missing.status_code == 404 and "no release named 'no-such-release'" in html.unescape(missing.text)


async def test_plotly_is_served_by_the_console_itself(console: httpx.AsyncClient) -> None:
    js = await console.get("/static/plotly.min.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript") and len(js.content) > 1_000_000
    assert (await console.get("/static/console.js")).status_code == 200
    assert (await console.get("/static/../settings.py")).status_code == 404
    assert (await console.get("/static/nothing.js")).status_code == 404
