"""A real headless Chromium for the kiosk page tests, driven through Selenium and chromedriver.

The browser is Debian's `chromium` + `chromium-driver` (nothing is downloaded: Selenium is given
both paths, so its driver manager never runs). Without them the tests skip with the install
command, except under CI=true, where a missing browser is a failure: CI installs it (.ci/run).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("EDGEMOE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("EDGEMOE_CHROMEDRIVER", "/usr/bin/chromedriver")
WINDOW = (1280, 800)  # a common kiosk panel, landscape
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--no-first-run", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-extensions", "--disable-default-apps", "--mute-audio",
)
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def require_browser() -> None:
    """Skip (locally) or fail (CI=true) with the install command when the browser is absent."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if not missing:
        return
    reason = (f"the kiosk browser tests need {', '.join(missing)}: apt-get install -y chromium "
              "chromium-driver; pip install -e '.[dev]' (selenium)")
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def artifacts_dir(name: str) -> Path:
    """Where screenshots go: $EDGEMOE_ARTIFACTS/NAME, else tests/apps/artifacts/NAME (which
    ignores itself in git)."""
    root = os.environ.get("EDGEMOE_ARTIFACTS")
    base = Path(root) if root else ARTIFACTS
    if not root:
        base.mkdir(parents=True, exist_ok=True)
        (base / ".gitignore").write_text("*\n")
    out = base / name
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextmanager
def chromium(touch: bool = True) -> Iterator[Any]:
    """A headless Chromium WebDriver with a throwaway profile; `touch` emulates a touch screen
    (touch events on, pointer coarse) at the kiosk's window size."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="edgemoe-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    if touch:
        options.add_argument("--touch-events=enabled")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(30)
        if touch:
            driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled",
                                   {"enabled": True, "maxTouchPoints": 5})
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1,
                "mobile": False,
            })
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def tap(driver: Any, element: Any) -> None:
    """A finger tap on `element` (a touch pointer, not a mouse click)."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    finger = PointerInput(interaction.POINTER_TOUCH, "finger")
    actions = ActionBuilder(driver, mouse=finger)
    actions.pointer_action.move_to(element).pointer_down().pause(0.05).pointer_up()
    actions.perform()
