"""Video jobs through the real Ray Serve application (tiny profile, local Ray with 2 CPUs).

Upload -> poll -> result against the in-process runner, concurrency, idempotency, backpressure,
cancel/delete, paging, each video edge case's documented answer, the drop-in ``/pose/video``
route and its confinement, NPZ, callbacks, and a worker crash in the middle of a job. Jobs are
per client: the application reads a keys file with two clients and an admin; the tests act as the
admin unless they say otherwise.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")
jsonschema = pytest.importorskip("jsonschema")

from export_readers import parse_bvh, parse_glb, validate_glb  # noqa: E402
from serve_helpers import assert_same_result, free_port, pipeline_cli, serve_tiny, wait_job, wait_overlay  # noqa: E402
from videos import audio_only, crossing_video, figure_frame, write_video  # noqa: E402

from service.callbacks import SIGNATURE_HEADER, verify  # noqa: E402

MAX_ACTIVE, MAX_QUEUED = 2, 1
PER_CLIENT = 2  # jobs.max_jobs_per_client: below the queue's 3, so one client at its limit leaves room


CALLBACK_SECRET = "test-callback-secret"
KEYS = {"alice": "alice-key-1", "bob": "bob-key-2", "ops": "ops-admin-key-3"}  # ops is the admin


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The keys file the service reads: each key's SHA-256, never the key."""
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    lines = [f"{c}:{hashlib.sha256(k.encode()).hexdigest()}" + (":admin" if c == "ops" else "") for c, k in KEYS.items()]
    path.write_text("# test clients\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every clip the tests send; those in ``media/`` are also reachable through /pose/video."""
    base = tmp_path_factory.mktemp("clips")
    media = base / "media"
    media.mkdir()
    people = [figure_frame([200, 440])]
    out = {
        "crossing": crossing_video(media / "crossing.mp4"),
        "long": write_video(base / "long.mp4", [figure_frame([120 + 8 * i, 520 - 8 * i]) for i in range(32)]),
        "one": write_video(media / "one.mp4", people),
        "second": write_video(base / "second.mp4", [figure_frame([150 + 20 * i]) for i in range(6)]),
        "empty_scene": write_video(base / "empty_scene.mp4", [np.full((240, 320, 3), 128, np.uint8)] * 4),
        "rotated": write_video(base / "phone.mp4", people * 3, rotation=-90),
        "vfr": write_video(base / "vfr.mp4", people * 4, pts_ms=[0, 40, 300, 340]),
        "zero": write_video(base / "zero.mp4", [], size=(240, 320)),
        "audio": audio_only(base / "voice.mp4"),
        "huge": write_video(base / "huge.mp4", [np.zeros((2304, 4096 + 64, 3), np.uint8)], codec="mpeg4"),
    }
    text = base / "notes.mp4"
    text.write_text("#EXTM3U\n/etc/passwd\n")
    out["not_a_video"] = text
    whole = out["long"].read_bytes()
    cut = base / "cut.mp4"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    out["truncated"] = cut
    outside = base / "outside.mp4"
    outside.write_bytes(out["one"].read_bytes())
    out["outside"] = outside
    os.symlink(outside, media / "link.mp4")
    out["media"] = media
    return out


@pytest.fixture(scope="module")
def app_args(clips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, keys_file: Path) -> dict[str, Any]:
    return {
        "data_dir": str(tmp_path_factory.mktemp("data")),
        "auth_keys_file": str(keys_file),
        "media_dir": str(clips["media"]),
        # a short lease: a killed worker's job is taken over within seconds
        "jobs": {"max_active": MAX_ACTIVE, "max_queued": MAX_QUEUED, "sync_timeout_s": 120.0, "lease_s": 4.0,
                 "max_jobs_per_client": PER_CLIENT,
                 # the test's callback receiver listens on loopback: allowed by name, plain http
                 "callback_allow_http": True, "callback_allow_hosts": ["127.0.0.1"],
                 "callback_secret_env": "TEST_CALLBACK_SECRET"},
        "regressor_batch": {"max_batch_size": 16, "batch_wait_timeout_s": 0.02},
    }


@pytest.fixture(scope="module")
def service(tiny_dir: Path, app_args: dict[str, Any]) -> Iterator[str]:
    with serve_tiny(tiny_dir, env={"TEST_CALLBACK_SECRET": CALLBACK_SECRET}, **app_args) as url:
        yield url


def bearer(client_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[client_id]}"}


@pytest.fixture(scope="module")
def client(service: str) -> Iterator[httpx.Client]:
    """The admin's client: sees every job."""
    with httpx.Client(base_url=service, timeout=180.0, headers=bearer("ops")) as c:
        yield c


@pytest.fixture(scope="module")
def alice(service: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service, timeout=180.0, headers=bearer("alice")) as c:
        yield c


@pytest.fixture(scope="module")
def bob(service: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service, timeout=180.0, headers=bearer("bob")) as c:
        yield c


def upload(client: httpx.Client, path: Path, **kw: Any) -> httpx.Response:
    headers = kw.pop("headers", None)
    return client.post("/v1/videos", files={"video": (path.name, path.read_bytes(), "video/mp4")}, data=kw, headers=headers)


def run_job(client: httpx.Client, path: Path, **kw: Any) -> dict[str, Any]:
    resp = upload(client, path, **kw)
    assert resp.status_code == 202, resp.text
    return wait_job(client, resp.json()["id"])


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, f"expected {status} {code}, got {resp.status_code}: {resp.text[:300]}"
    body = resp.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body


@pytest.fixture(scope="module")
def crossing_job(client: httpx.Client, clips: dict[str, Path]) -> dict[str, Any]:
    job = run_job(client, clips["crossing"])
    assert job["state"] == "succeeded", job
    return job


# -- the main path -------------------------------------------------------------------------------


def test_upload_poll_result_equals_the_in_process_runner(client, clips, crossing_job, tiny_dir):
    from pipeline.tiny.cache import runner_settings, tiny_roots
    from pipeline.video.runner import VideoRunner

    job = crossing_job
    assert job["progress"] == {"frames_done": 12, "frames_total": 12, "fraction": 1.0, "resumed_from_frame": 0}
    assert {"decode_s", "models_s", "tracking_s", "total_s"} <= set(job["timings"])
    assert job["results"] == ["json", "jsonl", "npz"] and job["error"] is None
    got = client.get(job["links"]["result"]).json()
    runner = VideoRunner.from_cache(tiny_roots(tiny_dir), download=False, device="cpu", **runner_settings())
    want = json.loads(runner.run(clips["crossing"]).model_dump_json())
    assert got["tracks"], "the tiny models should track the two drawn figures"
    assert_same_result(got, want)


# What HMR2 computes for each person. A forward of 1 to 3 crops runs other CPU matrix kernels
# than one of 4 or more (measured on one thread with the tiny models: every batch of 4 or more
# gives a crop the same bits, whatever else is in it; batches of 1 to 3 do not), and the served
# MeshRegressor's batches are whatever crops of a chunk arrive within its wait, while the CLI
# runs a chunk's crops in one forward. The two answers of a crop then differ by float32 rounding
# only: at most 1.3 float32 epsilons of the field's largest value between `--chunk-size 1` and
# `--chunk-size 8` runs of this clip, detections (boxes, scores) bit for bit the same.
HMR2_FIELDS = ("keypoints_2d", "keypoints_3d", "smpl.global_orient", "smpl.body_pose", "smpl.betas",
               "camera.pred_cam", "camera.t_crop", "camera.t_full")
HMR2_ROUNDING = 4 * float(np.finfo(np.float32).eps)


def _flat(person: dict[str, Any]) -> dict[str, Any]:
    """A person's values by name, the groups' spelled ``smpl.betas``, ``camera.t_full``."""
    out: dict[str, Any] = {}
    for key, value in person.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def test_cli_tiny_profile_gives_the_served_result(client, clips, crossing_job, tiny_dir):
    """``python -m pipeline video --profile tiny`` gives what a video job of the tiny application
    gives: the same frames, people, track ids and tracks, every value bit for bit except HMR2's
    numbers, which may differ by the rounding of another batch size (`HMR2_ROUNDING`)."""
    got = client.get(crossing_job["links"]["result"]).json()
    want, _ = pipeline_cli("video", "--profile", "tiny", "--offline", "--no-progress", str(clips["crossing"]), tiny_dir=tiny_dir)
    assert got["tracks"], "the tiny models should track the two drawn figures"
    assert {k: v for k, v in got.items() if k != "frames"} == {k: v for k, v in want.items() if k != "frames"}
    assert len(got["frames"]) == len(want["frames"])
    for fg, fw in zip(got["frames"], want["frames"]):
        assert {k: v for k, v in fg.items() if k != "people"} == {k: v for k, v in fw.items() if k != "people"}
        assert [p["track_id"] for p in fg["people"]] == [p["track_id"] for p in fw["people"]]
        for pg, pw in zip(fg["people"], fw["people"]):
            g, w = _flat(pg), _flat(pw)
            assert g.keys() == w.keys() and set(HMR2_FIELDS) <= w.keys()
            # the detector's box and score, person index, track id, focal lengths: the same bits
            assert {k: g[k] for k in w if k not in HMR2_FIELDS} == {k: v for k, v in w.items() if k not in HMR2_FIELDS}
            for name in HMR2_FIELDS:
                a, b = np.asarray(g[name], np.float64), np.asarray(w[name], np.float64)
                bound = HMR2_ROUNDING * np.abs(b).max()
                assert a.shape == b.shape and np.abs(a - b).max() <= bound, (fw["frame_index"], name, np.abs(a - b).max() / bound)


def test_result_validates_against_the_published_schema(client, crossing_job):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert "VideoResult" in schemas and "JobStatus" in schemas
    result_schema = {**schemas["VideoResult"], "components": spec["components"]}
    jsonschema.Draft202012Validator(result_schema).validate(client.get(crossing_job["links"]["result"]).json())
    status_schema = {**schemas["JobStatus"], "components": spec["components"]}
    jsonschema.Draft202012Validator(status_schema).validate(client.get(crossing_job["links"]["self"]).json())
    op = spec["paths"]["/v1/jobs/{job_id}/result"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert op["$ref"].endswith("/VideoResult")


def test_npz_result_holds_the_same_numbers(client, crossing_job):
    doc = client.get(crossing_job["links"]["result"]).json()
    resp = client.get(crossing_job["links"]["result"], params={"format": "npz"})
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/octet-stream"
    arrays = np.load(io.BytesIO(resp.content), allow_pickle=False)
    people = [p for f in doc["frames"] for p in f["people"]]
    assert arrays["bbox"].shape == (len(people), 4) and arrays["body_pose"].shape == (len(people), 23, 3, 3)
    np.testing.assert_allclose(arrays["keypoints_3d"][0], people[0]["keypoints_3d"], atol=1e-6)
    assert arrays["track_id"].tolist() == [-1 if p["track_id"] is None else p["track_id"] for p in people]
    assert "vertices" not in arrays.files
    assert json.loads(str(arrays["meta"]))["tracks"] == doc["tracks"]
    assert_error(client.get(crossing_job["links"]["result"], params={"vertices": "true"}), 409, "vertices_not_computed")


def test_json_lines_are_the_frames_of_the_document(client, crossing_job):
    doc = client.get(crossing_job["links"]["result"]).json()
    resp = client.get(crossing_job["links"]["result"], params={"format": "jsonl"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/jsonl")
    assert [json.loads(line) for line in resp.text.splitlines()] == doc["frames"]


def test_exports_of_a_finished_job(client, crossing_job, gltf_validator, tmp_path):
    doc = client.get(crossing_job["links"]["result"]).json()
    assert doc["tracks"], "the tiny models should track the two drawn figures"
    track = doc["tracks"][0]
    track_id = track["track_id"]
    url = f"/v1/jobs/{crossing_job['id']}/export"
    glb = client.get(url, params={"format": "glb", "track": track_id})  # rigged with the tiny profile's SMPL
    assert glb.status_code == 200, glb.text[:300]
    assert glb.headers["content-type"] == "model/gltf-binary" and glb.content[:4] == b"glTF"
    assert glb.headers["content-disposition"] == f'attachment; filename="{crossing_job["id"]}-track-{track_id}.glb"'
    (tmp_path / "track.glb").write_bytes(glb.content)
    report = validate_glb(gltf_validator, tmp_path / "track.glb")
    assert report["numErrors"] == 0, report["messages"][:5]
    gltf, _ = parse_glb(glb.content)
    assert len(gltf["skins"][0]["joints"]) == 24 and len(gltf["animations"]) == 1
    spanned = track["last_frame"] - track["first_frame"] + 1
    bvh = parse_bvh(client.get(url, params={"format": "bvh", "track": track_id}).text)
    assert len(bvh["joints"]) == 24 and bvh["motion"].shape[0] == spanned
    assert bvh["frame_time"] == pytest.approx(1.0 / doc["video"]["fps"], rel=1e-5)
    amass = np.load(io.BytesIO(client.get(url, params={"format": "amass", "track": track_id}).content))
    assert amass["poses"].shape == (spanned, 72) and amass["trans"].shape == (spanned, 3)
    assert float(amass["mocap_framerate"]) == pytest.approx(doc["video"]["fps"])
    mot = client.get(url, params={"format": "mot"})
    confirmed = [(f["frame_index"] + 1, p["track_id"]) for f in doc["frames"] for p in f["people"] if p["track_id"] is not None]
    assert sorted((int(r.split(",")[0]), int(r.split(",")[1])) for r in mot.text.splitlines()) == sorted(confirmed)
    assert_error(client.get(url, params={"format": "bvh", "track": 9999}), 404, "track_not_found")
    assert_error(client.get(url, params={"format": "fbx"}), 422, "export_format_unknown")

    import joblib

    pkl = client.get(url, params={"format": "phalp"})
    assert pkl.status_code == 200 and pkl.headers["content-disposition"].endswith('-tracks.pkl"')
    results = joblib.load(io.BytesIO(pkl.content))
    assert len(results) == len(doc["frames"])
    checked = 0
    for frame, entry in zip(doc["frames"], results.values()):
        detected = {p["track_id"]: p for p in frame["people"] if p["track_id"] is not None}
        assert entry["tracked_ids"] == sorted(detected)
        for i, tid in enumerate(entry["tid"]):
            if entry["tracked_time"][i]:
                continue
            # PHALP's camera is the full-image translation, derived in its own square frame
            np.testing.assert_allclose(entry["camera"][i], detected[tid]["camera"]["t_full"], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(entry["smpl"][i]["betas"], detected[tid]["smpl"]["betas"], atol=1e-6)
            checked += 1
    assert checked == len(confirmed)

    meshes = client.get(url, params={"format": "obj", "track": track_id})
    assert meshes.status_code == 200 and meshes.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(meshes.content)) as zf:
        frames = [f["frame_index"] for f in doc["frames"] if any(p["track_id"] == track_id for p in f["people"])]
        assert zf.namelist() == [f"track-{track_id}/frame-{f:06d}.obj" for f in frames]


def test_vertices_on_request_are_in_the_binary_form_only(client, clips):
    job = run_job(client, clips["one"], vertices="true")
    assert job["state"] == "succeeded" and job["options"]["vertices"] is True
    url = job["links"]["result"]
    document = client.get(url).json()
    people = [p for f in document["frames"] for p in f["people"]]
    assert people and all(p["vertices"] is None for p in people)
    assert_error(client.get(url, params={"vertices": "true"}), 400, "vertices_npz_only")
    arrays = np.load(io.BytesIO(client.get(url, params={"format": "npz", "vertices": "true"}).content))
    assert arrays["vertices"].shape == (len(people), 6890, 3)
    np.testing.assert_allclose(arrays["keypoints_3d"], [p["keypoints_3d"] for p in people], atol=1e-6)
    assert "vertices" not in np.load(io.BytesIO(client.get(url, params={"format": "npz"}).content)).files

    # the OBJ export poses the same mesh from the stored parameters: the model's vertices + t_full, y up
    trimesh = pytest.importorskip("trimesh")
    rows = {}  # zip entry -> the person's NPZ row
    unconfirmed = 0
    for row, (frame, person) in enumerate((f, p) for f in document["frames"] for p in f["people"]):
        if person["track_id"] is None:
            unconfirmed += 1
            rows[f"unconfirmed-{unconfirmed}/frame-{frame['frame_index']:06d}.obj"] = row
        else:
            rows[f"track-{person['track_id']}/frame-{frame['frame_index']:06d}.obj"] = row
    meshes = client.get(f"/v1/jobs/{job['id']}/export", params={"format": "obj", "include_unconfirmed": "true"})
    assert meshes.status_code == 200, meshes.text[:300]
    with zipfile.ZipFile(io.BytesIO(meshes.content)) as zf:
        assert sorted(zf.namelist()) == sorted(rows)
        for name, row in rows.items():
            mesh = trimesh.load(io.BytesIO(zf.read(name)), file_type="obj", process=False, maintain_order=True)
            want = (arrays["vertices"][row].astype(np.float64) + arrays["t_full"][row]) * [1.0, -1.0, -1.0]
            np.testing.assert_allclose(mesh.vertices, want, atol=2e-5, err_msg=name)


def test_render_option_serves_a_seekable_overlay(client, clips, crossing_job):
    """The job succeeds with its result, its overlay drawn after it (`overlay.state`); once
    ready, the overlay is a seekable MP4 of every frame."""
    import av

    job = run_job(client, clips["crossing"], render="true")
    assert job["state"] == "succeeded", job
    assert {"json", "jsonl", "npz"} <= set(job["results"])
    assert job["overlay"]["state"] in ("pending", "ready") and job["overlay"]["error"] is None
    early = client.get(f"/v1/jobs/{job['id']}/overlay.mp4")
    if early.status_code == 409:  # asked while still drawn
        assert early.json()["error"]["code"] == "overlay_pending"
    else:
        assert early.status_code == 200
        assert client.get(f"/v1/jobs/{job['id']}").json()["overlay"]["state"] == "ready"
    job = wait_overlay(client, job["id"])
    assert job["overlay"] == {"state": "ready", "error": None}
    assert job["options"]["render"] is True and "overlay" in job["results"]
    assert crossing_job["overlay"] is None  # render=false: no overlay at all
    url = job["links"]["overlay"]
    assert url == f"/v1/jobs/{job['id']}/overlay.mp4"
    whole = client.get(url)
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes"
    with av.open(io.BytesIO(whole.content)) as container:
        frames = [f for f in container.decode(video=0)]
    assert len(frames) == job["progress"]["frames_total"] == 12
    assert (frames[0].width, frames[0].height) == (640, 360)
    size = len(whole.content)
    for header, (first, last) in {"bytes=100-1099": (100, 1099), "bytes=-64": (size - 64, size - 1)}.items():
        part = client.get(url, headers={"Range": header})
        assert part.status_code == 206, header
        assert part.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert part.content == whole.content[first : last + 1]
    past = assert_error(client.get(url, headers={"Range": f"bytes={size}-"}), 416, "range_not_satisfiable")
    assert past["error"]["message"]
    assert_error(client.get(crossing_job["links"]["self"] + "/overlay.mp4"), 404, "overlay_not_requested")
    assert_error(client.get("/v1/jobs/" + "0" * 32 + "/overlay.mp4"), 404, "job_not_found")


def test_two_videos_at_once_both_finish(client, clips):
    a = upload(client, clips["crossing"])
    b = upload(client, clips["second"])
    assert a.status_code == b.status_code == 202
    ja, jb = wait_job(client, a.json()["id"]), wait_job(client, b.json()["id"])
    assert ja["state"] == jb["state"] == "succeeded", (ja, jb)
    assert jb["started_at"] < ja["finished_at"], "the two jobs should have run at the same time"
    assert len(client.get(jb["links"]["result"]).json()["frames"]) == 6


def test_idempotency_key_returns_the_same_job(client, clips):
    key = {"Idempotency-Key": "retry-me-123"}
    first = upload(client, clips["one"], headers=key)
    again = upload(client, clips["one"], headers=key)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers.get("idempotent-replayed") == "true"
    assert first.headers["location"] == f"/v1/jobs/{first.json()['id']}"
    assert wait_job(client, first.json()["id"])["state"] == "succeeded"


def test_idempotency_key_with_another_video_is_refused(client, clips, app_args):
    key = {"Idempotency-Key": "reused-key-7"}
    first = upload(client, clips["one"], headers=key)
    assert first.status_code == 202
    other = upload(client, clips["second"], headers=key)
    assert_error(other, 422, "idempotency_key_reused")
    assert other.json()["error"]["details"]["job_id"] == first.json()["id"]
    # the same video with other options is another request too
    assert_error(upload(client, clips["one"], headers=key, vertices="true"), 422, "idempotency_key_reused")
    assert upload(client, clips["one"], headers=key).headers.get("idempotent-replayed") == "true"
    assert wait_job(client, first.json()["id"])["state"] == "succeeded"
    assert list((Path(app_args["data_dir"]) / "uploads").iterdir()) == []  # refused bodies are gone


def test_refused_uploads_leave_nothing_on_disk(client, clips, app_args):
    uploads = Path(app_args["data_dir"]) / "uploads"
    assert_error(upload(client, clips["one"], callback_url="ftp://example.org/hook"), 400, "callback_url_invalid")
    assert_error(upload(client, clips["one"], headers={"Idempotency-Key": "k" * 300}), 400, "idempotency_key_invalid")
    assert_error(upload(client, clips["truncated"]), 400, "video_corrupt")
    assert list(uploads.iterdir()) == []


def test_full_queue_is_429_with_retry_after_then_cancel_and_delete(client, clips):
    ids = []
    for _ in range(MAX_ACTIVE + MAX_QUEUED):
        resp = upload(client, clips["long"])
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["id"])
    refused = upload(client, clips["one"])
    body = assert_error(refused, 429, "too_many_jobs")
    assert int(refused.headers["retry-after"]) >= 1 and body["error"]["details"]["max_queued"] == MAX_QUEUED
    for job_id in ids:
        resp = client.delete(f"/v1/jobs/{job_id}")
        assert resp.status_code in (202, 204), resp.text
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(client.get(f"/v1/jobs/{i}").status_code != 404 for i in ids):
        time.sleep(0.5)
    for job_id in ids:
        assert_error(client.get(f"/v1/jobs/{job_id}"), 404, "job_not_found")
    assert_error(client.delete(f"/v1/jobs/{ids[0]}"), 404, "job_not_found")


def test_list_paging_and_filter(client, crossing_job):
    everything = client.get("/v1/jobs", params={"limit": 1000}).json()
    assert everything["total"] == len(everything["jobs"]) >= 2
    first = client.get("/v1/jobs", params={"limit": 1}).json()
    second = client.get("/v1/jobs", params={"limit": 1, "offset": 1}).json()
    assert first["total"] == everything["total"] and len(first["jobs"]) == 1
    assert [first["jobs"][0]["id"], second["jobs"][0]["id"]] == [j["id"] for j in everything["jobs"][:2]]
    done = client.get("/v1/jobs", params={"state": "succeeded", "limit": 1000}).json()
    assert crossing_job["id"] in [j["id"] for j in done["jobs"]]
    assert all(j["state"] == "succeeded" for j in done["jobs"])
    assert_error(client.get("/v1/jobs", params={"state": "nope"}), 422, "request_invalid")
    assert_error(client.get("/v1/jobs", params={"limit": 916, "offset": 575207384587722167418880}), 422, "request_invalid")
    assert_error(client.get("/v1/jobs", params={"limit": 0}), 422, "request_invalid")
    assert_error(client.get("/v1/jobs/not-a-job"), 404, "job_not_found")


# -- clients ---------------------------------------------------------------------------------------


def test_each_client_sees_only_its_own_jobs_and_the_admin_sees_all(alice, bob, client, clips):
    a = upload(alice, clips["one"])
    b = upload(bob, clips["one"])
    assert a.status_code == b.status_code == 202, (a.text, b.text)
    ja, jb = wait_job(alice, a.json()["id"]), wait_job(bob, b.json()["id"])
    assert ja["state"] == jb["state"] == "succeeded" and (ja["client"], jb["client"]) == ("alice", "bob")
    for me, mine, other in ((alice, ja, jb), (bob, jb, ja)):
        listed = me.get("/v1/jobs", params={"limit": 1000}).json()
        ids = [j["id"] for j in listed["jobs"]]
        assert mine["id"] in ids and other["id"] not in ids and listed["total"] == len(ids)
        assert {j["client"] for j in listed["jobs"]} == {mine["client"]}
        assert me.get(mine["links"]["result"]).status_code == 200
        # another client's job answers as a job that does not exist, on every route
        job = f"/v1/jobs/{other['id']}"
        assert_error(me.get(job), 404, "job_not_found")
        assert_error(me.get(job + "/result"), 404, "job_not_found")
        assert_error(me.get(job + "/export", params={"format": "mot"}), 404, "job_not_found")
        assert_error(me.get(job + "/overlay.mp4"), 404, "job_not_found")
        assert_error(me.delete(job), 404, "job_not_found")
    everything = {j["id"] for j in client.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]}
    assert {ja["id"], jb["id"]} <= everything
    assert client.get(f"/v1/jobs/{jb['id']}").json()["client"] == "bob"
    assert client.get(f"/v1/jobs/{ja['id']}/result").status_code == 200  # bob's delete did nothing
    assert alice.delete(f"/v1/jobs/{ja['id']}").status_code == 204
    assert_error(client.get(f"/v1/jobs/{ja['id']}"), 404, "job_not_found")
    assert client.delete(f"/v1/jobs/{jb['id']}").status_code == 204  # an admin manages any client's job
    assert_error(bob.get(f"/v1/jobs/{jb['id']}"), 404, "job_not_found")


def test_an_idempotency_key_is_the_clients_own(alice, bob, clips):
    key = {"Idempotency-Key": "order-1001"}
    a = upload(alice, clips["one"], headers=key)
    b = upload(bob, clips["second"], headers=key)  # another client, another request: no 422
    assert a.status_code == b.status_code == 202, (a.text, b.text)
    assert a.json()["id"] != b.json()["id"] and "idempotent-replayed" not in b.headers
    again = upload(alice, clips["one"], headers=key)
    assert again.json()["id"] == a.json()["id"] and again.headers.get("idempotent-replayed") == "true"
    assert wait_job(alice, a.json()["id"])["state"] == wait_job(bob, b.json()["id"])["state"] == "succeeded"


def test_a_client_at_its_job_limit_gets_429_while_another_still_submits(alice, bob, client, clips):
    mine = [upload(alice, clips["long"]) for _ in range(PER_CLIENT)]
    assert [r.status_code for r in mine] == [202] * PER_CLIENT, [r.text for r in mine]
    refused = upload(alice, clips["one"])
    body = assert_error(refused, 429, "client_job_limit")
    assert body["error"]["details"] == {
        "retry_after": int(refused.headers["retry-after"]), "client": "alice", "client_jobs": PER_CLIENT,
        "max_jobs_per_client": PER_CLIENT,
    }
    theirs = upload(bob, clips["one"])
    assert theirs.status_code == 202, theirs.text
    for resp in mine:
        assert alice.delete(f"/v1/jobs/{resp.json()['id']}").status_code in (202, 204)
    assert wait_job(bob, theirs.json()["id"])["state"] == "succeeded"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(alice.get(f"/v1/jobs/{r.json()['id']}").status_code != 404 for r in mine):
        time.sleep(0.5)
    again = upload(alice, clips["one"])  # its jobs gone, the client submits again
    assert again.status_code == 202, again.text
    assert wait_job(alice, again.json()["id"])["state"] == "succeeded"


def _walk(value: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted key, value) of a JSON document."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield f"{where}.{k}", v
            yield from _walk(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield f"{where}[{i}]", v
            yield from _walk(v, f"{where}[{i}]")


def test_info_shows_where_things_are_to_admins_only(alice, client):
    admin, mine = client.get("/v1/info").json(), alice.get("/v1/info").json()
    locating = ("path", "node_id", "pid", "replica", "job_store", "ingress")
    admin_keys = {k.rsplit(".", 1)[-1] for k, _ in _walk(admin)}
    assert set(locating) <= admin_keys  # what the client must not see is there for the admin
    assert any(isinstance(v, str) and v.startswith("/") for _, v in _walk(admin))
    for key, value in _walk(mine):
        assert key.rsplit(".", 1)[-1] not in locating, key
        assert not (isinstance(value, str) and (value.startswith("/") or "://" in value)), (key, value)
    # what a client needs is still there: the models, their checksums, the limits
    assert mine["deployments"]["detector"]["model"] == admin["deployments"]["detector"]["model"]
    assert mine["deployments"]["regressor"]["files"] and all(
        f["sha256"] == admin["deployments"]["regressor"]["files"][k]["sha256"] for k, f in mine["deployments"]["regressor"]["files"].items()
    )
    assert mine["limits"] == admin["limits"] and mine["videos"]["disk"] is None


def test_missing_and_unknown_keys_are_401(service, clips):
    digest = hashlib.sha256(KEYS["alice"].encode()).hexdigest()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEYS["alice"]},
                    {"Authorization": f"Bearer {digest}"}, {"Authorization": "Basic " + KEYS["alice"]}):
        for method, path in (("GET", "/v1/jobs"), ("GET", "/v1/jobs/" + "0" * 32), ("GET", "/v1/info"),
                             ("DELETE", "/v1/jobs/" + "0" * 32)):
            resp = httpx.request(method, service + path, headers=headers, timeout=60)
            assert_error(resp, 401, "unauthorized")
            assert resp.headers["www-authenticate"] == "Bearer"
        resp = httpx.post(service + "/v1/videos", files={"video": ("one.mp4", clips["one"].read_bytes(), "video/mp4")},
                          headers=headers, timeout=60)
        assert_error(resp, 401, "unauthorized")
    me = httpx.get(service + "/v1/info", headers=bearer("alice"), timeout=60).json()
    assert me["auth"] == "keys" and me["caller"] == {"client": "alice", "admin": False}
    assert httpx.get(service + "/healthz").status_code == 200  # liveness needs no key


# -- edge cases: each with its documented answer ---------------------------------------------------


@pytest.mark.parametrize(
    ("clip", "status", "code"),
    [
        ("not_a_video", 415, "video_unsupported_format"),
        ("truncated", 400, "video_corrupt"),
        ("zero", 400, "video_empty"),
        ("audio", 422, "video_no_video_stream"),
        ("huge", 413, "video_too_large"),
    ],
)
def test_bad_uploads_are_refused_at_once(client, clips, clip, status, code):
    before = client.get("/v1/jobs").json()["total"]
    assert_error(upload(client, clips[clip]), status, code)
    assert client.get("/v1/jobs").json()["total"] == before, "a refused upload must not create a job"


def test_upload_protocol_errors(client, clips):
    assert_error(client.post("/v1/videos", content=b"x", headers={"content-type": "text/plain"}), 415, "unsupported_media_type")
    assert_error(client.post("/v1/videos", files={"image": ("a.mp4", b"1234", "video/mp4")}), 400, "multipart_invalid")
    raw = client.post("/v1/videos", content=clips["one"].read_bytes(), headers={"content-type": "video/mp4"})
    assert raw.status_code == 202, raw.text
    assert wait_job(client, raw.json()["id"])["state"] == "succeeded"


def test_one_frame(client, clips):
    job = run_job(client, clips["one"])
    doc = client.get(job["links"]["result"]).json()
    assert job["state"] == "succeeded" and len(doc["frames"]) == 1 and doc["video"]["frame_count"] == 1


def test_no_people_is_a_valid_empty_result(client, clips):
    job = run_job(client, clips["empty_scene"])
    doc = client.get(job["links"]["result"]).json()
    assert len(doc["frames"]) == 4 and all(f["people"] == [] for f in doc["frames"]) and doc["tracks"] == []


def test_rotation_metadata_is_applied(client, clips):
    doc = client.get(run_job(client, clips["rotated"])["links"]["result"]).json()
    assert doc["video"]["rotation"] == 90
    assert (doc["video"]["width"], doc["video"]["height"]) == (360, 640)


def test_variable_frame_rate_keeps_real_times(client, clips):
    doc = client.get(run_job(client, clips["vfr"])["links"]["result"]).json()
    np.testing.assert_allclose([f["time_s"] for f in doc["frames"]], [0.0, 0.04, 0.3, 0.34], atol=1e-6)


# -- /pose/video ----------------------------------------------------------------------------------


def test_pose_video_inside_the_media_folder(client, clips):
    resp = client.post("/pose/video", json={"video_path": "one.mp4"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["schema_version"] and len(resp.json()["frames"]) == 1
    absolute = client.post("/pose/video", json={"video_path": str(clips["media"] / "one.mp4")})
    assert absolute.status_code == 200, absolute.text


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/etc/passwd", 403, "path_outside_media_root"),
        ("../outside.mp4", 403, "path_outside_media_root"),
        ("link.mp4", 403, "path_outside_media_root"),
        ("missing.mp4", 404, "path_not_found"),
        ("", 400, "path_invalid"),
    ],
)
def test_pose_video_refuses_paths_outside(client, path, status, code):
    assert_error(client.post("/pose/video", json={"video_path": path}), status, code)


def test_json_bodies_are_bounded(client):
    big = json.dumps({"video_path": "one.mp4", "pad": "x" * 200_000}).encode()
    headers = {"content-type": "application/json"}
    assert_error(client.post("/pose/video", content=big, headers=headers), 413, "request_too_large")

    def chunked():  # no Content-Length: refused as it arrives
        yield big[:1000]
        yield big[1000:]

    assert_error(client.post("/pose/video", content=chunked(), headers=headers), 413, "request_too_large")
    deep = b"[" * 20000 + b"]" * 20000
    assert_error(client.post("/pose/video", content=deep, headers=headers), 400, "request_malformed")
    assert_error(client.post("/pose/video", json={"video_path": "a" * 5000}), 422, "request_invalid")
    assert client.post("/pose/video", json={"video_path": "one.mp4"}).status_code == 200  # still serving


# -- callbacks and restarts -----------------------------------------------------------------------


def test_callback_is_called_when_the_job_ends(client, clips):
    received: list[dict[str, Any]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["content-length"]))
            assert verify(CALLBACK_SECRET.encode(), body, self.headers[SIGNATURE_HEADER])
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", free_port()), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        job = run_job(client, clips["one"], callback_url=f"http://127.0.0.1:{server.server_port}/hook")
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        server.shutdown()
        server.server_close()
    assert received and received[0]["event"] == "job.succeeded" and received[0]["job"]["id"] == job["id"]
    assert "callback_url" not in received[0]["job"] and "idempotency_key" not in received[0]["job"]


@pytest.mark.parametrize(
    "url, code",
    [
        ("http://169.254.169.254/latest/meta-data/", "callback_url_forbidden"),  # cloud metadata
        ("http://10.0.0.7/hook", "callback_url_forbidden"),
        ("http://127.0.0.53:8265/api/jobs/", "callback_url_forbidden"),  # the Ray dashboard port, loopback not allowed
        ("http://[::ffff:127.0.0.2]/hook", "callback_url_forbidden"),
        ("file:///etc/passwd", "callback_url_invalid"),
        ("https://[2002:a9fe:a9fe::]/", "callback_url_forbidden"),  # 6to4 of the metadata address
        ("https://[2002:7f00:1::]/", "callback_url_forbidden"),  # 6to4 of loopback
        ("https://[fec0::1]/", "callback_url_forbidden"),  # site-local
        ("https://[64:ff9b::a9fe:a9fe]/", "callback_url_forbidden"),  # NAT64 of the metadata address
        ("https://[2001::1]/", "callback_url_forbidden"),  # Teredo
        ("https://[::ffff:127.0.0.1]/", "callback_url_forbidden"),  # IPv4-mapped loopback
        ("https://example.com:0/", "callback_url_invalid"),
        ("https://example.com/hook\r\nX-Injected: 1", "callback_url_invalid"),
    ],
)
def test_callbacks_cannot_reach_inside(client, clips, url, code):
    assert_error(upload(client, clips["one"], callback_url=url), 400, code)


def test_a_public_callback_address_is_accepted(client, clips):
    """A literal public address needs no DNS: accepted (the callback itself may then fail to
    arrive from a machine without network; that is logged, the job stands)."""
    done = run_job(client, clips["one"], callback_url="https://[2606:4700:4700::1111]/hook")
    assert done["state"] == "succeeded" and done["callback_url"] == "https://[2606:4700:4700::1111]/hook"


# -- the whole API under a fuzzer ----------------------------------------------------------------


def test_schemathesis_finds_no_server_error_and_nothing_undocumented(client, clips, service, tmp_path):
    """Schemathesis, its CLI as a user runs it, over every operation of ``/openapi.json`` with
    every phase (examples, coverage, fuzzing, stateful links), as the admin: no 5xx, no status,
    header, content type or body the document does not declare (error bodies carry a code of
    the table), methods the document does not name answered 405 with ``Allow``, and calls
    without the key refused. Job ids and media paths are drawn sometimes from real ones (a
    succeeded job with an overlay, files in the media folder and a link out of it), so that the job routes are reached beyond their 404.

    ``positive_data_acceptance`` is left out: a schema cannot tell a video from other bytes, so
    a schema-valid upload of random bytes is rightly refused."""
    import shutil
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is a test dependency: its st command is missing"
    done = run_job(client, clips["one"], render="true")
    assert done["state"] == "succeeded", done
    assert wait_overlay(client, done["id"])["overlay"]["state"] == "ready"
    media = sorted(p.name for p in clips["media"].iterdir() if p.suffix == ".mp4" and p.name != "crossing.mp4")
    assert "link.mp4" in media and "one.mp4" in media
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        "[dictionaries.jobs]\n"
        f"values = {json.dumps([done['id']])}\n"
        "[dictionaries.media]\n"
        f"values = {json.dumps(media)}\n"
        "[parameters]\n"
        '"path.job_id" = { dictionary = "jobs", probability = 0.6 }\n'
        '"body.video_path" = { dictionary = "media", probability = 0.5 }\n'
    )
    operations = {
        f"{method.upper()} {path}" for path, item in client.get("/openapi.json").json()["paths"].items() for method in item
        if method in ("get", "put", "post", "delete", "patch")
    }
    junit = tmp_path / "schemathesis.xml"
    # One worker thread: Hypothesis describes filter lambdas with ``ast.parse``, and on CPython
    # before 3.12 two threads parsing at once can fail with "SystemError: AST constructor
    # recursion depth mismatch" (python/cpython#106905), an error of the fuzzer, not of the API.
    run = subprocess.run(
        [st, "--config-file", str(config), "run", f"{service}/openapi.json",
         "--header", f"Authorization: Bearer {KEYS['ops']}", "--checks", "all",
         "--exclude-checks", "positive_data_acceptance", "--max-examples", "12", "--seed", "20261204",
         "--request-timeout", "150", "--workers", "1", "--generation-database", "none",
         "--report", "junit", "--report-junit-path", str(junit)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    suite = ET.parse(junit).getroot()
    cases = suite.findall(".//testcase")
    assert {c.get("name") for c in cases} == operations | {"Stateful tests"}, "every operation, then the links between them"
    assert [c.get("name") for c in cases if c.find("failure") is not None or c.find("error") is not None] == []


@pytest.fixture(scope="module")
def long_reference(client: httpx.Client, clips: dict[str, Path]) -> dict[str, Any]:
    """The uninterrupted result of the clip the recovery tests interrupt."""
    job = run_job(client, clips["long"])
    assert job["state"] == "succeeded", job
    return client.get(job["links"]["result"]).json()


def _wait_for_progress(client: httpx.Client, job_id: str, frames: int) -> None:
    deadline = time.monotonic() + 180
    while client.get(f"/v1/jobs/{job_id}").json()["progress"]["frames_done"] < frames:
        assert time.monotonic() < deadline, f"the job never reached {frames} frames"
        time.sleep(0.1)


@pytest.mark.parametrize("deployment", ["tracker", "detector", "regressor"])
def test_replica_killed_mid_job_resumes_with_an_identical_result(client, clips, crossing_job, long_reference, deployment):
    """A replica's process is killed (SIGKILL, as an operator's ``kill -9``) while a job runs.
    Serve starts a new one; the job ends succeeded with the uninterrupted run's result. A dead
    worker costs the job one new attempt that resumes at its last checkpoint; a dead model
    replica costs a retry inside the same attempt."""
    import signal

    before = client.get("/v1/info").json()["deployments"][deployment]["pid"]
    resp = upload(client, clips["long"])
    assert resp.status_code == 202
    job_id = resp.json()["id"]
    chunk = client.get("/v1/info").json()["deployments"]["tracker"]["chunk_size"]
    _wait_for_progress(client, job_id, chunk)
    os.kill(before, signal.SIGKILL)
    job = wait_job(client, job_id, timeout=300)
    assert job["state"] == "succeeded", (job["error"], job["attempts"], job["progress"])
    assert_same_result(client.get(job["links"]["result"]).json(), long_reference)
    if deployment == "tracker":
        assert job["attempts"] == 2
        resumed = job["progress"]["resumed_from_frame"]
        assert resumed >= chunk and resumed % chunk == 0, job["progress"]
    else:
        assert job["attempts"] == 1
    after = client.get("/v1/info").json()["deployments"][deployment]["pid"]
    assert after != before
    earlier = client.get(crossing_job["links"]["result"])
    assert earlier.status_code == 200 and len(earlier.json()["frames"]) == 12


def test_application_restart_mid_job_loses_nothing(client, clips, crossing_job, long_reference, tiny_dir, app_args):
    """The whole application is deleted while a job runs and started again on the same data
    folder: the job resumes from its checkpoint with the uninterrupted result, and finished
    results are still there. Runs last: it replaces the application the other tests use."""
    from ray import serve

    from deployments.app import AppArgs, build_app

    resp = upload(client, clips["long"])
    assert resp.status_code == 202
    job_id = resp.json()["id"]
    deadline = time.monotonic() + 180
    while client.get(f"/v1/jobs/{job_id}").json()["progress"]["frames_done"] == 0:
        assert time.monotonic() < deadline, "the job never made progress"
        time.sleep(0.2)
    serve.delete("pose")
    serve.run(build_app(AppArgs(profile="tiny", tiny_dir=str(tiny_dir), **app_args)), name="pose", route_prefix="/")
    job = wait_job(client, job_id, timeout=300)
    assert job["state"] == "succeeded", job
    assert job["attempts"] >= 2
    assert_same_result(client.get(job["links"]["result"]).json(), long_reference)
    earlier = client.get(crossing_job["links"]["result"])
    assert earlier.status_code == 200 and len(earlier.json()["frames"]) == 12
    listed = client.get("/v1/jobs", params={"limit": 100}).json()
    assert {crossing_job["id"], job_id} <= {j["id"] for j in listed["jobs"]}


# -- frame ranges --------------------------------------------------------------------------------


def test_a_frame_range_job_keeps_the_videos_frame_numbers(client, clips, crossing_job):
    import av

    job = run_job(client, clips["crossing"], start_frame="3", end_frame="9", render="true")  # form fields
    assert job["state"] == "succeeded", job
    assert job["options"]["start_frame"] == 3 and job["options"]["end_frame"] == 9
    assert job["progress"]["frames_done"] == job["progress"]["frames_total"] == 6
    doc = client.get(job["links"]["result"]).json()
    assert [f["frame_index"] for f in doc["frames"]] == [3, 4, 5, 6, 7, 8]
    assert doc["video"]["frame_count"] == 6 and doc["video"]["range"]["start_frame"] == 3
    # the people of those frames are the full run's (tracking starts at frame 3, so ids may differ)
    full = client.get(crossing_job["links"]["result"]).json()
    for frame in doc["frames"]:
        want = full["frames"][frame["frame_index"]]
        assert frame["time_s"] == want["time_s"] and len(frame["people"]) == len(want["people"])
        for got, exp in zip(frame["people"], want["people"]):
            np.testing.assert_allclose(got["bbox"], exp["bbox"], rtol=1e-4, atol=1e-4)
    assert sum(len(f["people"]) for f in doc["frames"]) >= 6
    mot = client.get(f"/v1/jobs/{job['id']}/export", params={"format": "mot"})
    assert mot.status_code == 200, mot.text
    assert {int(line.split(",")[0]) for line in mot.text.splitlines()} <= set(range(4, 10))  # 1-based frames 4..9
    job = wait_overlay(client, job["id"])
    assert job["overlay"]["state"] == "ready", job["overlay"]
    with av.open(io.BytesIO(client.get(job["links"]["overlay"]).content)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6


def test_a_range_in_seconds_through_the_drop_in_route(client):
    resp = client.post("/pose/video", json={"video_path": "crossing.mp4", "start_s": 0.25, "end_s": 0.85})
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert [f["frame_index"] for f in doc["frames"]] == [3, 4, 5, 6, 7, 8]
    assert doc["video"]["range"] == {"start_frame": 3, "end_frame": 9, "requested": {"start_s": 0.25, "end_s": 0.85}}


@pytest.mark.parametrize(
    ("query", "form", "code"),
    [
        ({"start_frame": 3, "end_s": 1.0}, {}, "frame_range_mixed"),
        ({}, {"start_frame": "2", "start_s": "0.5"}, "frame_range_mixed"),
        ({"start_frame": 9, "end_frame": 3}, {}, "frame_range_empty"),
        ({"start_s": 0.5, "end_s": 0.5}, {}, "frame_range_empty"),
        ({"start_frame": -1}, {}, "frame_range_negative"),
        ({}, {"end_s": "-2"}, "frame_range_negative"),
        ({}, {"start_frame": "three"}, "frame_range_invalid"),
        ({"start_frame": 12}, {}, "frame_range_past_end"),  # the clip has 12 frames: 0 to 11
        ({"start_s": 1.2}, {}, "frame_range_past_end"),  # and lasts 1.2 s
    ],
)
def test_bad_ranges_are_422_at_upload(client, clips, query, form, code):
    before = client.get("/v1/jobs").json()["total"]
    resp = client.post("/v1/videos", params=query, data=form,
                       files={"video": ("crossing.mp4", clips["crossing"].read_bytes(), "video/mp4")})
    assert_error(resp, 422, code)
    assert client.get("/v1/jobs").json()["total"] == before, "a refused range must not create a job"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"start_frame": 3, "end_s": 1.0}, "frame_range_mixed"),
        ({"start_frame": 50}, "frame_range_past_end"),
        ({"end_frame": -5}, "frame_range_negative"),
        ({"start_frame": "x"}, "request_invalid"),
    ],
)
def test_bad_ranges_are_422_at_the_drop_in_route(client, body, code):
    assert_error(client.post("/pose/video", json={"video_path": "crossing.mp4", **body}), 422, code)


def test_a_range_past_the_end_of_a_video_without_a_frame_count_fails_the_job(client, tmp_path):
    clip = write_video(tmp_path / "crossing.mkv", [figure_frame([120 + 14 * i, 520 - 14 * i]) for i in range(6)])
    job = run_job(client, clip, start_frame="40")  # Matroska states no frame count: known only by decoding
    assert job["state"] == "failed" and job["error"]["code"] == "frame_range_past_end", job
    assert "frame 5" in job["error"]["message"]
