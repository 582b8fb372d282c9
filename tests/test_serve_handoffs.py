"""Running video jobs handed between video workers, through the real Ray Serve application (tiny
profile, local Ray with 2 CPUs, the default SQLite job store): issue 25's two claims about jobs
that outlive the worker holding them.

* Three graceful redeploys of the video workers during one job, then a ``kill -9`` of the worker
  that holds it: the job ends ``succeeded`` with the result of an uninterrupted run. A redeploy
  stops the old worker through its destructor, which hands its jobs back to the queue
  (`JobStore.release`): a new attempt, not a crash. Only the kill is a crash (its lease runs
  out). So the job takes 1 + 3 + 1 = 5 attempts with ``jobs.max_attempts`` at 3 and one crash:
  were hand-offs counted, it would have failed ``interrupted`` at the third.
* DELETE of a job running on one of two workers: GET answers 404 and its folder is gone within
  one chunk's time (measured from the job's own progress), while the job on the other worker
  goes on untouched. The Ingress never calls the worker holding the job: the delete is written to
  the store (`JobStore.request_delete`) and the holder stops at its next chunk.

The application is deployed from a config, as ``serve deploy serve_config.yaml`` does, so the
workers can be redeployed alone: the same config with one option of the ``Tracker`` deployment
changed (its replicas' environment) makes Serve replace the Tracker's replicas, one at a time,
while the model deployments keep theirs; the replica count is that deployment's
``num_replicas``, as in the file. Serve stops a replica gracefully only once it is RUNNING: one
still STARTING is killed at once. A Tracker therefore claims jobs only after Serve's first
health check (made on RUNNING replicas only; `service.worker.VideoWorker`), and each redeploy
here comes once the new worker holds the job and has made progress.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from serve_helpers import assert_same_result, free_port, wait_job  # noqa: E402
from videos import figure_frame, write_video  # noqa: E402

APP = "pose"
CHUNK = 2  # frames per chunk: many checkpoints, so every attempt makes progress of its own
# Frames of the clips. Each redeploy lets the job run on for a second or two before the old
# worker hands it back (some 10 frames on 2 cores), so the redeployed job has 80: it is still
# running at the kill. The delete needs a few chunks of two running jobs.
FRAMES = {"redeployed": 80, "deleted": 48}
LEASE_S = 5.0  # a killed worker's job is taken over within seconds
MAX_ATTEMPTS = 3  # the default, set here so the test proves hand-offs are not counted
POLL_S = 0.05


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two figures walking past each other, as many frames as ``FRAMES`` says."""
    base = tmp_path_factory.mktemp("clips")
    return {
        name: write_video(base / f"{name}.mp4", [figure_frame([120 + 400 * i // n, 520 - 400 * i // n]) for i in range(n)])
        for name, n in FRAMES.items()
    }


@dataclass
class Deployed:
    """The application deployed from a config; `redeploy_workers` and `scale_workers` deploy
    it again with the Tracker's options changed, as an operator edits and redeploys the file."""

    url: str
    data_dir: Path
    args: dict[str, Any]
    rollout: int = 0  # bumped for every redeploy of the workers
    workers: int = 1

    def config(self) -> dict[str, Any]:
        from configs.profiles import tiny

        tracker = {
            "name": "Tracker",
            "num_replicas": self.workers,
            # the code's own options (`deployments.app`), with one variable that names the rollout
            "ray_actor_options": {
                "num_cpus": tiny().cpu_fractions.tracker,
                "runtime_env": {"env_vars": {"MALLOC_ARENA_MAX": "2", "POSE_TEST_ROLLOUT": str(self.rollout)}},
            },
        }
        return {"applications": [{"name": APP, "route_prefix": "/", "import_path": "deployments.app:build_app",
                                  "args": self.args, "deployments": [tracker]}]}

    def apply(self) -> None:
        from ray.serve.context import _get_global_client  # `serve deploy` goes through the dashboard's REST API
        from ray.serve.schema import ServeDeploySchema

        _get_global_client().deploy_apps(ServeDeploySchema.model_validate(self.config()))

    def redeploy_workers(self) -> None:
        """The workers' new version: Serve replaces every Tracker replica, gracefully."""
        self.rollout += 1
        self.apply()

    def scale_workers(self, workers: int, timeout: float = 300.0) -> None:
        if workers != self.workers:
            self.workers = workers
            self.apply()
        wait_until(lambda: tracker_replicas() == {"RUNNING": workers}, timeout, f"{workers} RUNNING Tracker replicas")


def tracker_replicas() -> dict[str, int]:
    """``serve.status()``: the Tracker's replicas by state (while the application is RUNNING)."""
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None:
        return {}
    assert app.status != "DEPLOY_FAILED", app.message
    tracker = app.deployments.get("Tracker")
    return dict(tracker.replica_states) if tracker is not None and app.status == "RUNNING" else {}


def wait_until(ready: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (answer := ready()):
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(POLL_S)
    return answer


@contextmanager
def serve_from_config(tiny_dir: Path, data_dir: Path, jobs: dict[str, Any]) -> Iterator[Deployed]:
    """Local Ray (2 CPUs) and Serve with the application deployed from a config; shut down after."""
    import ray
    from ray import serve

    port = free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deployed = Deployed(f"http://127.0.0.1:{port}", data_dir,
                            {"profile": "tiny", "tiny_dir": str(tiny_dir), "data_dir": str(data_dir), "jobs": jobs})
        deployed.apply()
        deployed.scale_workers(1)
        yield deployed
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def deployed(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    # one job per worker, so two running jobs are on two workers
    jobs = {"max_active": 1, "chunk_size": CHUNK, "lease_s": LEASE_S, "max_attempts": MAX_ATTEMPTS}
    with serve_from_config(tiny_dir, tmp_path_factory.mktemp("data"), jobs) as app:
        yield app


@pytest.fixture(scope="module")
def client(deployed: Deployed) -> Iterator[httpx.Client]:
    """No keys configured, on loopback: every caller is the admin."""
    with httpx.Client(base_url=deployed.url, timeout=120.0) as c:
        wait_until(lambda: _answers(c), 120.0, "answer from the HTTP proxy")
        yield c


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/v1/info").status_code == 200
    except httpx.HTTPError:
        return False


def submit(client: httpx.Client, clip: Path) -> str:
    resp = client.post("/v1/videos", files={"video": (clip.name, clip.read_bytes(), "video/mp4")})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def get_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    resp = client.get(f"/v1/jobs/{job_id}")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def worker_info(client: httpx.Client) -> dict[str, Any]:
    """``/v1/info`` of the Tracker replica that answered (any RUNNING one)."""
    return dict(client.get("/v1/info").json()["deployments"]["tracker"])


# -- three graceful redeploys, then a kill -9 -----------------------------------------------------


def _attempt_under_way(client: httpx.Client, job_id: str, attempt: int) -> dict[str, Any]:
    """Wait until ``attempt`` runs the job on the one RUNNING worker and has committed a chunk
    of its own; that worker's /v1/info (its pid)."""

    def claimed() -> dict[str, Any] | None:
        job = get_job(client, job_id)
        assert job["state"] in ("queued", "running"), job
        assert job["attempts"] <= attempt and job["crashes"] == 0, job  # a hand-off is never a crash
        return job if job["attempts"] == attempt and job["state"] == "running" else None

    start = wait_until(claimed, 120.0, f"attempt {attempt} of job {job_id}")["progress"]["frames_done"]
    wait_until(lambda: tracker_replicas() == {"RUNNING": 1}, 120.0, "one RUNNING Tracker replica")
    worker = worker_info(client)
    assert worker["active_jobs"] == [job_id], worker  # the one worker holds it
    job = wait_until(lambda: (j := claimed()) and j["progress"]["frames_done"] >= start + CHUNK and j,
                     120.0, f"chunk of attempt {attempt}")
    assert job["progress"]["frames_done"] < job["progress"]["frames_total"], f"the clip is too short to outlive the faults: {job}"
    return worker


def test_three_graceful_redeploys_then_a_kill_end_succeeded_with_one_crash(deployed, client, clips):
    clip = clips["redeployed"]
    deployed.scale_workers(1)
    reference_job = wait_job(client, submit(client, clip), timeout=300)
    assert reference_job["state"] == "succeeded" and reference_job["attempts"] == 1, reference_job
    reference = client.get(reference_job["links"]["result"]).json()

    job_id = submit(client, clip)
    pids = []
    for attempt in (1, 2, 3):
        pids.append(_attempt_under_way(client, job_id, attempt)["pid"])
        deployed.redeploy_workers()
    pids.append(_attempt_under_way(client, job_id, 4)["pid"])
    assert len(set(pids)) == 4, f"every redeploy replaces the worker: {pids}"
    os.kill(pids[-1], signal.SIGKILL)

    job = wait_job(client, job_id, timeout=300)
    assert job["state"] == "succeeded", job
    # first claim + one per redeploy + one after the kill; only the kill counts against max_attempts
    assert (job["attempts"], job["crashes"]) == (5, 1), job
    resumed = job["progress"]["resumed_from_frame"]
    assert 0 < resumed < FRAMES["redeployed"] and resumed % CHUNK == 0, job["progress"]
    assert_same_result(client.get(job["links"]["result"]).json(), reference)
    assert worker_info(client)["pid"] not in pids


# -- DELETE of a job running on one of two workers -------------------------------------------------


def _holders(client: httpx.Client, job_ids: set[str], timeout: float = 60.0) -> dict[str, tuple[str, int]]:
    """Each running job's worker (replica id, pid), from /v1/info answered by each replica in turn."""
    holders: dict[str, tuple[str, int]] = {}

    def seen_all() -> bool:
        worker = worker_info(client)
        for job_id in worker["active_jobs"]:
            holders[job_id] = (worker["replica"], worker["pid"])
        return job_ids <= set(holders)

    wait_until(seen_all, timeout, f"worker holding each of {sorted(job_ids)}")
    return holders


def _chunk_time(client: httpx.Client, job_id: str, chunks: int = 6) -> float:
    """The longest time between two of the job's next ``chunks`` committed chunks (its progress
    moves once per chunk)."""
    changes: list[float] = []
    last = get_job(client, job_id)["progress"]["frames_done"]
    deadline = time.monotonic() + 120.0
    while len(changes) < chunks + 1:
        assert time.monotonic() < deadline, "the job stopped making progress"
        job = get_job(client, job_id)
        assert job["state"] == "running" and job["progress"]["frames_done"] < FRAMES["deleted"], f"the clip is too short: {job}"
        if job["progress"]["frames_done"] != last:
            changes.append(time.monotonic())
            last = job["progress"]["frames_done"]
        time.sleep(POLL_S)
    return max(b - a for a, b in zip(changes, changes[1:]))


def test_delete_of_a_job_running_on_one_of_two_workers(deployed, client, clips):
    clip = clips["deleted"]
    deployed.scale_workers(2)
    assert tracker_replicas() == {"RUNNING": 2}
    doomed, other = submit(client, clip), submit(client, clip)
    wait_until(lambda: all(get_job(client, j)["progress"]["frames_done"] > 0 for j in (doomed, other)),
               120.0, "progress of both jobs")
    holders = _holders(client, {doomed, other})
    assert holders[doomed] != holders[other], holders  # one job per worker: two workers busy

    chunk_s = _chunk_time(client, doomed)  # returns as a chunk has just been committed
    # The holder sees the delete when its chunk in flight commits: within one chunk. Then the
    # job's row and folder go, and the Ingress (polling the store every 0.2 s) answers; this
    # test polls every POLL_S. Half a chunk more covers a chunk slower than those measured.
    bound_s = 1.5 * chunk_s + 0.2 + POLL_S
    folder = deployed.data_dir / "jobs" / doomed
    frames = [get_job(client, doomed)["progress"]["frames_done"]]
    assert folder.is_dir() and frames[0] < FRAMES["deleted"]
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=deployed.url, timeout=120.0) as other_client:
        started = time.monotonic()
        deleting = pool.submit(other_client.delete, f"/v1/jobs/{doomed}")  # answers once deleted, or 202 after 10 s
        while (resp := client.get(f"/v1/jobs/{doomed}")).status_code == 200:
            assert resp.json()["state"] in ("running", "deleting") and time.monotonic() - started < 60.0, resp.text
            frames.append(resp.json()["progress"]["frames_done"])
            time.sleep(POLL_S)
        wait_until(lambda: not folder.exists(), 60.0, f"removal of {folder}")  # the row goes first, then the folder
        elapsed = time.monotonic() - started
        resp = deleting.result()
    assert resp.status_code in (202, 204), resp.text
    assert resp.status_code == 204 or resp.json()["state"] == "deleting", resp.text
    assert max(frames) <= frames[0] + CHUNK, f"more than one chunk committed after the DELETE: {frames}"
    assert elapsed <= bound_s, f"deleted after {elapsed:.2f} s; one chunk takes {chunk_s:.2f} s (bound {bound_s:.2f} s)"
    body = client.get(f"/v1/jobs/{doomed}").json()
    assert body["error"]["code"] == "job_not_found", body

    job = wait_job(client, other, timeout=300)  # the other worker's job never noticed
    assert (job["state"], job["attempts"], job["crashes"]) == ("succeeded", 1, 0), job
