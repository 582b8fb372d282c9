"""The web page in a real browser: Debian's Chromium driven by Playwright, against the real Ray
Serve application (tiny profile) with a client key.

A person's path through the page: the key entered once, a generated clip uploaded through the
file input, the job followed to its end, the overlay video playing, the track table, every
download answering with its own content type, a job cancelled, an image, a truncated video's
error shown as such; no console errors, no key in any URL, usable at phone width. A track in
the 3D view: its GLB loaded by the viewer, the clip's times those of the track's frames, the
viewer's time following the video's, the body drawn.

The browser: see `browser_helpers`. With ``POSE_UPDATE_DOCS=1`` the result screenshot also
replaces ``docs/img/web-page.jpg`` (the README's picture), and the 3D view's
``docs/img/web-3d-view.png``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from browser_helpers import PageLog, artifacts_dir, launched_browser, wait_job_state, wait_video_loaded  # noqa: E402
from conftest import REPO  # noqa: E402
from serve_helpers import encode, serve_tiny, stick_figures, wait_job  # noqa: E402
from videos import crossing_video, figure_frame, write_video  # noqa: E402

VENDOR = REPO / "service" / "api" / "web" / "vendor"
KEY = "web-page-key-1"
KEY_STORAGE = "pose-service.key"
# What a client must get for each download the page offers (label -> content type).
DOWNLOAD_TYPES = {
    "JSON": "application/json",
    "JSON Lines": "application/jsonl",
    "NPZ": "application/octet-stream",
    "AMASS (zip)": "application/zip",
    "BVH (zip)": "application/zip",
    "glTF (zip)": "application/zip",
    "MOT": "text/plain",
    "Overlay MP4": "video/mp4",
}
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launched_browser() as b:
        yield b


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("page-clips")
    whole = write_video(base / "walk.mp4", [figure_frame([120 + 8 * i, 520 - 8 * i]) for i in range(32)])
    cut = base / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    image = base / "three.png"
    image.write_bytes(encode(stick_figures()))
    return {
        "crossing": crossing_video(base / "crossing.mp4"),
        "long": write_video(base / "long.mp4", [figure_frame([120 + (i % 50) * 8]) for i in range(240)]),
        "truncated": cut,
        "image": image,
    }


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from pipeline.tiny.cache import tiny_roots

    base = tmp_path_factory.mktemp("page-service")
    tiny_roots(base / "tiny")
    keys = base / "keys.txt"
    keys.write_text(f"web:{hashlib.sha256(KEY.encode()).hexdigest()}\n")
    args = {
        "data_dir": str(base / "data"),
        "auth_keys_file": str(keys),
        # one job at a time: a second upload waits in the queue (the cancel test needs one there)
        "jobs": {"max_active": 1, "max_queued": 4},
    }
    with serve_tiny(base / "tiny", **args) as url:
        yield url


@pytest.fixture()
def api(service: str) -> Iterator[Any]:
    with httpx.Client(base_url=service, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as client:
        yield client


def _open(browser: Any, service: str, *, width: int = 1100, height: int = 900) -> tuple[Any, Any, PageLog]:
    """A fresh browser context (empty session storage) on the page, the key typed in."""
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    page = context.new_page()
    log = PageLog(page)
    page.goto(f"{service}/")
    assert page.url == f"{service}/ui/", "/ leads to the page"
    key_input = page.locator("#key-input")
    key_input.wait_for(state="visible")
    assert page.evaluate("document.activeElement && document.activeElement.id") == "key-input"
    page.keyboard.type(KEY)
    page.keyboard.press("Enter")
    page.locator("#key-form").wait_for(state="hidden")
    page.locator("#job-list li").first.wait_for()
    return context, page, log


def _tracks_from_frames(document: dict[str, Any]) -> list[tuple[int, int, int, int]]:
    """(track id, first frame, last frame, frames seen), counted from the frames themselves
    (negative ids: detections never confirmed as a track)."""
    seen: dict[int, list[int]] = {}
    for frame in document["frames"]:
        for person in frame["people"]:
            if person["track_id"] is not None:
                seen.setdefault(person["track_id"], []).append(frame["frame_index"])
    return [(t, min(f), max(f), len(set(f))) for t, f in sorted(seen.items())]


def test_page_files_are_public_fixed_and_locked_down(service):
    with httpx.Client(base_url=service, timeout=30) as client:
        root = client.get("/", follow_redirects=False)
        assert root.status_code == 307 and root.headers["location"] == "/ui/"
        page = client.get("/ui/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert client.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
        for name in ("../ingress.py", "..%2Fingress.py", "app.py", "web/app.js"):
            resp = client.get(f"/ui/{name}")
            assert resp.status_code == 404, name
        # the page holds no data: the API behind it still wants the key
        assert client.get("/v1/jobs").status_code == 401
        assert client.get("/healthz").json() == {"status": "ok", "key_required": True}


def test_a_video_from_upload_to_downloads(browser, service, clips, api):
    context, page, log = _open(browser, service)
    try:
        assert page.locator("#job-list").inner_text().strip() == "no jobs yet"
        page.set_input_files("#file-input", str(clips["crossing"]))
        page.locator("#job").wait_for(state="visible")
        job_id = page.locator("#job-id").inner_text()
        assert wait_job_state(page) == "succeeded", page.locator("#message").inner_text()
        assert page.locator("#upload-text").inner_text() == "uploaded"
        job = api.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "succeeded" and job["options"]["render"] is True
        frames_total = job["progress"]["frames_total"]
        assert page.locator("#job-frames").inner_text() == f"{frames_total} / {frames_total} frames"

        # the track table: one row per track, as the frames of the result document count them
        document = api.get(f"/v1/jobs/{job_id}/result").json()
        want = _tracks_from_frames(document)
        assert len([t for t in want if t[0] >= 0]) == 2, "the crossing clip shows two people"
        page.locator("#tracks tbody tr").first.wait_for()
        rows = page.locator("#tracks tbody tr")
        got = [tuple(int(c) for c in rows.nth(i).locator("td").all_inner_texts()) for i in range(rows.count())]
        assert got == want

        # the overlay plays: loaded, with the clip's duration
        duration = wait_video_loaded(page)
        assert duration == pytest.approx(frames_total / document["video"]["fps"], abs=0.15)

        # keyboard: a track row is reached and selected without a mouse
        first_row = rows.nth(1)
        first_row.focus()
        page.keyboard.press("Enter")
        assert first_row.get_attribute("aria-selected") == "true"
        assert rows.nth(0).get_attribute("aria-selected") == "false"

        # every download: each link answers 200 with its own content type
        links = page.locator("#downloads a")
        labels = links.all_inner_texts()
        assert sorted(labels) == sorted(DOWNLOAD_TYPES)
        for i, label in enumerate(labels):
            href = links.nth(i).get_attribute("href")
            assert href.startswith(f"/v1/jobs/{job_id}")
            resp = api.get(href)
            assert resp.status_code == 200, (label, resp.text[:200])
            assert resp.headers["content-type"].split(";")[0] == DOWNLOAD_TYPES[label], label
            assert len(resp.content) > 0, label
        # and one saved by the browser itself (fetched with the key, saved from a blob)
        with page.expect_download() as saved:
            page.locator("#downloads a", has_text="MOT").click()
        mot = Path(saved.value.path()).read_text().splitlines()
        assert len(mot) == sum(t[3] for t in want if t[0] >= 0), "one MOT line per confirmed detection"
        assert all(len(line.split(",")) == 10 for line in mot)

        page.screenshot(path=str(artifacts_dir() / "web-page.png"), full_page=True)
        if os.environ.get("POSE_UPDATE_DOCS") == "1":
            page.set_viewport_size({"width": 900, "height": 900})
            page.screenshot(path=str(REPO / "docs" / "img" / "web-page.jpg"), full_page=True, type="jpeg", quality=70)

        # the key: kept for this tab, never in a URL
        assert page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") == KEY
        assert log.urls and not [u for u in log.urls if KEY in u]

        # entered once: a reload keeps it, and the recent jobs reopen the result
        page.reload()
        page.locator(f"#job-list button[data-job='{job_id}']").wait_for()
        assert page.locator("#key-form").is_hidden()
        assert "succeeded" in page.locator(f"#job-list button[data-job='{job_id}']").inner_text()
        page.locator(f"#job-list button[data-job='{job_id}']").click()
        page.locator("#tracks tbody tr").first.wait_for()
        assert page.locator("#tracks tbody tr").count() == len(want)

        # phone width: nothing wider than the screen
        page.set_viewport_size({"width": 375, "height": 740})
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

        assert log.page_errors == [] and log.console_errors == []
    finally:
        context.close()


def test_an_image_shows_its_people(browser, service, clips, api):
    want = api.post("/v1/images", files={"image": ("three.png", clips["image"].read_bytes(), "image/png")}).json()
    assert want["people"], "the tiny detector finds the drawn figures"
    context, page, log = _open(browser, service, width=375, height=740)
    try:
        page.set_input_files("#file-input", str(clips["image"]))
        page.locator("#people tbody tr").first.wait_for(timeout=120_000)
        rows = page.locator("#people tbody tr")
        got = [rows.nth(i).locator("td").all_inner_texts() for i in range(rows.count())]
        assert [int(r[0]) for r in got] == [p["person_index"] for p in want["people"]]
        assert [[float(v) for v in r[2].split(",")] for r in got] == [[round(v) for v in p["bbox"]] for p in want["people"]]
        page.wait_for_function("() => document.getElementById('overlay-image').naturalWidth > 0", timeout=120_000)
        size = page.evaluate("[document.getElementById('overlay-image').naturalWidth, document.getElementById('overlay-image').naturalHeight]")
        assert size == [480, 360]
        assert sorted(page.locator("#downloads a").all_inner_texts()) == ["JSON", "Overlay PNG"]
        assert page.locator("#tiny-note").is_hidden(), "people were found: nothing to explain"
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert log.page_errors == [] and log.console_errors == []
    finally:
        context.close()


def test_the_tiny_profile_is_explained_when_no_one_is_found(browser, service, tmp_path):
    """The service runs the tiny profile (its header says so): an image and a video in which its
    models find no one get the sentence that says what those models are."""
    from pipeline.tiny import TINY_NOTE

    blank = np.full((240, 320, 3), 128, np.uint8)
    image = tmp_path / "blank.png"
    image.write_bytes(encode(blank))
    clip = write_video(tmp_path / "blank.mp4", [blank] * 2)
    context, page, log = _open(browser, service)
    try:
        assert page.locator("#service-info").inner_text().startswith("profile tiny")
        note = page.locator("#tiny-note")
        page.set_input_files("#file-input", str(image))
        page.locator("#people tbody tr").first.wait_for(timeout=120_000)
        assert page.locator("#people tbody").inner_text().strip() == "no one was found in this image"
        assert note.is_visible() and note.inner_text() == TINY_NOTE
        page.wait_for_function("() => document.getElementById('overlay-image').naturalWidth > 0", timeout=120_000)

        page.uncheck("#opt-render")
        page.set_input_files("#file-input", str(clip))
        note.wait_for(state="hidden")  # a new upload starts without it
        assert wait_job_state(page) == "succeeded", page.locator("#message").inner_text()
        page.locator("#tracks tbody tr").first.wait_for()
        assert page.locator("#tracks tbody").inner_text().strip() == "no one was tracked in this video"
        assert note.is_visible() and note.inner_text() == TINY_NOTE
        assert log.page_errors == [] and log.console_errors == []
    finally:
        context.close()


def test_a_truncated_video_shows_its_error(browser, service, clips):
    context, page, log = _open(browser, service)
    try:
        page.set_input_files("#file-input", str(clips["truncated"]))
        message = page.locator("#message")
        message.wait_for(state="visible", timeout=60_000)
        assert page.locator("#message-code").inner_text() == "video_corrupt"
        assert page.locator("#message-text").inner_text().strip() != ""
        assert page.get_attribute("#message", "role") == "alert"
        assert page.locator("#job").is_hidden() and page.locator("#result").is_hidden()
        assert page.locator("#upload-text").inner_text() == "not accepted"
        page.screenshot(path=str(artifacts_dir() / "web-page-error.png"))
        # the only console line is the browser's own note of the refused upload
        assert log.page_errors == []
        assert all("status of 400" in line for line in log.console_errors), log.console_errors
    finally:
        context.close()


def test_a_queued_job_is_cancelled_from_the_page(browser, service, clips, api):
    busy = api.post("/v1/videos", files={"video": ("long.mp4", clips["long"].read_bytes(), "video/mp4")})
    assert busy.status_code == 202, busy.text
    context, page, log = _open(browser, service)
    try:
        page.uncheck("#opt-render")
        page.set_input_files("#file-input", str(clips["crossing"]))
        page.locator("#job").wait_for(state="visible")
        job_id = page.locator("#job-id").inner_text()
        assert api.get(f"/v1/jobs/{job_id}").json()["state"] == "queued", "one job at a time: this one waits"
        page.locator("#cancel-button").click()
        assert wait_job_state(page, timeout_ms=30_000) == "cancelled"
        page.locator("#message").wait_for(state="visible")
        assert page.locator("#message-code").inner_text() == "cancelled"
        assert page.locator("#cancel-button").is_hidden()
        job = api.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "cancelled" and job["error"]["code"] == "cancelled"
        assert log.page_errors == [] and log.console_errors == []
    finally:
        context.close()
        api.delete(f"/v1/jobs/{busy.json()['id']}")


def test_cancel_keeps_the_job_and_refuses_an_ended_one(service, clips, api):
    """The route the page's button calls: a queued job is cancelled and kept; an ended one is a 409."""
    first = api.post("/v1/videos", files={"video": ("long.mp4", clips["long"].read_bytes(), "video/mp4")}).json()
    second = api.post("/v1/videos", files={"video": ("c.mp4", clips["crossing"].read_bytes(), "video/mp4")}).json()
    try:
        resp = api.post(f"/v1/jobs/{second['id']}/cancel")
        assert resp.status_code == 200 and resp.json()["state"] == "cancelled"
        assert api.get(f"/v1/jobs/{second['id']}").json()["state"] == "cancelled"
        again = api.post(f"/v1/jobs/{second['id']}/cancel")
        assert again.status_code == 200 and again.json()["state"] == "cancelled"  # already cancelled: the same answer
        deadline = time.monotonic() + 120
        while (state := api.get(f"/v1/jobs/{first['id']}").json()["state"]) != "running":
            assert state == "queued" and time.monotonic() < deadline, f"the 240-frame job never ran: {state}"
            time.sleep(0.2)
        running = api.post(f"/v1/jobs/{first['id']}/cancel")
        assert running.status_code == 202, running.text  # running: it stops at its next chunk
        assert running.json()["cancel_requested"] is True
        assert wait_job(api, first["id"])["state"] == "cancelled"
        summary = api.get(f"/v1/jobs/{first['id']}/summary")
        assert summary.status_code == 409 and summary.json()["error"]["code"] == "job_cancelled"
        assert api.post("/v1/jobs/0123456789abcdef0123456789abcdef/cancel").status_code == 404
    finally:
        for job in (first, second):
            api.delete(f"/v1/jobs/{job['id']}")


def test_summary_is_the_result_without_frames(service, clips, api):
    job = api.post("/v1/videos", files={"video": ("c.mp4", clips["crossing"].read_bytes(), "video/mp4")}).json()
    assert wait_job(api, job["id"])["state"] == "succeeded"
    summary = api.get(f"/v1/jobs/{job['id']}/summary").json()
    document = api.get(f"/v1/jobs/{job['id']}/result").json()
    assert "frames" not in summary
    assert summary["video"] == document["video"] and summary["models"] == document["models"]
    counted = _tracks_from_frames(document)
    assert [(t["track_id"], t["first_frame"], t["last_frame"], t["num_frames"]) for t in summary["tracks"]] == counted
    assert len([t for t in counted if t[0] >= 0]) == 2
    ended = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert ended.status_code == 409 and ended.json()["error"]["code"] == "job_state_conflict"
    assert api.get(f"/v1/jobs/{job['id']}").json()["state"] == "succeeded"
    api.delete(f"/v1/jobs/{job['id']}")



def test_the_3d_viewer_module_is_shipped_and_served_like_the_page(service):
    from service.api.page import PAGE_FILES

    tomllib = pytest.importorskip("tomllib")
    readme = (VENDOR / "README.md").read_text()
    digest = re.search(r"sha256 `([0-9a-f]{64})`", readme)
    assert digest, "the vendor README names the file's digest"
    module = (VENDOR / "model-viewer.min.js").read_bytes()
    assert hashlib.sha256(module).hexdigest() == digest.group(1), "the shipped viewer is the one its README names"
    assert (VENDOR / "LICENSE").read_text().split()[:2] == ["Apache", "License"]
    # in the wheel: setuptools expands the package-data patterns with glob, relative to the package
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["service.api"]
    package = REPO / "service" / "api"
    shipped = {p.relative_to(package / "web").as_posix() for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    assert set(PAGE_FILES) | {"vendor/LICENSE", "vendor/THIRD-PARTY-LICENSES", "vendor/README.md"} <= shipped

    with httpx.Client(base_url=service, timeout=30) as client:
        resp = client.get("/ui/vendor/model-viewer.min.js")
        assert resp.status_code == 200 and resp.content == module
        assert resp.headers["content-type"] == "text/javascript; charset=utf-8"
        app_js = client.get("/ui/app.js")
        for header in ("cache-control", "content-security-policy", "x-content-type-options", "referrer-policy"):
            assert resp.headers[header] == app_js.headers[header], header
        # revalidated on each use, sent again only when it changed
        assert resp.headers["cache-control"] == "no-cache"
        same = client.get("/ui/vendor/model-viewer.min.js", headers={"If-None-Match": resp.headers["etag"]})
        assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == resp.headers["etag"]
        assert client.get("/ui/vendor/model-viewer.min.js", headers={"If-None-Match": '"0"'}).content == module
        assert app_js.headers["etag"] != resp.headers["etag"]
        # widened for the viewer only where it must be: the GLB from a blob: URL, WebAssembly (not
        # JavaScript eval), and the one <style> block of its shadow DOM, by digest
        directives = dict(d.strip().split(" ", 1) for d in resp.headers["content-security-policy"].split(";"))
        assert directives["connect-src"] == "'self' blob:"
        assert directives["script-src"] == "'self' 'wasm-unsafe-eval'" and directives["default-src"] == "'self'"
        styles = re.findall(r"<style>(.*?)</style>", module.decode(), re.S)
        assert len(styles) == 1, "the viewer's shadow DOM has one <style> block"
        digest = base64.b64encode(hashlib.sha256(styles[0].encode()).digest()).decode()
        assert directives["style-src"] == f"'self' 'sha256-{digest}'"
        for name in ("vendor/README.md", "vendor/LICENSE", "vendor/", "vendor%2F..%2Fapp.js", "vendor/model-viewer.min.js.map"):
            assert client.get(f"/ui/{name}").status_code == 404, name


def _drawn_fraction(png: bytes) -> tuple[float, tuple[float, float]]:
    """Of a screenshot of the viewer: the share of pixels that differ clearly (over 40 grey
    levels in a channel) from the background at their row (a vertical gradient: each row's
    edge pixels), and the centre of those pixels as fractions of the width and height."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    inner = rgb[4:-4, 4:-4]  # inside the border
    background = np.median(np.concatenate([inner[:, :3], inner[:, -3:]], axis=1), axis=1)
    drawn = np.abs(inner - background[:, None, :]).max(axis=2) > 40
    ys, xs = np.nonzero(drawn)
    if not len(xs):
        return 0.0, (float("nan"), float("nan"))
    return float(drawn.mean()), (float(xs.mean() / drawn.shape[1]), float(ys.mean() / drawn.shape[0]))


def _seek(page: Any, seconds: float) -> float:
    """Seek the overlay video and wait for it to get there; the viewer's time then."""
    return float(page.evaluate(
        """async (t) => {
            const video = document.getElementById('overlay-video');
            await new Promise((done) => { video.addEventListener('seeked', done, { once: true }); video.currentTime = t; });
            return document.getElementById('track-viewer').currentTime;
        }""",
        seconds,
    ))  # fmt: skip


def test_a_track_in_the_3d_view_follows_the_video(browser, service, clips, api):
    job = api.post("/v1/videos?render=true", files={"video": ("crossing.mp4", clips["crossing"].read_bytes(), "video/mp4")})
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    assert wait_job(api, job_id)["state"] == "succeeded"
    document = api.get(f"/v1/jobs/{job_id}/result").json()
    fps = document["video"]["fps"]
    # the detections of each confirmed track, counted from the frames: frame -> presentation time
    seen: dict[int, dict[int, float]] = {}
    for frame in document["frames"]:
        for person in frame["people"]:
            if person["track_id"] is not None and person["track_id"] >= 0:
                seen.setdefault(person["track_id"], {})[frame["frame_index"]] = frame["time_s"]
    assert len(seen) == 2, "the crossing clip shows two people"
    track, times = max(seen.items(), key=lambda kv: len(kv[1]))
    other = next(t for t in seen if t != track)
    frames = sorted(times)
    assert len(frames) >= 3, f"track {track} is seen in {frames}: too few frames to follow"

    context, page, log = _open(browser, service)
    try:
        page.locator(f"#job-list button[data-job='{job_id}']").click()
        row = page.locator(f"#tracks tbody tr[data-track='{track}']")
        row.wait_for()
        wait_video_loaded(page)
        view = page.locator("#view3d")
        assert view.is_visible() and page.locator("#view3d-hint").is_visible()
        assert page.locator("#track-viewer").is_hidden(), "nothing to show before a track is chosen"
        assert not [u for u in log.urls if "model-viewer" in u], "the viewer is loaded on first use"
        page.evaluate(
            "window.viewerLoads = []; document.getElementById('track-viewer').addEventListener('load',"
            " (ev) => window.viewerLoads.push(ev.target.src))"
        )

        row.click()
        page.wait_for_function(
            f"() => document.getElementById('track-viewer').dataset.track === '{track}'", timeout=120_000
        )
        loads = page.evaluate("window.viewerLoads")
        assert len(loads) == 1 and loads[0].startswith("blob:"), loads
        glb_urls = [u for u in log.urls if "format=glb" in u]
        assert glb_urls and all(f"track={track}" in u for u in glb_urls)
        viewer = page.evaluate(
            "(() => { const m = document.getElementById('track-viewer');"
            " return { duration: m.duration, animations: m.availableAnimations, loaded: m.loaded }; })()"
        )
        assert viewer["loaded"] is True
        assert viewer["animations"] == [f"track_{track}"]
        # the clip's keys are at the detections' times from the video start: it lasts until the
        # track's last frame, which is last_frame / fps
        assert viewer["duration"] == pytest.approx(times[frames[-1]], abs=1e-4)
        assert viewer["duration"] == pytest.approx(frames[-1] / fps, abs=1 / fps)

        # the video is the clock: each seek puts the viewer at that frame's time
        for k in (frames[1], frames[len(frames) // 2], frames[-2]):
            got = _seek(page, k / fps)
            assert got == pytest.approx(times[k], abs=0.5 / fps), f"video at frame {k}"
        if frames[0] > 0:  # before the track: its first pose
            assert _seek(page, 0.0) == pytest.approx(times[frames[0]], abs=0.5 / fps)
        assert _seek(page, page.evaluate("document.getElementById('overlay-video').duration")) == pytest.approx(
            times[frames[-1]], abs=0.5 / fps
        ), "at the end: its last pose"
        # playing moves it too
        _seek(page, frames[0] / fps)
        page.evaluate("(() => { const v = document.getElementById('overlay-video'); v.muted = true; return v.play(); })()")
        page.wait_for_function(
            f"() => document.getElementById('track-viewer').currentTime > {times[frames[0]] + 2 / fps}", timeout=30_000
        )
        page.evaluate("document.getElementById('overlay-video').pause()")

        # the body is drawn, about the middle of the view (the viewer draws only while in sight)
        page.locator("#track-viewer").scroll_into_view_if_needed()
        middle = frames[len(frames) // 2]
        _seek(page, middle / fps)
        page.evaluate(
            "() => new Promise((done) => { document.getElementById('track-viewer').jumpCameraToGoal();"
            " requestAnimationFrame(() => requestAnimationFrame(done)); })"
        )
        shot = page.locator("#track-viewer").screenshot()
        (artifacts_dir() / "web-3d-view-viewer.png").write_bytes(shot)
        share, (cx, cy) = _drawn_fraction(shot)
        assert share > 0.01, f"the viewer shows nothing but its background ({share:.4f} of its pixels differ)"
        assert 0.25 < cx < 0.75 and 0.2 < cy < 0.8, f"the body is off centre at {cx:.2f}, {cy:.2f}"
        assert page.locator("#view3d-frame").inner_text().startswith(f"video frame {middle};")
        view.screenshot(path=str(artifacts_dir() / "web-3d-view.png"))
        if os.environ.get("POSE_UPDATE_DOCS") == "1":
            view.screenshot(path=str(REPO / "docs" / "img" / "web-3d-view.png"))

        # a drag turns the camera about the body
        box = page.locator("#track-viewer").bounding_box()
        orbit = "document.getElementById('track-viewer').getCameraOrbit().theta"
        theta = page.evaluate(orbit)
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] / 2 + 150, box["y"] + box["height"] / 2, steps=5)
        page.mouse.up()
        page.wait_for_function(f"() => Math.abs({orbit} - {theta}) > 0.3", timeout=10_000)

        # another track: the view changes to it
        page.locator(f"#tracks tbody tr[data-track='{other}']").click()
        page.wait_for_function(
            f"() => document.getElementById('track-viewer').dataset.track === '{other}'", timeout=120_000
        )
        assert page.evaluate("document.getElementById('track-viewer').availableAnimations") == [f"track_{other}"]
        assert len(page.evaluate("window.viewerLoads")) == 2
        assert log.page_errors == [] and log.console_errors == []
        assert not [u for u in log.urls if KEY in u]
    finally:
        context.close()
        api.delete(f"/v1/jobs/{job_id}")
