"""A screenshot of the Ray dashboard's Serve page during a video job: docs/img/ray-dashboard-serve.png.

serve_config.yaml is deployed as written on a fresh ``ray start`` head that runs Ray's dashboard
(tests/config_deploy.py: ``serve deploy`` of the file through the dashboard, only its HTTP port
changed, the tiny profile through the head's environment). Video jobs are submitted, more than
one video worker runs at once (``jobs.max_active``), so the queue makes the Tracker scale up;
once it has, and while the jobs run, headless Chromium (Debian's ``chromium``, driven by
Playwright; ``$POSE_CHROMIUM`` names another) opens the application's page of the dashboard's
Serve tab and captures it once every deployment of the file is listed there with its replicas.

    python scripts/dashboard_screenshot.py [--out docs/img/ray-dashboard-serve.png] [--jobs 3] [--frames 900]

The deployments waited for are read from serve_config.yaml, so a deployment added there is
waited for (and shown) without a change here.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

logger = logging.getLogger("dashboard_screenshot")


def queue_scaled(deployments: dict[str, dict[str, Any]]) -> list[str]:
    """The deployments of the file that scale on the job queue (the video workers)."""
    policy = lambda d: d.get("autoscaling_config", {}).get("policy", {}).get("policy_function", "")  # noqa: E731
    return [name for name, d in deployments.items() if policy(d).endswith(":video_queue_policy")]


def wait_scaled_up(names: list[str], deployments: dict[str, dict[str, Any]], timeout: float) -> bool:
    """Until each of ``names`` runs more replicas than its ``min_replicas``; False at the timeout."""
    from config_deploy import replica_counts

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = replica_counts()
        if all(counts[n].get("RUNNING", 0) > deployments[n]["autoscaling_config"]["min_replicas"] for n in names):
            return True
        time.sleep(1.0)
    return False


def wait_job_running(client: Any, job_id: str, min_frames: int, timeout: float = 300.0) -> dict[str, Any]:
    """Until the job runs and has tracked ``min_frames`` (the Tracker and both model stages busy)."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            raise RuntimeError(f"the job ended before the screenshot: {job}")
        if job["state"] == "running" and job["progress"]["frames_done"] >= min_frames:
            return job
        time.sleep(1.0)
    raise RuntimeError(f"job {job_id} not running within {timeout} s: {job}")


def capture(dashboard_url: str, names: list[str], out: Path, *, width: int, height: int) -> None:
    """The application's page of the Serve tab, once each deployment name is shown."""
    from browser_helpers import CHROMIUM_ARGS, chromium_path
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if exe is None:
        raise SystemExit("no Chromium found (set POSE_CHROMIUM, or apt-get install chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(f"{dashboard_url}/#/serve/applications/pose", wait_until="networkidle", timeout=120_000)
            for name in names:
                page.get_by_text(name, exact=True).first.wait_for(timeout=120_000)
            page.wait_for_timeout(3_000)  # the page refreshes its tables every few seconds: one more round
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "ray-dashboard-serve.png")
    parser.add_argument("--jobs", type=int, default=3, help="video jobs submitted at once (more than jobs.max_active: the queue scales the Tracker)")
    parser.add_argument("--frames", type=int, default=900, help="frames of each video job (they must outlast the capture)")
    parser.add_argument("--scale-timeout-s", type=float, default=180.0, help="wait this long for the Tracker to scale up, then capture anyway")
    parser.add_argument("--size", default="360x480", help="frame height x width")
    parser.add_argument("--after-frames", type=int, default=64, help="capture once the job has tracked this many frames")
    parser.add_argument("--num-cpus", type=float, default=2, help="CPUs of the Ray head")
    parser.add_argument("--viewport", default="1600x1000", help="browser window width x height")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)

    import httpx
    from config_deploy import deployed_file, file_deployments, replica_counts
    from videos import walking_video

    h, w = (int(v) for v in args.size.split("x"))
    vw, vh = (int(v) for v in args.viewport.split("x"))
    work = Path(tempfile.mkdtemp(prefix="dashboard-shot-"))
    clip = walking_video(work / "walk.mp4", args.frames, (h, w))
    deployments = file_deployments()
    with deployed_file(work / "run", num_cpus=args.num_cpus, via="deploy") as served:
        assert served.dashboard_url is not None
        logger.info("dashboard at %s, service at %s", served.dashboard_url, served.url)
        with httpx.Client(base_url=served.url, timeout=300) as client:
            ids = []
            for _ in range(args.jobs):
                resp = client.post("/v1/videos", files={"video": ("walk.mp4", clip.read_bytes(), "video/mp4")})
                resp.raise_for_status()
                ids.append(resp.json()["id"])
            job = wait_job_running(client, ids[0], args.after_frames)
            if not wait_scaled_up(queue_scaled(deployments), deployments, args.scale_timeout_s):
                logger.warning("the queue-scaled deployments did not scale up within %.0f s", args.scale_timeout_s)
            logger.info("job %s running, %d frames done; replicas: %s", job["id"], job["progress"]["frames_done"], replica_counts())
            capture(served.dashboard_url, list(deployments), args.out, width=vw, height=vh)
            states = [client.get(f"/v1/jobs/{i}").json()["state"] for i in ids]
            logger.info("captured %s (jobs %s; replicas: %s)", args.out, states, replica_counts())


if __name__ == "__main__":
    main()
