"""A real headless Chromium for the browse-page tests and for screenshots a person can look at.

Debian's `chromium` and `chromium-driver` packages (`.ci/run` installs them), driven by selenium. The
browser runs with a fresh profile and with its background networking off: this machine's network is
closed, and without those flags Chromium keeps trying to reach Google's services.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
DRIVER_CANDIDATES = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
INSTALL_HINT = "apt-get install -y chromium chromium-driver, and pip install selenium (the test extra)"
WINDOW = (1280, 900)

FLAGS = [
    "--headless",
    "--no-sandbox",  # root in a container: Chromium's own sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--force-device-scale-factor=1",
    "--hide-scrollbars",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
]


def _first(env: str, candidates: tuple[str, ...], name: str) -> str | None:
    given = os.environ.get(env)
    if given:
        return given if os.path.exists(given) else None
    for path in candidates:
        if os.path.exists(path):
            return path
    return shutil.which(name)


def find_chromium() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, or the reason there are none. `CHROMIUM` and `CHROMEDRIVER`
    override the search."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return f"selenium is not installed ({INSTALL_HINT})"
    browser = _first("CHROMIUM", CHROMIUM_CANDIDATES, "chromium")
    driver = _first("CHROMEDRIVER", DRIVER_CANDIDATES, "chromedriver")
    if browser is None or driver is None:
        return f"no Chromium or chromedriver ({INSTALL_HINT})"
    return browser, driver


@contextmanager
def chromium(extra_flags: tuple[str, ...] = ()) -> Iterator[Any]:
    """A headless Chromium under chromedriver with a fresh profile, recording the console log
    (`driver.get_log("browser")`); quit and its profile removed at the end. `extra_flags`: more
    command-line switches (e.g. ``--host-resolver-rules=...``)."""
    found = find_chromium()
    if isinstance(found, str):
        raise RuntimeError(found)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = found
    profile = tempfile.mkdtemp(prefix="microblob-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*FLAGS, *extra_flags):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(30)
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)


def wait_settled(driver: Any, timeout: float = 20.0) -> None:
    """Until the page's own requests are done (`<html data-pending="0">`) and every image in view has
    finished loading (or failed). Lazy images below the window are not waited for."""
    deadline = time.monotonic() + timeout
    script = (
        "return document.readyState === 'complete' && document.documentElement.dataset.pending === '0' &&"
        " Array.from(document.images).every(i => i.getBoundingClientRect().top > window.innerHeight ||"
        " (i.complete && Boolean(i.getAttribute('src') || !i.dataset.src)));"
    )
    while not driver.execute_script(script):
        if time.monotonic() > deadline:
            raise TimeoutError("the page did not settle")
        time.sleep(0.05)


def screenshot(driver: Any, url: str, path: str | os.PathLike[str], *, full_page: bool = True) -> Path:
    """Open `url`, wait until it settles and save a PNG of it (the whole page, up to 6000 px tall)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    driver.set_window_size(*WINDOW)
    driver.get(url)
    wait_settled(driver)
    if full_page:  # grow the window to the page (the window is taller than its viewport by the browser's chrome)
        height, inner = driver.execute_script("return [document.documentElement.scrollHeight, window.innerHeight]")
        chrome = WINDOW[1] - int(inner)
        driver.set_window_size(WINDOW[0], max(WINDOW[1], min(int(height) + chrome, 6000)))
        wait_settled(driver)
    if not driver.save_screenshot(str(out)):
        raise RuntimeError(f"Chromium could not save a screenshot of {url}")
    driver.set_window_size(*WINDOW)
    return out
