"""The operator dashboard in headless Chromium, driven over the DevTools protocol: it renders
live stats, and a weight change and a disable made in the page reach the admin API."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from bench.fakes import FakeProvider, serve_in_thread
from tests.adaptive.adaptive_helpers import ADMIN, TOKEN, admin, chat, eventually
from tests.conftest import pool_config, running_gateway
from tests.fleet.fleet_harness import ADMIN_TOKEN, running_fleet
from tests.redis_harness import running_redis

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's `chromium` package is not installed "
                             "(apt-get install -y chromium)")


class Page:
    """Just enough of the DevTools protocol: evaluate JavaScript in one page."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:  # skip events until our answer
            reply = json.loads(self.ws.recv(timeout=10))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        value: list[Any] = []

        def ready() -> bool:
            value[:] = [self.js(expression)]
            return bool(value[0])

        eventually(ready, timeout=timeout, step=0.05)
        return value[0]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Page]:
    assert CHROMIUM is not None
    profile = tmp_path / "profile"
    process = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--no-first-run",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        eventually(lambda: port_file.exists() and bool(port_file.read_text().strip()),
                   timeout=30.0)
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10.0).json()
        page = next(t for t in targets if t["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            yield Page(ws)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def gateway() -> Iterator[str]:
    first, second = FakeProvider(kind="openai"), FakeProvider(kind="openai", reply_text="B")
    with serve_in_thread(first) as url_a, serve_in_thread(second) as url_b, \
            running_gateway(pool_config({"a": url_a, "b": url_b},
                                        extra={"admin": ADMIN})) as url:
        yield url


def test_dashboard_renders_stats_and_its_controls_reach_the_api(browser: Page,
                                                                 gateway: str) -> None:
    url = gateway
    for _ in range(3):
        assert chat(url).headers["x-routegate-model"] == "cheap"
    browser.call("Page.navigate", url=url + "/admin/")
    browser.wait_for("document.readyState === 'complete' && !!document.querySelector('#login')")
    assert browser.js("!document.querySelector('#login').classList.contains('hidden')")

    # a wrong token is refused in the page
    browser.js("document.querySelector('#token').value = 'wrong';"
               "document.querySelector('#login-form').requestSubmit()")
    assert browser.wait_for("document.querySelector('#login-error').textContent") == \
        "The token was refused."

    browser.js(f"document.querySelector('#token').value = {json.dumps(TOKEN)};"
               "document.querySelector('#login-form').requestSubmit()")
    browser.wait_for("document.body.dataset.loaded === 'true'")
    assert browser.js("sessionStorage.getItem('routegate-admin-token')") == TOKEN
    assert browser.js("document.querySelector('#fleet').classList.contains('hidden')")  # alone
    requests = browser.wait_for(
        "document.querySelector('#models tr[data-model=\"cheap\"] td.requests')?.textContent")
    assert requests == "3"
    assert browser.js("document.querySelector('#models tr[data-model=\"cheap\"] .state')"
                      ".textContent") == "closed"
    assert browser.js("document.querySelector('#models tr[data-model=\"cheap\"] td.p95')"
                      ".textContent") != "–"
    plan = browser.js("document.querySelector('#categories tr[data-category=\"chat\"]')"
                      ".textContent")
    assert "1. cheap (1)" in plan and "cheap: 3" in plan

    # a weight change made in the page reaches the API and the next plan
    browser.js("document.querySelector('input.weight[data-model=\"mid\"]').value = '2';"
               "document.querySelector('button.set-weight[data-model=\"mid\"]').click()")
    eventually(lambda: admin(url, "GET", "/admin/weights").json()["overrides"] == [
        {"model": "mid", "category": "*", "weight": 2.0, "pin": False, "expires_at": None}])
    assert chat(url).headers["x-routegate-model"] == "mid"
    browser.wait_for("document.querySelector('#models tr[data-model=\"mid\"] td.weight-now')"
                     ".textContent === '2 @*'")

    # and so does disabling a model
    browser.js("document.querySelector('button.toggle[data-model=\"mid\"]').click()")
    eventually(lambda: admin(url, "GET", "/admin/weights").json()["disabled"] == ["mid"])
    assert chat(url).headers["x-routegate-model"] == "cheap"
    browser.wait_for("document.querySelector('#models tr[data-model=\"mid\"] .state')"
                     ".textContent === 'off'")
    started = time.monotonic()
    browser.wait_for("document.querySelector('#models tr[data-model=\"cheap\"] td.requests')"
                     ".textContent === '4'")  # refreshes itself
    assert time.monotonic() - started < 10


def test_dashboard_shows_the_fleet(browser: Page, tmp_path: Path) -> None:
    fake = FakeProvider(kind="openai")
    with running_redis() as redis_server, serve_in_thread(fake) as fake_url, \
            running_fleet(tmp_path, redis_server, {"fake": fake_url}) as fleet:
        for replica in (0, 0, 0, 2):
            assert chat(fleet.urls[replica]).status_code == 200
        browser.call("Page.navigate", url=fleet.urls[1] + "/admin/")
        browser.wait_for("document.readyState === 'complete' && "
                         "!!document.querySelector('#login-form')")
        browser.js(f"document.querySelector('#token').value = {json.dumps(ADMIN_TOKEN)};"
                   "document.querySelector('#login-form').requestSubmit()")
        browser.wait_for("document.body.dataset.loaded === 'true'")
        assert not browser.js("document.querySelector('#fleet').classList.contains('hidden')")
        # three alive replicas and their sum (heartbeats arrive with the flushes)
        browser.wait_for("document.querySelector('#replicas tr[data-replica=\"*\"] "
                         "td.requests')?.textContent === '4'")
        rows = browser.js("[...document.querySelectorAll('#replicas tbody tr')]"
                          ".map((tr) => tr.textContent)")
        assert len(rows) == 4 and sum("alive" in row for row in rows[:3]) == 3
        assert "(this)" in "".join(rows) and "3 alive of 3" in browser.js(
            "document.querySelector('#fleet-status').textContent")
