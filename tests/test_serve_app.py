"""The real Ray Serve application (tiny profile, local Ray with 2 CPUs) over HTTP."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from serve_helpers import encode, pipeline_cli, serve_tiny, stick_figures  # noqa: E402

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UPLOAD_LIMIT = 2 * 2**20


MAX_IMAGES = 3
APP_ARGS: dict[str, Any] = {
    "limits": {"max_upload_bytes": UPLOAD_LIMIT, "max_images_per_request": MAX_IMAGES},
    "regressor_batch": {"max_batch_size": 16, "batch_wait_timeout_s": 0.1},
}


@pytest.fixture(scope="module")
def blocked_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder that cannot be created (its parent is a file): this module's application
    starts on it, so every image test here also shows images serving while video jobs cannot."""
    blocker = tmp_path_factory.mktemp("data") / "blocker"
    blocker.write_text("a file where the data folder's parent should be")
    return blocker / "data"


@pytest.fixture(scope="module")
def service(tiny_dir: Path, blocked_data_dir: Path) -> Iterator[str]:
    with serve_tiny(tiny_dir, env={"POSE_SERVICE_TOKEN": TOKEN}, data_dir=str(blocked_data_dir), **APP_ARGS) as url:
        yield url


@pytest.fixture(scope="module")
def client(service: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service, timeout=120.0, headers=AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "scene.png"
    path.write_bytes(encode(stick_figures()))
    return path


def assert_error(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, f"expected {status} {code}, got {resp.status_code}: {resp.text[:300]}"
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]


def assert_same_people(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert g["score"] == pytest.approx(w["score"], abs=1e-5) if w["score"] is not None else g["score"] is None
        for key in ("bbox", "keypoints_2d", "keypoints_3d"):
            np.testing.assert_allclose(g[key], w[key], rtol=1e-4, atol=1e-3, err_msg=key)
        for key in ("global_orient", "body_pose", "betas"):
            np.testing.assert_allclose(g["smpl"][key], w["smpl"][key], rtol=1e-4, atol=1e-4, err_msg=key)
        for key in ("pred_cam", "t_crop", "t_full"):
            np.testing.assert_allclose(g["camera"][key], w["camera"][key], rtol=1e-4, atol=1e-4, err_msg=key)


def test_health_ready_docs(client: httpx.Client, service: str) -> None:
    assert httpx.get(f"{service}/healthz").json() == {"status": "ok", "key_required": True}  # no token needed to ask
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    schema = httpx.get(f"{service}/openapi.json").json()
    assert "/v1/images" in schema["paths"] and "ImageResult" in schema["components"]["schemas"]
    assert httpx.get(f"{service}/docs").status_code == 200


def test_image_matches_in_process(client: httpx.Client, scene_png: Path, tiny_dir: Path) -> None:
    from pipeline.image import run_image
    from pipeline.tiny.cache import runner_settings, tiny_roots

    resp = client.post("/v1/images", files={"image": ("scene.png", scene_png.read_bytes(), "image/png")})
    assert resp.status_code == 200, resp.text[:500]
    got = resp.json()
    # the tiny profile's detector settings, as the served Detector runs them
    options = runner_settings()["detector_options"]
    want = run_image(scene_png, roots=tiny_roots(tiny_dir), device="cpu", download=False, detector_options=options)
    assert got["schema_version"] == want["schema_version"]
    assert got["image"] == want["image"] and got["models"] == want["models"]
    assert_same_people(got["people"], want["people"])


def test_cli_tiny_profile_gives_the_served_document(client: httpx.Client, scene_png: Path, tiny_dir: Path) -> None:
    """``python -m pipeline image --profile tiny`` answers what the tiny application answers, to
    the last bit: the same tiny models (from where the service keeps them), the profile's detector
    settings and people cap in both (`Profile.detector_settings`, ``limits.max_people``), and the
    same float32 work: one image alone through the detector, all its crops through one HMR2
    forward, on one torch thread. (A different batch or thread count changes the last bits,
    which is why the in-process comparison above needs a tolerance.)"""
    resp = client.post("/v1/images", files={"image": ("scene.png", scene_png.read_bytes(), "image/png")})
    assert resp.status_code == 200, resp.text[:500]
    served = resp.json()
    assert served["people"], "the tiny detector finds the drawn figures"
    document, _ = pipeline_cli("image", "--profile", "tiny", "--offline", str(scene_png), tiny_dir=tiny_dir)
    assert document == served


def test_client_boxes_skip_detection(client: httpx.Client, scene_png: Path, tiny_dir: Path) -> None:
    from pipeline.image import run_image
    from pipeline.tiny.cache import tiny_roots

    boxes = [[80, 40, 170, 290], [230, 60, 320, 310]]
    resp = client.post(
        "/v1/images",
        content=scene_png.read_bytes(),
        headers={"content-type": "image/png"},
        params={"boxes": str(boxes), "vertices": "true"},
    )
    assert resp.status_code == 200, resp.text[:500]
    got = resp.json()
    assert got["models"] == {"mesh": "hmr2.0b"} and all(p["score"] is None for p in got["people"])
    assert len(got["people"][0]["vertices"]) == 6890
    want = run_image(scene_png, boxes=boxes, roots=tiny_roots(tiny_dir), device="cpu", download=False, vertices=True)
    assert_same_people(got["people"], want["people"])
    np.testing.assert_allclose(got["people"][1]["vertices"], want["people"][1]["vertices"], atol=1e-4)


def test_image_overlay_png(client: httpx.Client, scene_png: Path) -> None:
    import cv2

    boxes = [[80, 40, 170, 290], [230, 60, 320, 310]]
    ask = {"content": scene_png.read_bytes(), "headers": {"content-type": "image/png"}}
    resp = client.post("/v1/images", params={"boxes": str(boxes), "format": "png"}, **ask)
    assert resp.status_code == 200, resp.text[:300]
    assert resp.headers["content-type"] == "image/png"
    drawn = cv2.imdecode(np.frombuffer(resp.content, np.uint8), cv2.IMREAD_COLOR)
    scene = cv2.imread(str(scene_png))
    assert drawn.shape == scene.shape
    changed = np.abs(drawn.astype(int) - scene.astype(int)).max(axis=2) > 30
    # where the meshes land: each person's vertices + t_full projected by hand (f X / Z + W / 2)
    people = client.post("/v1/images", params={"boxes": str(boxes), "vertices": "true"}, **ask).json()["people"]
    h, w = scene.shape[:2]
    near_a_mesh = np.zeros_like(changed)
    for p in people:
        v = np.asarray(p["vertices"]) + np.asarray(p["camera"]["t_full"])
        f = p["camera"]["focal_length_full"]
        u, t = f * v[:, 0] / v[:, 2] + w / 2, f * v[:, 1] / v[:, 2] + h / 2
        x0, x1 = int(max(0, u.min() - 2)), int(min(w, u.max() + 3))
        y0, y1 = int(max(0, t.min() - 2)), int(min(h, t.max() + 3))
        assert changed[y0:y1, x0:x1].mean() > 0.05, "the mesh is drawn over its person"
        near_a_mesh[y0:y1, x0:x1] = True
    assert len(people) == 2
    labels = changed & ~near_a_mesh  # the person indices written beside the meshes
    assert labels.sum() < 0.01 * changed.size
    assert_error(client.post("/v1/images", params={"format": "gif"}, **ask), 422, "request_invalid")


def test_image_overlay_side_view(client: httpx.Client, scene_png: Path) -> None:
    """``side_view=true``: the PNG is twice as wide; its right half is the side background with
    each person turned 90 degrees about the vertical axis through its centre, drawn where the
    turned vertices project (by hand here)."""
    import cv2

    boxes = [[80, 40, 170, 290], [230, 60, 320, 310]]
    ask = {"content": scene_png.read_bytes(), "headers": {"content-type": "image/png"}}
    resp = client.post("/v1/images", params={"boxes": str(boxes), "format": "png", "side_view": "true"}, **ask)
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png", resp.text[:300]
    drawn = cv2.imdecode(np.frombuffer(resp.content, np.uint8), cv2.IMREAD_COLOR)
    scene = cv2.imread(str(scene_png))
    h, w = scene.shape[:2]
    assert drawn.shape == (h, 2 * w, 3)
    front = client.post("/v1/images", params={"boxes": str(boxes), "format": "png"}, **ask)
    assert np.array_equal(cv2.imdecode(np.frombuffer(front.content, np.uint8), cv2.IMREAD_COLOR), drawn[:, :w])
    side = drawn[:, w:]
    not_background = np.abs(side.astype(int) - 255).max(axis=2) > 30  # the side background is white
    people = client.post("/v1/images", params={"boxes": str(boxes), "vertices": "true"}, **ask).json()["people"]
    assert len(people) == 2
    near_a_body = np.zeros_like(not_background)
    for p in people:
        v = np.asarray(p["vertices"]) + np.asarray(p["camera"]["t_full"])
        centre = (v.min(0) + v.max(0)) / 2
        x, y, z = (v - centre).T
        turned = np.stack([z, y, -x], axis=1) + centre  # 90 degrees about the camera's y axis
        f = p["camera"]["focal_length_full"]
        u, t = f * turned[:, 0] / turned[:, 2] + w / 2, f * turned[:, 1] / turned[:, 2] + h / 2
        x0, x1 = int(max(0, u.min() - 2)), int(min(w, u.max() + 3))
        y0, y1 = int(max(0, t.min() - 2)), int(min(h, t.max() + 3))
        assert x1 - x0 > 2 and y1 - y0 > 20
        assert not_background[y0:y1, x0:x1].mean() > 0.05, "the turned body is drawn where it stands"
        near_a_body[y0:y1, x0:x1] = True
    assert (not_background & ~near_a_body).mean() < 0.01  # elsewhere only the person indices


def test_several_images_in_one_request(client: httpx.Client, scene_png: Path) -> None:
    """Three image fields: one entry each, in order; each result equals that image's own answer
    (to float32 rounding: its crops shared HMR2 batches with the other image's), the corrupt one
    carries the error its own request gets."""
    mirrored = encode(np.ascontiguousarray(stick_figures()[:, ::-1]), ".png")
    broken = b"\x89PNG\r\n\x1a\n not really"
    uploads = [("scene.png", scene_png.read_bytes()), ("broken.png", broken), ("mirrored.png", mirrored)]
    resp = client.post("/v1/images", files=[("image", (name, data, "image/png")) for name, data in uploads])
    assert resp.status_code == 200, resp.text[:500]
    entries = resp.json()["images"]
    assert len(entries) == 3
    compared = 0
    for (name, data), entry in zip(uploads, entries):
        alone = client.post("/v1/images", files={"image": (name, data, "image/png")})
        if name == "broken.png":
            assert alone.status_code == 400
            assert entry["error"]["code"] == alone.json()["error"]["code"] == "image_unreadable" and entry["error"]["message"]
            continue
        assert alone.status_code == 200
        want = alone.json()
        assert {k: entry[k] for k in ("schema_version", "image", "models")} == {k: want[k] for k in ("schema_version", "image", "models")}
        assert_same_people(entry["people"], want["people"])
        compared += 1
    assert compared == 2
    # the mirrored image's people stand where the scene's do, mirrored
    width = entries[0]["image"]["width"]
    xs = sorted((p["bbox"][0] + p["bbox"][2]) / 2 for p in entries[0]["people"])
    mirrored_xs = sorted(width - (p["bbox"][0] + p["bbox"][2]) / 2 for p in entries[2]["people"])
    np.testing.assert_allclose(mirrored_xs, xs, atol=4)


def test_image_count_limit(client: httpx.Client, scene_png: Path) -> None:
    png = scene_png.read_bytes()
    at_limit = [("image", (f"{i}.png", png, "image/png")) for i in range(MAX_IMAGES)]
    assert len(client.post("/v1/images", files=at_limit).json()["images"]) == MAX_IMAGES
    for extra in (1, 4):  # just past the limit, and past what the multipart parser is allowed to read
        files = [("image", (f"{i}.png", png, "image/png")) for i in range(MAX_IMAGES + extra)]
        assert_error(client.post("/v1/images", files=files), 413, "too_many_images")
    two = at_limit[:2]
    assert_error(client.post("/v1/images", files=two, params={"format": "png"}), 422, "request_invalid")
    assert_error(client.post("/v1/images", files=two, data={"boxes": "[[80, 40, 170, 290]]"}), 422, "request_invalid")
    assert client.get("/v1/info").json()["limits"]["max_images_per_request"] == MAX_IMAGES


def test_concurrent_crops_share_a_forward(client: httpx.Client, service: str, scene_png: Path) -> None:
    data = scene_png.read_bytes()

    async def one(c: httpx.AsyncClient, i: int) -> int:
        box = [[60 + 10 * i, 40, 180 + 10 * i, 300]]
        r = await c.post("/v1/images", content=data, headers={"content-type": "image/png"}, params={"boxes": str(box)})
        return r.status_code

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=service, timeout=120.0, headers=AUTH) as c:
            return await asyncio.gather(*(one(c, i) for i in range(8)))

    assert asyncio.run(burst()) == [200] * 8
    batching = client.get("/v1/info").json()["deployments"]["regressor"]["batching"]
    assert batching["max_items_per_batch"] > 1, batching
    assert batching["max_batch_size"] == 16


def test_info(client: httpx.Client) -> None:
    info = client.get("/v1/info").json()
    assert info["profile"] == "tiny" and info["auth"] == "keys"
    assert info["caller"] == {"client": "default", "admin": True}  # the single token of earlier releases
    assert info["resources"]["device"] == "cpu"
    det, reg = info["deployments"]["detector"], info["deployments"]["regressor"]
    assert det["model"] == "vitdet" and reg["model"] == "hmr2"
    assert all(len(f["sha256"]) == 64 for f in [*det["files"].values(), *reg["files"].values()])
    assert det["device"] == reg["device"] == "cpu"
    assert {"max_batch_size", "batch_wait_timeout_s"} <= set(det["batching"])
    for stage in (det, reg):  # what a scale-up waits for: the process's start, imports, the model load
        assert 0 < stage["start"]["load_s"] < stage["start"]["start_to_ready_s"]
    if info["resources"]["tracker"]:  # video workers (appearance + tracking) are in the graph
        assert info["deployments"]["tracker"]["worker_alive"] is True


def _png_50mp() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (10_000, 5_000)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, kwargs, status, code",
    [
        ("empty", {"content": b"", "headers": {"content-type": "image/png"}}, 400, "image_empty"),
        ("not an image", {"content": b"GIF89a not really", "headers": {"content-type": "image/png"}}, 400, "image_unsupported_format"),
        ("wrong content type", {"content": b"{}", "headers": {"content-type": "application/json"}}, 415, "unsupported_media_type"),
        ("too large", {"content": b"\xff\xd8\xff" + b"\0" * UPLOAD_LIMIT, "headers": {"content-type": "image/jpeg"}}, 413, "request_too_large"),
        ("no image field", {"files": {"photo": ("a.png", b"x", "image/png")}}, 400, "image_missing"),
        ("bad boxes", {"content": b"", "headers": {"content-type": "image/png"}, "params": {"boxes": "[[1, 2"}}, 400, "image_empty"),
    ],
)
def test_bad_uploads(client: httpx.Client, name: str, kwargs: dict[str, Any], status: int, code: str) -> None:
    assert_error(client.post("/v1/images", **kwargs), status, code)


def test_bad_images_and_boxes(client: httpx.Client, scene_png: Path) -> None:
    jpeg = encode(stick_figures(), ".jpg")
    png = scene_png.read_bytes()
    raw = {"content-type": "application/octet-stream"}
    assert_error(client.post("/v1/images", content=jpeg[: len(jpeg) // 2], headers=raw), 400, "image_truncated")
    assert_error(client.post("/v1/images", content=png[: len(png) // 2], headers=raw), 400, "image_unreadable")
    assert_error(client.post("/v1/images", content=_png_50mp(), headers=raw), 413, "image_too_large")
    assert_error(client.post("/v1/images", content=png, headers=raw, params={"boxes": "[[1, 2"}), 400, "boxes_invalid")
    assert_error(client.post("/v1/images", content=png, headers=raw, params={"boxes": "[[5, 5, 1, 1]]"}), 400, "box_empty")
    # boxes that would cost without bound, numbers no float holds, nesting past the parser's depth
    assert_error(client.post("/v1/images", content=png, headers=raw, params={"boxes": "[[0, 0, 1e30, 1e30]]"}), 400, "box_too_large")
    huge = "[[0, 0, 1" + "0" * 400 + ", 50]]"
    assert_error(client.post("/v1/images", content=png, headers=raw, params={"boxes": huge}), 400, "boxes_invalid")
    deep = "[" * 5000 + "]" * 5000
    assert_error(client.post("/v1/images", content=png, headers=raw, params={"boxes": deep}), 400, "boxes_invalid")
    long = "[" + ", ".join(["[80, 40, 170, 290]"] * 2000) + "]"
    assert_error(client.post("/v1/images", files={"image": ("a.png", png, "image/png")}, data={"boxes": long}), 400, "boxes_invalid")
    assert_error(client.post("/v1/images", content=png, headers=raw, params={"vertices": "maybe"}), 422, "request_invalid")
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    # raised inside the Detector replica: crosses Ray with its code and status
    sliver = encode(np.full((1, 3000, 3), 128, np.uint8))
    assert_error(client.post("/v1/images", content=sliver, headers=raw), 400, "image_too_elongated")
    # and the service still answers
    ok = client.post("/v1/images", content=png, headers=raw, params={"boxes": "[[80, 40, 170, 290]]"})
    assert ok.status_code == 200 and len(ok.json()["people"]) == 1


def test_a_deploy_without_model_files_stops_at_once_with_one_message(client: httpx.Client, tmp_path: Path) -> None:
    """Built on a connected cluster (this test's), the full profile checks its files before any
    replica starts: the licensed SMPL model is never downloaded, so its absence ends the deploy."""
    from deployments.app import AppArgs, build_app
    from pipeline.errors import WeightsError

    with pytest.raises(WeightsError) as info:
        build_app(AppArgs(profile="full", weights_dir=str(tmp_path), device="cpu"))
    assert info.value.code == "weights_missing" and info.value.details["missing"] == ["smpl.neutral"]
    assert str(tmp_path) in info.value.message  # where it was looked for
    with pytest.raises(WeightsError) as info:  # offline: every absent file, in one message
        build_app(AppArgs(profile="full", weights_dir=str(tmp_path), device="cpu", download=False))
    assert {"smpl.neutral", "hmr2.checkpoint"} <= set(info.value.details["missing"])


def test_token_required(service: str, scene_png: Path) -> None:
    png = scene_png.read_bytes()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx.post(f"{service}/v1/images", content=png, headers={"content-type": "image/png", **headers}, timeout=60)
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error(httpx.get(f"{service}/v1/info", headers=headers), 401, "unauthorized")
        assert_error(httpx.get(f"{service}/readyz", headers=headers), 401, "unauthorized")
    assert httpx.get(f"{service}/healthz").status_code == 200


def test_batch_settings_follow_user_config(client: httpx.Client, tiny_dir: Path, blocked_data_dir: Path) -> None:
    """``reconfigure`` applies new batch settings (with ``serve deploy`` of a config file, where the
    code version is stable, Serve does this on the running replica; ``serve.run`` restarts it)."""
    from ray import serve

    from deployments.app import AppArgs, build_app

    args = {**APP_ARGS, "data_dir": str(blocked_data_dir), "regressor_batch": {"max_batch_size": 4, "batch_wait_timeout_s": 0.02}}
    serve.run(build_app(AppArgs(profile="tiny", tiny_dir=str(tiny_dir), **args)), name="pose", route_prefix="/")
    after = client.get("/v1/info").json()["deployments"]["regressor"]
    assert after["batching"]["max_batch_size"] == 4 and after["batching"]["batch_wait_timeout_s"] == 0.02


STALLED = 300


def _stalled_upload(url: str, declared: int, sent: bytes) -> Any:
    """A connection that announces an image body of ``declared`` bytes and sends only ``sent``."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(url)
    sock = socket.create_connection((where.hostname, where.port), timeout=120)
    head = (
        f"POST /v1/images HTTP/1.1\r\nHost: {where.netloc}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: image/png\r\nContent-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + sent)
    return sock


def _answer(sock: Any) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of the HTTP answer on ``sock`` (Content-Length or one chunk)."""
    import json

    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
            fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
            if b"content-length" in fields and len(body) >= int(fields[b"content-length"]):
                break
            if fields.get(b"transfer-encoding") == b"chunked" and body.endswith(b"0\r\n\r\n"):
                body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
                break
        more = sock.recv(65536)
        assert more, f"the connection closed before a whole answer: {data[:300]!r}"
        data += more
    return int(head.split()[1]), json.loads(body)


def test_stalled_uploads_do_not_stop_an_image_request(client: httpx.Client, service: str, scene_png: Path) -> None:
    """300 connections that announce 100,000 bytes and send 10 hold no image capacity and are
    dropped with 408 once behind the minimum rate; an image sent meanwhile is answered."""
    files = {"image": ("scene.png", scene_png.read_bytes(), "image/png")}
    unloaded = client.post("/v1/images", files=files)
    assert unloaded.status_code == 200, unloaded.text[:300]
    stalled = [_stalled_upload(service, 100_000, b"\x89PNG\r\n\x1a\n\x00\x00") for _ in range(STALLED)]
    try:
        r = client.post("/v1/images", files=files)
        assert r.status_code == 200, r.text[:300]
        assert r.json() == unloaded.json()
        status, body = _answer(stalled[0])
        assert status == 408 and body["error"]["code"] == "upload_too_slow", body
        assert body["error"]["details"]["received_bytes"] == 10
    finally:
        for sock in stalled:
            sock.close()


def test_a_client_hanging_up_mid_upload_is_logged_as_such(client: httpx.Client, service: str, scene_png: Path) -> None:
    import ray

    sock = _stalled_upload(service, 50_000, scene_png.read_bytes()[:1000])
    time.sleep(1.0)
    sock.close()
    r = client.post("/v1/images", files={"image": ("scene.png", scene_png.read_bytes(), "image/png")})
    assert r.status_code == 200
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"  # no public call names the session's logs
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline and "client disconnected during POST /v1/images" not in text:
        time.sleep(0.5)
        text = "".join(p.read_text(errors="replace") for p in logs.glob("replica_pose_Ingress_*.log"))
    assert "client disconnected during POST /v1/images" in text, text[-2000:]
    assert "unexpected error on /v1/images" not in text


def test_killed_replica_is_replaced(client: httpx.Client, scene_png: Path) -> None:
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "MeshRegressor" in a["name"]]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)

    png = scene_png.read_bytes()
    statuses: list[int] = []
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        r = client.post("/v1/images", content=png, headers={"content-type": "image/png"}, params={"boxes": "[[80, 40, 170, 290]]"})
        statuses.append(r.status_code)
        if r.status_code == 200:
            break
        assert r.status_code == 503 and r.json()["error"]["code"] in {"stage_unavailable", "overloaded"}, r.text[:300]
        time.sleep(1.0)
    assert statuses[-1] == 200, statuses
    replicas = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "MeshRegressor" in a["name"]]
    assert replicas and replicas != names


def test_an_unusable_data_folder_disables_videos_only_until_it_is_fixed(
    client: httpx.Client, scene_png: Path, blocked_data_dir: Path, tmp_path: Path
) -> None:
    from serve_helpers import wait_job
    from videos import crossing_video

    clip = crossing_video(tmp_path / "clip.mp4", n=6)
    upload = lambda: client.post("/v1/videos", files={"video": ("clip.mp4", clip.read_bytes(), "video/mp4")})  # noqa: E731
    assert_error(upload(), 503, "data_dir_unavailable")
    assert_error(client.get("/v1/jobs"), 503, "data_dir_unavailable")
    assert client.get("/v1/info").json()["videos"]["error"]["code"] == "data_dir_unavailable"
    image = client.post("/v1/images", files={"image": ("scene.png", scene_png.read_bytes(), "image/png")})
    assert image.status_code == 200 and image.json()["people"]
    assert client.get("/readyz").status_code == 200

    blocker = blocked_data_dir.parent
    blocker.unlink()
    blocker.mkdir()  # the folder fixed: videos come back without a restart (retried every 10 s)
    deadline = time.monotonic() + 60
    while (listed := client.get("/v1/jobs")).status_code == 503 and time.monotonic() < deadline:
        time.sleep(1.0)
    assert listed.status_code == 200, listed.text[:300]
    accepted = upload()
    assert accepted.status_code == 202, accepted.text[:300]
    job = wait_job(client, accepted.json()["id"])
    assert job["state"] == "succeeded" and job["progress"]["frames_done"] == 6, job
