"""A real browser for the web page tests: Debian's Chromium driven by Playwright.

Chromium: ``$POSE_CHROMIUM`` or the first of chromium / chromium-browser / google-chrome on the
PATH (CI installs Debian's ``chromium``); Playwright's own browser download is never used.
Absent: a skip, or a failure under CI=true. Screenshots go to ``$POSE_TEST_ARTIFACTS``
(default ``test-artifacts/`` in the checkout).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import REPO, _in_ci

# Headless, as root, on a machine without outside network: no sandbox, no background traffic.
# WebGL (the page's 3D view) from SwiftShader, asked for by name: without a GPU, Chromium's
# automatic fallback to it is deprecated and may be gone in a later version.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]  # fmt: skip


def chromium_path() -> str | None:
    env = os.environ.get("POSE_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def artifacts_dir() -> Path:
    path = Path(os.environ.get("POSE_TEST_ARTIFACTS", REPO / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def launched_browser() -> Iterator[Any]:
    """A headless Chromium, or the skip (failure in CI) that says why there is none."""
    sync_api = pytest.importorskip("playwright.sync_api")
    exe = chromium_path()
    if exe is None:
        msg = "no Chromium found (set POSE_CHROMIUM, or apt-get install chromium)"
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class PageLog:
    """What a page did: console errors, uncaught exceptions, every URL it asked for."""

    def __init__(self, page: Any) -> None:
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.urls: list[str] = []
        page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("request", lambda r: self.urls.append(r.url))


def wait_job_state(page: Any, states: str = "succeeded failed cancelled", timeout_ms: int = 240_000) -> str:
    """Wait until the page's job state is one of ``states``; that state."""
    page.wait_for_function(
        "(states) => states.split(' ').includes(document.getElementById('job-state').dataset.state)",
        arg=states, timeout=timeout_ms,
    )
    return page.locator("#job-state").get_attribute("data-state")


def wait_video_loaded(page: Any, timeout_ms: int = 60_000) -> float:
    """Wait until the overlay video has its metadata; its duration in seconds."""
    page.wait_for_function(
        "() => { const v = document.getElementById('overlay-video'); return v.readyState >= 1 && v.duration > 0; }",
        timeout=timeout_ms,
    )
    return float(page.evaluate("document.getElementById('overlay-video').duration"))
