"""The kiosk: its page settings and files, the server mounting it, and the page itself in a real
headless Chromium against a real server (streaming, input cap, idle reset, busy and offline)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from apps.kiosk.__main__ import KIOSK_MAX_QUEUE, parse_args
from apps.kiosk.page import STATIC_DIR, KioskPage, page_url
from tests.apps import browser as browser_mod
from tests.apps.browser import artifacts_dir, chromium, tap
from tests.runtime.server.conftest import REPO, RunningServer, free_port, start_server

pytestmark = pytest.mark.unit

WAIT_S = 90.0  # longest wait for one page state (an answer on a loaded 2-core machine)


# --- page settings and files (no browser) -------------------------------------------------------
def test_page_url_carries_only_changed_settings():
    assert page_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080/ui/"
    url = page_url("http://h:1", KioskPage(idle_s=60, max_input=200, title="Lobby & café"))
    assert url == "http://h:1/ui/?idle=60&maxlen=200&title=Lobby+%26+caf%C3%A9"


@pytest.mark.parametrize("field, value", [("idle_s", 0), ("max_input", 5000), ("turns", 0)])
def test_out_of_range_page_setting_is_refused_with_its_name(field, value):
    with pytest.raises(ValueError, match=f"kiosk setting {field} must be in"):
        KioskPage(**{field: value})


def test_kiosk_command_serves_the_page_with_a_short_queue(monkeypatch):
    monkeypatch.delenv("EDGEMOE_API_KEY", raising=False)
    bundle, settings, page = parse_args(["b", "--idle", "45", "--max-input", "300", "--port", "0"])
    assert bundle == "b" and settings.ui and settings.max_queue == KIOSK_MAX_QUEUE
    assert page == KioskPage(idle_s=45, max_input=300)
    assert parse_args(["b", "--max-queue", "3"])[1].max_queue == 3  # server options still apply
    for bad in (["--idle", "0"], ["--api-key", "k"]):
        with pytest.raises(SystemExit) as e:
            parse_args(["b", *bad])
        assert e.value.code == 2


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.meta: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.refs += [v for k, v in a.items() if k in ("src", "href") and v]
        if tag == "meta" and a.get("name"):
            self.meta[a["name"] or ""] = a.get("content") or ""


def test_page_is_self_contained_and_touch_ready():
    """Everything the page loads ships in the package: no CDN, fonts or other origins."""
    files = sorted(p.name for p in STATIC_DIR.iterdir())
    assert files == ["index.html", "kiosk.css", "kiosk.js"]
    parser = _Refs()
    parser.feed((STATIC_DIR / "index.html").read_text())
    assert sorted(parser.refs) == ["data:,", "kiosk.css", "kiosk.js"]
    viewport = parser.meta["viewport"]
    assert "width=device-width" in viewport and "user-scalable=no" in viewport
    for name in ("kiosk.css", "kiosk.js"):
        text = (STATIC_DIR / name).read_text()
        assert not re.search(r"https?://|@import|@font-face|url\(\s*['\"]?(?!data:)", text), name


def test_page_ships_as_package_data():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["apps.kiosk"]
    shipped = {p.name for pattern in patterns for p in (REPO / "apps/kiosk").glob(pattern)}
    assert shipped >= {"index.html", "kiosk.css", "kiosk.js"}


def test_missing_browser_skips_locally_and_fails_in_ci(monkeypatch):
    monkeypatch.setattr(browser_mod, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium"):
        browser_mod.require_browser()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="/nonexistent/chromium"):
        browser_mod.require_browser()


# --- the server mounts the page (HTTP only) -----------------------------------------------------
@pytest.fixture(scope="module")
def kiosk_server(tiny_bundle: Path, tmp_path_factory) -> Iterator[RunningServer]:
    s = start_server(tiny_bundle, tmp_path_factory.mktemp("kiosk"), "--ui", "--max-queue", "4")
    yield s
    s.stop()


@pytest.mark.endpoint
def test_server_serves_the_page_beside_the_api(kiosk_server: RunningServer):
    base = kiosk_server.base_url
    origin = {"Origin": "http://elsewhere.example"}
    with httpx.Client(base_url=base, timeout=30) as http:
        page = http.get("/ui/", headers=origin)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "access-control-allow-origin" not in page.headers  # same origin: no CORS added
        assert http.get("/ui", follow_redirects=False).headers["location"].endswith("/ui/")
        js = http.get("/ui/kiosk.js")
        assert js.headers["content-type"].startswith("text/javascript")
        missing = http.get("/ui/nothing.js")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        models = http.get("/v1/models", headers=origin)
        assert models.status_code == 200 and models.json()["data"][0]["id"]
        assert "access-control-allow-origin" not in models.headers


@pytest.mark.endpoint
def test_page_is_off_unless_asked(tiny_bundle: Path, tmp_path: Path):
    s = start_server(tiny_bundle, tmp_path)
    try:
        r = httpx.get(f"{s.base_url}/ui/", timeout=30)
    finally:
        s.stop()
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


@pytest.mark.endpoint
def test_kiosk_command_serves_page_and_api(tiny_bundle: Path, tmp_path: Path):
    """`python -m apps.kiosk BUNDLE`: one server, the page and the API on one port."""
    port = free_port()
    log = tmp_path / "kiosk.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "apps.kiosk", str(tiny_bundle), "--port", str(port),
             "--n-ctx", "512", "--threads", "2", "--log-level", "warning", "--idle", "30"],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        page = httpx.get(f"{base}/ui/?idle=30", timeout=30)
        models = httpx.get(f"{base}/v1/models", timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert page.status_code == 200 and "kiosk.js" in page.text, log.read_text()
    assert models.status_code == 200
    assert f"open {base}/ui/?idle=30 in a full-screen browser" in log.read_text()


# --- the page in a real browser -----------------------------------------------------------------
# Records, inside the page, every change of the answer's length, of the page state and of the
# send button, with the page's own clock: what a person watching the screen would have seen.
RECORDER = """
window.__rec = {lengths: [], states: [], send: []};
const messages = document.getElementById('messages');
new MutationObserver(() => {
  const answers = messages.querySelectorAll('li.assistant');
  const last = answers[answers.length - 1];
  if (last) __rec.lengths.push([performance.now(), last.textContent.length]);
}).observe(messages, {subtree: true, childList: true, characterData: true});
new MutationObserver(() => __rec.states.push(document.body.dataset.state))
  .observe(document.body, {attributes: true, attributeFilter: ['data-state']});
const send = document.getElementById('send');
new MutationObserver(() => __rec.send.push([send.textContent, send.disabled]))
  .observe(send, {attributes: true, childList: true, characterData: true, subtree: true});
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def shots() -> Path:
    return artifacts_dir("kiosk")


def _open(driver: Any, url: str) -> None:
    driver.get(url)
    _wait(driver, lambda: _state(driver) == "ready", "the page to start")
    driver.execute_script(RECORDER)


def _state(driver: Any) -> str:
    return driver.execute_script("return document.body.dataset.state")


def _wait(driver: Any, ok: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ok()
        if value:
            return value
        time.sleep(0.05)
    seen = driver.execute_script("return [document.getElementById('question').value, "
                                 "window.__rec && __rec.states]")
    raise AssertionError(f"timed out waiting for {what}; page state {_state(driver)!r}, "
                         f"notice {_text(driver, 'notice')!r}, field and states {seen!r}")


def _text(driver: Any, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent")


def _ask(driver: Any, question: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "question").send_keys(question)
    tap(driver, driver.find_element(By.ID, "send"))


def _answers(driver: Any) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#messages li.assistant')].map(e => e.textContent)")


@pytest.mark.endpoint
def test_answer_streams_into_the_page(kiosk_server: RunningServer, browser: Any, shots: Path):
    _open(browser, page_url(kiosk_server.base_url, KioskPage(idle_s=600, max_tokens=96)))
    # Only same-origin requests, and targets a finger can hit; no focus zoom on the field.
    layout = browser.execute_script("""
      const box = id => document.getElementById(id).getBoundingClientRect();
      return {
        origins: performance.getEntriesByType('resource').map(e => new URL(e.name).origin),
        send: box('send'), reset: box('reset'),
        font: parseFloat(getComputedStyle(document.getElementById('question')).fontSize),
        scrolls: document.documentElement.scrollHeight > innerHeight,
      };""")
    assert set(layout["origins"]) <= {kiosk_server.base_url}, layout["origins"]
    for name in ("send", "reset"):
        assert min(layout[name]["width"], layout[name]["height"]) >= 48, (name, layout[name])
    assert layout["font"] >= 16 and not layout["scrolls"]

    _ask(browser, "Where is the exit?")
    _wait(browser, lambda: _state(browser) == "streaming", "the answer to start")
    browser.save_screenshot(str(shots / "streaming.png"))
    _wait(browser, lambda: _state(browser) == "ready", "the answer to finish")
    browser.save_screenshot(str(shots / "answer.png"))

    rec = browser.execute_script("return window.__rec")
    lengths = [n for _, n in rec["lengths"]]
    grown = [(t, n) for t, n in rec["lengths"] if n > 0]
    assert len(set(lengths)) >= 4 and lengths == sorted(lengths), lengths  # grew step by step
    assert grown[-1][0] - grown[0][0] > 0, "the whole answer arrived at once"
    assert rec["states"][:2] == ["waiting", "streaming"] and rec["states"][-1] == "ready"
    answer = _answers(browser)[-1]
    assert answer.strip() and len(answer) == lengths[-1]
    assert browser.execute_script("return document.body.dataset.turns") == "2"
    assert browser.find_element("id", "question").get_property("value") == ""
    assert browser.execute_script(
        "return document.getElementById('notice').hidden")
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


@pytest.mark.endpoint
def test_question_length_is_capped(kiosk_server: RunningServer, browser: Any):
    from selenium.webdriver.common.by import By

    _open(browser, page_url(kiosk_server.base_url, KioskPage(max_input=40)))
    field = browser.find_element(By.ID, "question")
    field.send_keys("x" * 100)
    assert len(field.get_property("value")) == 40
    # Pasted or scripted text is cut too, and the counter says the field is full.
    browser.execute_script("""
      const q = document.getElementById('question'); q.value = 'y'.repeat(90);
      q.dispatchEvent(new Event('input', {bubbles: true}));""")
    assert field.get_property("value") == "y" * 40
    assert _text(browser, "counter") == "40 / 40"
    assert "full" in browser.find_element(By.ID, "counter").get_attribute("class")


@pytest.mark.endpoint
def test_idle_reset_forgets_the_visitor(kiosk_server: RunningServer, browser: Any, shots: Path):
    idle_s = 3.0
    _open(browser, page_url(kiosk_server.base_url, KioskPage(idle_s=idle_s, max_tokens=16)))
    _ask(browser, "first visitor question")
    _wait(browser, lambda: _state(browser) == "ready" and _answers(browser), "the answer")
    answered = time.monotonic()
    browser.find_element("id", "question").send_keys("half-typed")
    typed = time.monotonic()
    _wait(browser, lambda: not browser.execute_script(
        "return document.getElementById('messages').childElementCount"), "the idle reset",
        timeout=idle_s + 10)
    reset = time.monotonic()
    assert reset - typed >= idle_s - 0.5 and reset - answered >= idle_s - 0.5
    assert browser.execute_script("return document.body.dataset.turns") == "0"
    assert not browser.execute_script("return document.getElementById('welcome').hidden")
    assert browser.find_element("id", "question").get_property("value") == ""
    browser.save_screenshot(str(shots / "idle-reset.png"))
    # The next visitor starts fresh: one question, one answer in the context.
    _ask(browser, "second visitor")
    _wait(browser, lambda: _state(browser) == "ready" and _answers(browser), "the answer")
    assert browser.execute_script("return document.body.dataset.turns") == "2"


def _requests_with_status(server: RunningServer, status: int) -> float:
    return sum(v for k, v in server.metrics().items()
               if k.startswith("edgemoe_http_requests_total") and "chat/completions" in k
               and f'status="{status}"' in k)


@pytest.mark.endpoint
@pytest.mark.slow
def test_busy_then_offline(tiny_bundle: Path, tmp_path: Path, browser: Any, shots: Path):
    """A real busy server (no queue, a long generation in flight) makes the page say so and
    wait out Retry-After; once free it answers again; with the server gone it says so too."""
    server = start_server(tiny_bundle, tmp_path, "--ui", "--max-queue", "0", "--n-ctx", "4096")
    try:
        _open(browser, page_url(server.base_url, KioskPage(max_tokens=24)))
        long_job = {"model": server.model_id, "prompt": "Once", "max_tokens": 4000,
                    "stream": True}
        with httpx.Client(base_url=server.base_url, timeout=60) as http, \
                http.stream("POST", "/v1/completions", json=long_job) as running:
            assert running.status_code == 200
            # Held (not a throwaway generator): closing the line iterator would close the
            # connection, and the server would cancel the generation.
            lines = running.iter_lines()
            while not next(lines).startswith("data:"):
                pass
            _ask(browser, "Is anyone there?")
            _wait(browser, lambda: _state(browser) == "busy", "the busy state")
            browser.save_screenshot(str(shots / "busy.png"))
            notice = _text(browser, "notice")
            assert "Lots of people are asking" in notice, notice
            assert browser.find_element("id", "question").get_property("value") == \
                "Is anyone there?"  # back in the field, ready to send again
            assert _answers(browser) == []
        # The long generation is cancelled by its client leaving; the page waits Retry-After.
        _wait(browser, lambda: not server.metrics().get("edgemoe_engine_busy", 1),
              "the server to cancel the long generation")
        _wait(browser, lambda: _text(browser, "send") == "Send"
              and not browser.find_element("id", "send").get_property("disabled"),
              "the send button to come back")
        waited = [label for label, disabled in browser.execute_script("return __rec.send")
                  if disabled and label.startswith("Wait ")]
        assert waited, "the send button never showed the Retry-After countdown"
        assert _requests_with_status(server, 429) == 1  # no retry before Retry-After
        tap(browser, browser.find_element("id", "send"))
        _wait(browser, lambda: _state(browser) == "ready" and _answers(browser), "the answer")
        assert _answers(browser)[-1].strip()
    finally:
        server.stop()
    _ask(browser, "Still there?")
    _wait(browser, lambda: _state(browser) == "error", "the offline message", timeout=30)
    browser.save_screenshot(str(shots / "offline.png"))
    assert "can't reach" in _text(browser, "notice")
    assert browser.find_element("id", "question").get_property("value") == "Still there?"
    assert not browser.find_element("id", "send").get_property("disabled")
