"""The console in headless Chromium (Debian's ``chromium`` and ``chromedriver``, driven by Selenium).

One real local stack with its console is shared by the module (tiny experiments of
``SleepyClassifier`` trials): login is refused without credentials, the experiments list and an
experiment page change while its trials finish (without a reload), and a rollback confirmed on
a release page changes the live revision. Every wait is on the DOM with a timeout; a failing
test leaves a screenshot in ``test-artifacts/console/``. With ``TWEAKLINE_DOCS_SCREENSHOT=1`` the
live test also refreshes the documentation's picture (``docs/img/console-experiment.png``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.deployer.test_history_rollback import promote_three
from tests.factories import make_tweak
from tests.fault.conftest import fault_settings, tweak
from tests.waiting import wait_until
from tweakline.client import TweaklineClient
from tweakline.client.follow import submit
from tweakline.proto.messages import ReleaseAction, Source
from tweakline.proto.permissions import Identity
from tweakline.proto.tweakfile import TweakFile
from tweakline.runtime.bus import connect
from tweakline.stack.console import credentials_path
from tweakline.stack.local import LocalStack

pytestmark = pytest.mark.e2e

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts" / "console"
SCREENSHOT = REPO / "docs" / "img" / "console-experiment.png"
WAIT = 120.0  # generous: the machine is shared

if not (Path(CHROMEDRIVER).exists() and Path(CHROMIUM).exists()):
    pytest.skip(
        f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium chromium-driver",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


class StackNats:
    """The bits of the ``nats`` fixture that the release seeding helper uses, for this stack."""

    def __init__(self, stack: LocalStack):
        self.stack = stack

    def settings(self, identity: Identity) -> Any:
        return self.stack.settings_for(identity)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A local stack with two runners and its console on a free loopback port."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        for name in ("TWEAKLINE_CONSOLE_READ_TOKEN", "TWEAKLINE_CONSOLE_OPERATOR_TOKEN"):
            mp.delenv(name, raising=False)
        stack = LocalStack(tmp_path_factory.mktemp("console") / "state", runners=2, settings=fault_settings(), console_port=0)
        stack.start()
        try:
            assert stack.console_url is not None
            wait_until(lambda: _healthy(stack.console_url), "the console to answer /healthz", timeout=WAIT)
            yield stack
        finally:
            stack.stop(grace=5.0)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "healthz", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def tokens(stack: LocalStack) -> dict[str, str]:
    return json.loads(credentials_path(stack.layout.root).read_text())


@pytest.fixture(scope="module")
def chrome() -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the module (Debian's driver given explicitly: no Selenium Manager download)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(chrome: webdriver.Chrome, request: pytest.FixtureRequest) -> Iterator[webdriver.Chrome]:
    """The module's browser, logged out at the start; a screenshot is kept when the test fails."""
    chrome.delete_all_cookies()
    yield chrome
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        chrome.save_screenshot(str(ARTIFACTS / f"{request.node.name}.png"))
        (ARTIFACTS / f"{request.node.name}.html").write_text(chrome.page_source)
    # Close the page's live streams: an open one kept the console waiting out its stop grace
    # when the module's stack stopped (the stack stops before the browser quits).
    chrome.get("about:blank")


def wait(driver: webdriver.Chrome, condition: Any, what: str, timeout: float = WAIT) -> Any:
    """Wait for ``condition(driver)`` to be truthy; fail naming ``what``."""
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message=f"waiting for {what}")


def text(driver: webdriver.Chrome, css: str) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def log_in(driver: webdriver.Chrome, stack: LocalStack, token: str, user: str = "ops") -> None:
    driver.get(stack.console_url + "login")
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login").click()
    wait(driver, lambda d: "/login" not in d.current_url, "the login to go through")


def test_login_is_refused_without_credentials(browser: webdriver.Chrome, stack: LocalStack) -> None:
    for path in ("", "releases"):
        browser.get(stack.console_url + path)
        wait(browser, lambda d: "/login" in d.current_url, f"/{path} to send an anonymous visitor to the login")
        assert browser.find_elements(By.ID, "experiments") == []
    browser.find_element(By.ID, "token").send_keys("not-a-token")
    browser.find_element(By.ID, "login").click()
    error = wait(browser, lambda d: text(d, "#login-error"), "the refusal")
    assert error == "Refused: that token is not valid." and "/login" in browser.current_url
    # The live stream refuses an anonymous page too.
    status = browser.execute_async_script(
        "const done = arguments[0]; fetch('/events/experiments').then((r) => done(r.status), () => done(-1));"
    )
    assert status == 401
    # A real token is not written anywhere the page can see.
    for secret in tokens(stack).values():
        assert secret not in browser.page_source


TRIALS = 10  # the live test's experiment


def _submit(stack: LocalStack, name: str, delays: list[float], max_trials: int, tf: TweakFile | None = None) -> str:
    async def main() -> str:
        nc = await connect(stack.settings_for(Identity.SUBMITTER), "console-browser-test")
        try:
            experiment = tf or tweak(name, delays, max_trials=max_trials, parallelism=1)
            return await submit(nc, experiment, Source(trigger="cli", repository="ml/iris", branch="main", author="ana"))
        finally:
            await nc.close()

    return asyncio.run(main())


def test_the_list_and_an_experiment_page_update_live(browser: webdriver.Chrome, stack: LocalStack) -> None:
    log_in(browser, stack, tokens(stack)["read_token"], user="viewer")
    assert wait(browser, lambda d: text(d, "#live") == "live" and d, "the list's stream to open")
    browser.execute_script("window.consoleTestMarker = 'no reload';")

    # Two folds of 0.5-0.75 s per trial, one trial at a time (~12 s in all): the pages are open
    # while they finish, with room for a slow page load on a loaded machine.
    exp_id = _submit(stack, "console-live", [0.5, 0.75], max_trials=TRIALS)
    row = f"#exp-{exp_id}"
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row), "the new experiment's row to appear")
    first = int(wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, row).get_attribute("data-done"), "its progress"))
    wait(
        browser,
        lambda d: int(d.find_element(By.CSS_SELECTOR, row).get_attribute("data-done")) > first,
        f"the row's trial count to grow past {first} without a reload",
    )
    assert browser.execute_script("return window.consoleTestMarker") == "no reload"

    browser.find_element(By.CSS_SELECTOR, f"{row} a").click()
    wait(browser, lambda d: text(d, "#live") == "live", "the experiment page's stream to open")
    browser.execute_script("window.consoleTestMarker = 'no reload';")
    seen = wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#trials tbody tr")), "the replayed trials")
    assert seen < TRIALS, "the experiment finished before its page could watch it; make its trials slower"
    wait(
        browser,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#trials tbody tr")) > seen,
        f"a trial to finish while the page is open (it had {seen})",
    )
    wait(browser, lambda d: text(d, "#status") == "completed", "the experiment to complete on its page")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#trials tbody tr")) == TRIALS
    assert text(browser, "#done") == str(TRIALS)
    assert browser.find_element(By.ID, "history").get_attribute("data-points") == str(TRIALS)
    assert "js-plotly-plot" in browser.find_element(By.ID, "history").get_attribute("class")  # plotly.js drew it
    assert browser.execute_script("return window.consoleTestMarker") == "no reload"
    assert not browser.find_elements(By.ID, "cancel"), "a read-only login gets no cancel button"

    browser.get(stack.console_url)
    wait(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, row).get_attribute("data-status") == "completed",
        "the list's final row",
    )
    assert browser.find_element(By.CSS_SELECTOR, f"{row} .progress").text == f"{TRIALS}/{TRIALS}"


def test_a_rollback_from_the_release_page_changes_the_live_revision(browser: webdriver.Chrome, stack: LocalStack) -> None:
    release = "console-rollback"
    asyncio.run(promote_three(StackNats(stack), release))  # revisions 1, 2, 3; 3 live
    log_in(browser, stack, tokens(stack)["operator_token"], user="ops")
    browser.get(stack.console_url + "releases")
    browser.find_element(By.LINK_TEXT, release).click()
    wait(browser, lambda d: text(d, "#current") == "3", "the release page")
    browser.find_element(By.ID, "rollback-1").click()

    confirm = wait(browser, lambda d: text(d, "#confirm-text"), "the confirmation step")
    assert "Revision 3 is live now" in confirm and "makes revision 1 live" in confirm
    assert text(browser, "#current") == "", "nothing changed before confirming"
    browser.find_element(By.ID, "reason").send_keys("regressed in the browser test")
    started = time.monotonic()
    browser.find_element(By.ID, "confirm").click()
    wait(browser, lambda d: text(d, "#current") == "1", "revision 1 to be live on the release page")
    assert text(browser, "#notice") == "revision 1 is live again (was 3)", time.monotonic() - started

    async def recorded() -> Any:
        nc = await connect(stack.settings_for(Identity.ADMIN), "console-browser-check")
        try:
            return await TweaklineClient(nc).history(release)
        finally:
            await nc.close()

    history = asyncio.run(recorded())
    step = history.events[-1]
    assert history.current == 1 and step.action is ReleaseAction.ROLLED_BACK and (step.revision, step.previous) == (1, 3)
    assert step.by == "console (ops)" and step.reason.startswith("regressed in the browser test (request ")

    # A confirmation made stale by another operator's rollback is refused, with the reason.
    browser.get(stack.console_url + f"releases/{release}/rollback?to=2")
    assert "Revision 1 is live now" in wait(browser, lambda d: text(d, "#confirm-text"), "the confirmation of 2")

    async def other_operator() -> Any:
        nc = await connect(stack.settings_for(Identity.CONSOLE), "console-browser-other")
        try:
            return await TweaklineClient(nc, identity="console").rollback(
                release, to=3, expect_current=1, reason="no, 3", user="bo"
            )
        finally:
            await nc.close()

    assert asyncio.run(other_operator()).revision == 3
    browser.find_element(By.ID, "confirm").click()
    refused = wait(browser, lambda d: text(d, "#error"), "the stale confirmation to be refused")
    assert "revision 3 is live now, not 1; not rolling back" in refused


def test_an_operator_cancels_a_running_experiment_from_its_page(browser: webdriver.Chrome, stack: LocalStack) -> None:
    exp_id = _submit(stack, "console-cancel", [1.5], max_trials=20)
    log_in(browser, stack, tokens(stack)["operator_token"], user="ops")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"#exp-{exp_id}[data-status=running] a"), "the running experiment")[
        0
    ].click()
    wait(browser, lambda d: text(d, "#live") == "live", "the experiment page's stream to open")
    browser.find_element(By.NAME, "reason").send_keys("stale branch")
    browser.find_element(By.ID, "cancel").click()
    alert = wait(browser, lambda d: d.switch_to.alert, "the confirmation dialog")
    assert f"Cancel experiment {exp_id}?" in alert.text
    alert.accept()
    wait(browser, lambda d: text(d, "#status") == "cancelled", "the page to show the experiment cancelled")
    assert text(browser, "#outcome") == "cancelled by console (ops): stale branch"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#trials tbody tr")) < 20


@pytest.mark.skipif(os.environ.get("TWEAKLINE_DOCS_SCREENSHOT") != "1", reason="refreshes docs/img only when asked")
def test_the_documentations_screenshot(browser: webdriver.Chrome, stack: LocalStack) -> None:
    """An SVC's C searched on iris, as a person sees its page when it has finished (docs/operations.md)."""
    search = {"algorithm": "tpe", "seed": 1, "space": {"C": {"type": "float", "low": 1e-3, "high": 1e3, "log": True}}}
    tf = make_tweak("iris-svc", search=search, budget={"max_trials": 16, "parallelism": 2})
    exp_id = _submit(stack, "iris-svc", [], 16, tf)
    log_in(browser, stack, tokens(stack)["operator_token"], user="ana")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"#exp-{exp_id} a"), "the experiment in the list")[0].click()
    wait(browser, lambda d: text(d, "#status") == "completed", "the experiment to complete")
    wait(browser, lambda d: "decision" in text(d, "#outcome"), "the decision")
    cancel = browser.find_elements(By.ID, "cancel-form")  # there when the page opened while it ran
    assert not any(form.is_displayed() for form in cancel), "a finished experiment offers no cancel"
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))
