"""Disk bytes per job (`service.jobs.usage`): each client's bytes bounded (507
``client_storage_limit`` with its figures, while other clients still submit), and the disk room
reserved at admission, atomically, for the upload and its expected results, on SQLite and on
the real PostgreSQL; then the same answers through the real FastAPI application.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import InProcessHost

from pipeline.errors import PoseError
from service.jobs import JobStore
from service.jobs.usage import Reservation

# The documented reservation of one frame's results (docs/serving.md, "Bounded disk"): 256 bytes
# of the frame itself and 23,200 per person (JSON and NPZ, in segments and published).
FRAME_BYTES, PERSON_BYTES = 256, 23_200


def _upload(store: JobStore, nbytes: int) -> Path:
    path = store.new_upload_path(".mp4")
    path.write_bytes(os.urandom(nbytes))
    return path


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _refused(call: Any) -> PoseError:
    with pytest.raises(PoseError) as excinfo:
        call()
    return excinfo.value


@pytest.fixture
def store(open_store, tmp_path):
    with open_store(tmp_path / "data", max_active=4, max_queued=16) as s:
        yield s


def test_a_client_past_its_bytes_gets_507_with_its_figures_while_another_submits(store):
    first = store.create(
        input_file=_upload(store, 4000), move_input=True, client="alice",
        reservation=Reservation(result_bytes=3000, client_max_bytes=10_000),
    )
    assert first.disk_bytes == 7000  # its upload and its expected results
    upload = _upload(store, 2000)
    err = _refused(lambda: store.create(
        input_file=upload, move_input=True, client="alice",
        reservation=Reservation(result_bytes=2000, client_max_bytes=10_000),
    ))
    assert (err.code, err.status) == ("client_storage_limit", 507)
    assert {k: err.details[k] for k in ("client", "client_bytes", "incoming_bytes", "max_bytes_per_client")} == {
        "client": "alice", "client_bytes": 7000, "incoming_bytes": 4000, "max_bytes_per_client": 10_000,
    }
    assert upload.exists()  # refused before it moved: the route deletes it
    other = store.create(input_file=_upload(store, 9000), move_input=True, client="bob",
                         reservation=Reservation(client_max_bytes=10_000))
    assert other.disk_bytes == 9000
    _refused(lambda: store.check_admission("alice", None, Reservation(input_bytes=3001, client_max_bytes=10_000)))
    store.check_admission("alice", None, Reservation(input_bytes=3000, client_max_bytes=10_000))  # fits exactly

    # The job runs and publishes a result far smaller than reserved: the client's bytes become
    # what its folder holds, and the second upload fits.
    job = store.claim_next(30.0)
    assert job is not None and job.id == first.id
    store.update_progress(job.id, 10, 10, token=job.attempts)
    store.write_result(job.id, "result.json", b"x" * 500)
    done = store.finish(job.id, {"json": "result.json"}, job.attempts)
    assert done.disk_bytes == _tree_bytes(store.job_dir(job.id)) < 5000
    second = store.create(input_file=upload, move_input=True, client="alice",
                          reservation=Reservation(result_bytes=2000, client_max_bytes=10_000))
    assert second.disk_bytes == 4000
    store.delete(done.id, "alice")
    store.check_admission("alice", None, Reservation(input_bytes=6000, client_max_bytes=10_000))


def test_the_room_left_after_reservations_admits_one_job_not_two(store):
    room = 10_000
    first = store.create(client="alice", reservation=Reservation(result_bytes=6000, room=lambda: room))
    err = _refused(lambda: store.create(client="bob", reservation=Reservation(result_bytes=6000, room=lambda: room)))
    assert (err.code, err.status) == ("storage_full", 507)
    assert {k: err.details[k] for k in ("incoming_bytes", "room_bytes", "reserved_bytes")} == {
        "incoming_bytes": 6000, "room_bytes": 4000, "reserved_bytes": 6000,
    }
    assert store.reserved_bytes() == 6000
    store.cancel(first.id)  # a queued job cancelled gives its reservation back
    assert store.reserved_bytes() == 0
    assert store.get(first.id).disk_bytes == 0  # it had no input and wrote nothing
    store.create(client="bob", reservation=Reservation(result_bytes=6000, room=lambda: room))


def test_uploads_admitted_at_once_by_two_stores_never_overbook_the_room(open_store, tmp_path):
    """Two Ingress replicas (two stores on one database), eight uploads at the same instant, room
    for three: exactly three are accepted, and the reservations stay within the room."""
    data = tmp_path / "data"
    stores = [open_store(data, max_active=4, max_queued=16) for _ in range(2)]
    room, each, callers = 10_000, 3000, 8
    start = threading.Barrier(callers)
    outcomes: list[str] = []
    lock = threading.Lock()

    def submit(i: int) -> None:
        store = stores[i % 2]
        start.wait()
        try:
            store.create(client=f"c{i}", reservation=Reservation(result_bytes=each, room=lambda: room))
            outcome = "accepted"
        except PoseError as exc:
            outcome = exc.code
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["accepted"] * 3 + ["storage_full"] * 5
    assert stores[0].reserved_bytes() == 9000


def test_uploads_streaming_on_two_replicas_hold_their_room_until_their_job_takes_it_over(open_store, tmp_path):
    """An upload holds its bytes while it streams; another replica's upload that does not fit
    beside the hold is refused before it writes; a hold ends when its job is created (its bytes
    are on disk then) and lapses by itself when its Ingress died."""
    data = tmp_path / "data"
    one, other = open_store(data, max_active=4, max_queued=16), open_store(data, max_active=4, max_queued=16)
    room = 20_000
    one.hold_upload("upload-a", 6000, room, 30.0)
    err = _refused(lambda: other.hold_upload("upload-b", 15_000, room, 30.0))
    assert (err.code, err.details["reserved_bytes"], err.details["room_bytes"]) == ("storage_full", 6000, 14_000)
    other.hold_upload("upload-b", 10_000, room, 0.3)  # fits beside it; its Ingress dies now
    assert other.reserved_bytes() == 16_000
    one.hold_upload("upload-a", 6000, room, 30.0)  # taken again (renewed): not counted twice
    assert one.reserved_bytes() == 16_000
    # upload-a has landed (6,000 bytes of the room are its file now) and becomes a job with
    # 3,000 bytes of results: its admission sees upload-b's hold, not its own.
    landed = room - 6000
    job = one.create(client="alice", reservation=Reservation(result_bytes=3000, room=lambda: landed, upload_hold="upload-a"))
    assert one.reserved_bytes() == 3000 + 10_000  # the job's results, upload-b's hold
    err = _refused(lambda: other.create(reservation=Reservation(result_bytes=1001, room=lambda: landed)))
    assert (err.code, err.details["reserved_bytes"]) == ("storage_full", 13_000)
    time.sleep(0.4)  # upload-b's hold lapses
    assert other.reserved_bytes() == 3000
    other.hold_upload("upload-c", 11_000, landed, 30.0)
    one.end_upload_hold("upload-c")  # refused for another reason: its hold ends at once
    assert one.reserved_bytes() == 3000
    one.cancel(job.id)
    assert one.reserved_bytes() == 0


def test_a_running_job_reserves_what_it_has_still_to_write_and_an_ending_gives_the_rest_back(store):
    job = store.create(input_file=_upload(store, 1000), move_input=True,
                       options={"render": True}, reservation=Reservation(result_bytes=8000, overlay_bytes=2000))
    assert job.disk_bytes == 11_000 and store.reserved_bytes() == 10_000
    running = store.claim_next(30.0)
    assert running is not None
    store.update_progress(running.id, 25, 100, token=running.attempts)
    assert store.reserved_bytes() == 6000 + 2000  # three quarters of its results, and the overlay
    store.write_result(running.id, "result.json", b"r" * 700)
    done = store.finish(running.id, {"json": "result.json"}, running.attempts)
    assert store.reserved_bytes() == 2000  # the overlay, still to be drawn
    assert done.disk_bytes == _tree_bytes(store.job_dir(running.id)) + 2000
    claim = store.claim_overlay(running.id, 30.0)
    store.write_result(running.id, "overlay.mp4", b"v" * 300)
    drawn = store.overlay_ready(running.id, claim.token, "overlay.mp4")
    assert store.reserved_bytes() == 0
    assert drawn.disk_bytes == _tree_bytes(store.job_dir(running.id))

    failing = store.create(input_file=_upload(store, 1000), move_input=True, reservation=Reservation(result_bytes=8000))
    claimed = store.claim_next(30.0)
    assert claimed is not None and claimed.id == failing.id
    store.update_progress(claimed.id, 50, 100, token=claimed.attempts)
    failed = store.fail(claimed.id, "video_corrupt", "a frame cannot be decoded", claimed.attempts)
    assert failed.disk_bytes == 1000 + 4000  # its input and the half of its results it wrote
    assert store.reserved_bytes() == 0


# -- through the FastAPI application --------------------------------------------------------------


def _api(tmp_path: Path, **jobs: Any) -> tuple[Any, dict[str, dict[str, str]]]:
    """The real application (keys for alice, bob and an admin), its job settings ``jobs``."""
    from service.api.app import build_app
    from service.api.backend import NoMetrics
    from service.api.context import ApiContext
    from service.auth import key_line, new_key
    from service.settings import ApiSettings, JobSettings

    keys = {name: new_key() for name in ("alice", "bob", "ops")}
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("".join(key_line(c, k, admin=c == "ops") + "\n" for c, k in keys.items()))
    settings = JobSettings(data_dir=str(tmp_path / "data"), max_active=1, max_queued=8, **jobs)
    ctx = ApiContext(ApiSettings(profile="tiny", auth_keys_file=str(keys_file)), InProcessHost(), NoMetrics(), jobs=settings)
    return build_app(ctx), {c: {"authorization": f"Bearer {k}"} for c, k in keys.items()}


def _run(app: Any, scenario: Any) -> None:
    import httpx

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as api:
            await scenario(api)

    asyncio.run(main())


def _left_on_disk(data: Path) -> list[str]:
    return sorted(p.name for p in (data / "uploads").iterdir())


def test_the_api_answers_a_client_past_its_bytes_507_before_reading_and_another_client_submits(tmp_path):
    from videos import crossing_video

    frames = 6
    clip = crossing_video(tmp_path / "clip.mp4", n=frames).read_bytes()
    first_job = len(clip) + frames * (FRAME_BYTES + 4 * PERSON_BYTES)
    limit = first_job + len(clip) // 2  # room for one such job, not two
    app, auth = _api(tmp_path, max_bytes_per_client=limit, max_jobs_per_client=3)
    files = {"video": ("clip.mp4", clip, "video/mp4")}

    async def scenario(api: Any) -> None:
        first = await api.post("/v1/videos", files=files, headers=auth["alice"])
        assert first.status_code == 202, first.text
        assert first.json()["disk_bytes"] == first_job
        own = (await api.get("/v1/info", headers=auth["alice"])).json()["videos"]["client"]
        assert own == {"jobs": 1, "max_jobs": 3, "disk_bytes": first_job, "max_disk_bytes": limit}
        refused = await api.post("/v1/videos", files=files, headers=auth["alice"])
        assert refused.status_code == 507, refused.text
        error = refused.json()["error"]
        body = int(refused.request.headers["content-length"])  # refused on its declared length
        assert error["code"] == "client_storage_limit"
        assert {k: error["details"][k] for k in ("client", "client_bytes", "incoming_bytes", "max_bytes_per_client")} == {
            "client": "alice", "client_bytes": first_job, "incoming_bytes": body, "max_bytes_per_client": limit,
        }
        assert refused.headers["retry-after"] == str(error["details"]["retry_after"])
        assert _left_on_disk(tmp_path / "data") == []
        assert (await api.post("/v1/videos", files=files, headers=auth["bob"])).status_code == 202
        in_seconds = await api.post("/v1/videos?end_s=0.3", files=files, headers=auth["ops"])  # no exact count before decoding
        assert in_seconds.status_code == 202, in_seconds.text
        assert in_seconds.json()["disk_bytes"] == first_job  # reserved for the whole video
        assert (await api.post("/v1/videos", files=files, headers=auth["ops"])).status_code == 202  # admins: the disk only
        assert (await api.delete(f"/v1/jobs/{first.json()['id']}", headers=auth["alice"])).status_code == 204
        assert (await api.post("/v1/videos", files=files, headers=auth["alice"])).status_code == 202

    _run(app, scenario)


def test_the_api_reserves_each_jobs_results_so_a_second_upload_finds_no_room(tmp_path):
    """A disk budget with room for one job's expected results: the second upload lands, then is
    refused at admission (507 ``storage_full`` naming what is reserved) and deleted; a cancelled
    job gives its room back."""
    from videos import crossing_video

    frames, people = 6, 40
    clip = crossing_video(tmp_path / "clip.mp4", n=frames).read_bytes()
    results = frames * (FRAME_BYTES + people * PERSON_BYTES)
    app, auth = _api(tmp_path, max_disk_bytes=int(results * 1.6), reserve_people_per_frame=people)
    files = {"video": ("clip.mp4", clip, "video/mp4")}

    async def scenario(api: Any) -> None:
        first = await api.post("/v1/videos", files=files, headers=auth["alice"])
        assert first.status_code == 202, first.text
        refused = await api.post("/v1/videos", files=files, headers=auth["bob"])
        assert refused.status_code == 507, refused.text
        error = refused.json()["error"]
        assert error["code"] == "storage_full"
        assert (error["details"]["incoming_bytes"], error["details"]["reserved_bytes"]) == (results, results)
        assert _left_on_disk(tmp_path / "data") == []
        jobs = (await api.get("/v1/jobs", headers=auth["ops"])).json()
        assert [j["id"] for j in jobs["jobs"]] == [first.json()["id"]]
        assert (await api.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=auth["alice"])).status_code == 200
        assert (await api.post("/v1/videos", files=files, headers=auth["bob"])).status_code == 202

    _run(app, scenario)


def test_an_upload_streaming_in_holds_its_room_so_another_is_refused_before_it_writes(tmp_path):
    """Upload A announces 12 MiB and is still arriving: its room is held in the job store, so
    upload B (6 MiB) does not fit in a 16 MiB budget and is refused at once, naming the bytes
    held; once A has ended (here: refused, its body cut short), nothing is held any more."""
    budget, a_bytes, b_bytes = 16 * 2**20, 12 * 2**20, 6 * 2**20
    app, auth = _api(tmp_path, max_disk_bytes=budget)
    raw = {"content-type": "video/mp4"}

    async def scenario(api: Any) -> None:
        arrived, release = asyncio.Event(), asyncio.Event()

        async def slow_body() -> Any:
            yield b"\0" * 1024
            arrived.set()
            await release.wait()

        headers = {**raw, "content-length": str(a_bytes), **auth["alice"]}
        a = asyncio.create_task(api.post("/v1/videos", content=slow_body(), headers=headers))
        await asyncio.wait_for(arrived.wait(), 30)
        disk = (await api.get("/v1/info", headers=auth["ops"])).json()["videos"]["disk"]
        assert disk["reserved_bytes"] == a_bytes
        refused = await api.post("/v1/videos", content=b"\0" * b_bytes, headers={**raw, **auth["bob"]})
        assert refused.status_code == 507, refused.text
        error = refused.json()["error"]
        assert error["code"] == "storage_full"
        assert (error["details"]["reserved_bytes"], error["details"]["incoming_bytes"]) == (a_bytes, b_bytes)
        assert error["details"]["max_bytes"] == budget
        assert len(_left_on_disk(tmp_path / "data")) == 1  # A's file only: B wrote nothing
        release.set()
        answer = await a
        assert answer.status_code != 202  # 1 KiB of zeros is no video
        disk = (await api.get("/v1/info", headers=auth["ops"])).json()["videos"]["disk"]
        assert disk["reserved_bytes"] == 0
        assert _left_on_disk(tmp_path / "data") == []

    _run(app, scenario)


def test_an_upload_without_a_length_is_held_as_it_arrives_and_fits_up_to_the_room(tmp_path):
    """No Content-Length: the hold grows with what has arrived, so a body that fits the room is
    read whole (here refused afterwards as no video, 4xx) and one past it is refused with 507
    before it writes past the room."""
    budget = 4 * 2**20
    app, auth = _api(tmp_path, max_disk_bytes=budget)
    raw = {"content-type": "video/mp4", **auth["alice"]}

    def chunks(total: int) -> Any:
        async def body() -> Any:
            for _ in range(total // 2**16):
                yield b"\0" * 2**16
        return body()

    async def scenario(api: Any) -> None:
        fits = await api.post("/v1/videos", content=chunks(3 * 2**20), headers=raw)
        assert fits.status_code in (400, 415, 422) and fits.json()["error"]["code"].startswith("video_"), fits.text
        too_big = await api.post("/v1/videos", content=chunks(5 * 2**20), headers=raw)
        assert too_big.status_code == 507, too_big.text
        details = too_big.json()["error"]["details"]
        assert details["max_bytes"] == budget and details["incoming_bytes"] <= 5 * 2**20
        assert _left_on_disk(tmp_path / "data") == []
        disk = (await api.get("/v1/info", headers=auth["ops"])).json()["videos"]["disk"]
        assert disk["reserved_bytes"] == 0

    _run(app, scenario)


def test_the_job_store_bench_prints_a_row_per_call_backend_and_size(postgres_server):
    """`bench/job_store.py` as README shows it, at a small size: its table, one row per call."""
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "POSE_TEST_POSTGRES_URL": postgres_server}
    done = subprocess.run(
        [sys.executable, "bench/job_store.py", "--jobs", "0", "20", "--seconds", "0.05"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.split()[:1] in (["sqlite"], ["postgresql"])]
    calls = ["create", "create+reserve", "usage", "get", "heartbeat"]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (backend, jobs, call) for backend in ("sqlite", "postgresql") for jobs in ("0", "20") for call in calls
    ]
    assert all(float(r[3]) > 0 for r in rows) and all(r[4] == "1.00" for r in rows if r[2] == "create")
