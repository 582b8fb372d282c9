"""A loopback service without client keys (the README's first run), tiny profile:

- the web page in a real browser (see `browser_helpers`): no key is asked for, the overlay video
  plays straight from its URL and seeks with byte ranges, downloads are plain links;
- load shedding: with a tight bound on the expected wait of image requests, a burst is answered
  at once with 503 ``overloaded`` and ``Retry-After`` instead of queueing;
- the disk budget: an upload that would take the data folder past ``jobs.max_disk_bytes`` is
  answered 507 ``storage_full`` with ``Retry-After`` before it writes past it, declared or
  streamed, and leaves nothing on disk; smaller ones are still accepted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from browser_helpers import PageLog, launched_browser, wait_job_state, wait_video_loaded  # noqa: E402
from serve_helpers import serve_tiny  # noqa: E402
from videos import crossing_video, write_video  # noqa: E402

MAX_WAIT_S = 0.01
DISK_BUDGET = 48 * 2**20  # far above what the page's jobs write, far below one big upload


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("open-service")


@pytest.fixture(scope="module")
def service(base: Path) -> Iterator[str]:
    from pipeline.tiny.cache import tiny_roots

    tiny_roots(base / "tiny")
    # a bound far below one image's time: any request that finds another in flight is shed
    with serve_tiny(
        base / "tiny", data_dir=str(base / "data"), limits={"max_image_wait_s": MAX_WAIT_S},
        jobs={"max_disk_bytes": DISK_BUDGET},
    ) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launched_browser() as b:
        yield b


def test_without_keys_the_overlay_streams_and_seeks(browser, service, tmp_path: Path):
    assert httpx.get(f"{service}/healthz").json() == {"status": "ok", "key_required": False}
    clip = crossing_video(tmp_path / "crossing.mp4")
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    log = PageLog(page)
    ranges: list[str] = []
    page.on("request", lambda r: ranges.append(r.headers.get("range", "")) if r.url.endswith("/overlay.mp4") else None)
    try:
        page.goto(f"{service}/")
        page.locator("#job-list li").first.wait_for()
        assert page.locator("#key-form").is_hidden() and page.locator("#key-forget").is_hidden()
        page.set_input_files("#file-input", str(clip))
        assert wait_job_state(page) == "succeeded", page.locator("#message").inner_text()
        duration = wait_video_loaded(page)
        src = page.evaluate("document.getElementById('overlay-video').currentSrc")
        assert src.startswith(f"{service}/v1/jobs/") and src.endswith("/overlay.mp4"), src
        # seek to the middle and play from there: the browser asks the service for byte ranges
        page.evaluate(
            "() => new Promise((done) => { const v = document.getElementById('overlay-video');"
            " v.addEventListener('seeked', () => done(), { once: true }); v.currentTime = v.duration / 2; })"
        )
        assert page.evaluate("document.getElementById('overlay-video').currentTime") == pytest.approx(duration / 2, abs=0.2)
        assert any(r.startswith("bytes=") for r in ranges), ranges
        links = page.locator("#downloads a").evaluate_all("links => links.map((a) => [a.href, a.download])")
        assert len(links) == 8 and all(h.startswith(f"{service}/v1/jobs/") and name for h, name in links)
        for href, _ in links:
            assert httpx.get(href, timeout=120).status_code == 200, href
        assert log.page_errors == [] and log.console_errors == []
    finally:
        context.close()


def test_a_video_without_people_says_so(browser, service, tmp_path: Path):
    import numpy as np

    clip = write_video(tmp_path / "empty.mp4", [np.full((240, 320, 3), 128, np.uint8)] * 4)
    page = browser.new_page()
    log = PageLog(page)
    try:
        page.goto(f"{service}/ui/")
        page.locator("#job-list li").first.wait_for()
        page.uncheck("#opt-render")
        page.set_input_files("#file-input", str(clip))
        assert wait_job_state(page) == "succeeded"
        page.locator("#tracks tbody tr").first.wait_for()
        assert page.locator("#tracks tbody tr").all_inner_texts() == ["no one was tracked in this video"]
        assert page.locator("#overlay-none").is_visible() and page.locator("#overlay-video").is_hidden()
        assert log.page_errors == [] and log.console_errors == []
    finally:
        page.close()


def test_a_burst_past_the_bound_is_shed_at_once_with_retry_after(service):
    from concurrent.futures import ThreadPoolExecutor

    from serve_helpers import encode, stick_figures

    body = encode(stick_figures())
    with httpx.Client(base_url=service, timeout=120) as client:
        for _ in range(4):  # one at a time: always admitted, and the rate is measured from them
            assert client.post("/v1/images", content=body, headers={"content-type": "image/png"}).status_code == 200
        before = client.get("/v1/info").json()["load"]["images"]
    assert before["rate_per_s"] > 0 and before["max_wait_s"] == MAX_WAIT_S and before["in_flight"] == 0

    def one(_: int) -> httpx.Response:
        return httpx.post(f"{service}/v1/images", content=body, headers={"content-type": "image/png"}, timeout=120)

    # threads, not asyncio: the browser fixture of this module runs an event loop in this thread
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(one, range(12)))
    served = [r for r in answers if r.status_code == 200]
    shed = [r for r in answers if r.status_code == 503]
    assert len(served) + len(shed) == len(answers), [r.status_code for r in answers]
    assert served and shed, "one request at a time is under the bound, twelve at once are not"
    for r in shed:
        assert r.json()["error"]["code"] == "overloaded"
        assert int(r.headers["retry-after"]) >= 1
    # refused at the door, not after a wait in a queue (the bound is generous for a busy machine)
    assert max(r.elapsed.total_seconds() for r in shed) < 10.0
    with httpx.Client(base_url=service, timeout=60) as client:
        after = client.get("/v1/info").json()["load"]["images"]
    assert after["shed"] - before["shed"] == len(shed) and after["in_flight"] == 0


def test_uploads_past_the_disk_budget_are_refused_before_they_are_written(service, base, tmp_path: Path):
    uploads = base / "data" / "uploads"
    big = DISK_BUDGET + 2**20
    raw = {"content-type": "video/mp4"}

    def streamed() -> Iterator[bytes]:  # no Content-Length: refused as the bytes arrive
        block = b"\0" * 2**20
        for _ in range(big // len(block)):
            yield block

    with httpx.Client(base_url=service, timeout=120) as client:
        disk = client.get("/v1/info").json()["videos"]["disk"]
        assert disk["max_bytes"] == DISK_BUDGET and 0 < disk["room_bytes"] < DISK_BUDGET
        for body in (b"\0" * big, streamed()):
            resp = client.post("/v1/videos", content=body, headers=raw)
            assert resp.status_code == 507, resp.text
            error = resp.json()["error"]
            assert error["code"] == "storage_full" and error["details"]["max_bytes"] == DISK_BUDGET
            assert error["details"]["room_bytes"] < big
            assert resp.headers["retry-after"] == str(error["details"]["retry_after"])
            assert list(uploads.iterdir()) == [], "a refused upload left its bytes on disk"
        clip = crossing_video(tmp_path / "fits.mp4")
        accepted = client.post("/v1/videos", content=clip.read_bytes(), headers=raw)
        assert accepted.status_code == 202, accepted.text
        deadline = time.monotonic() + 10  # the folder is walked at most every 2 s
        while (after := client.get("/v1/info").json()["videos"]["disk"])["used_bytes"] < disk["used_bytes"] + clip.stat().st_size:
            assert time.monotonic() < deadline, f"the accepted upload is not counted: {after}"
            time.sleep(0.5)
