"""serve_config.yaml deployed as written: ``serve run`` of the file on a ``ray start`` head.

The copy deployed changes only the HTTP port; the tiny profile, the data folder and the tiny
models reach the builder and the replicas through the head's environment (tests/config_deploy.py).
Then the controller must show every deployment of the file's ``deployments:`` block running with
the file's options (autoscaling, the video workers' queue policy, request limits, batch
settings), and a video job and an image must succeed through the proxy. One deployment serves
every test of this module.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from config_deploy import DeployedFile, deployed_file, file_config, file_deployments  # noqa: E402
from serve_helpers import encode, stick_figures, wait_job  # noqa: E402
from videos import crossing_video  # noqa: E402

# What `serve_config.yaml`'s deployment entries may set, compared one by one with what the
# controller reports for the running deployment.
OPTIONS = ("max_ongoing_requests", "max_queued_requests", "user_config")
AUTOSCALING = ("min_replicas", "max_replicas", "target_ongoing_requests", "upscale_delay_s", "downscale_delay_s",
               "look_back_period_s", "aggregation_function")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeployedFile]:
    with deployed_file(tmp_path_factory.mktemp("config-file")) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def details(served: DeployedFile) -> dict[str, Any]:
    """The controller's view of each deployment of the application (what `serve status -v` and
    the dashboard's Serve page show): status, options in force, replicas."""
    from ray.serve.context import _get_global_client  # the controller's details have no public call

    return _get_global_client().get_serve_details()["applications"]["pose"]["deployments"]


def test_the_deployed_copy_is_the_file_but_for_its_http_port(served: DeployedFile) -> None:
    original, deployed = file_config(), copy.deepcopy(served.config)
    assert deployed["http_options"].pop("port") != original["http_options"].pop("port")
    assert deployed == original
    assert "profile" not in deployed["applications"][0]["args"]  # tiny through the environment, not the file


def test_every_deployment_of_the_file_runs_with_the_files_options(served: DeployedFile, details: dict[str, Any]) -> None:
    from ray import serve
    from ray.serve._private.constants import DEFAULT_AUTOSCALING_POLICY_NAME

    wanted = file_deployments()
    assert set(wanted) <= set(details), f"deployments of the file not running: {set(wanted) - set(details)}"
    status = serve.status().applications["pose"]
    assert status.status == "RUNNING"
    for name, entry in wanted.items():
        running = details[name]
        config = running["deployment_config"]
        assert status.deployments[name].status == "HEALTHY", (name, status.deployments[name])
        for option in OPTIONS:
            if option in entry:
                assert config[option] == entry[option], (name, option)
        if "autoscaling_config" not in entry:
            continue
        want, got = entry["autoscaling_config"], config["autoscaling_config"]
        for key in AUTOSCALING:
            if key in want:
                assert got[key] == want[key], (name, key, got[key])
        n = status.deployments[name].replica_states.get("RUNNING", 0)
        assert want["min_replicas"] <= n <= want["max_replicas"], (name, n)
        if "policy" in want:
            assert got["policy"]["policy_function"] == want["policy"]["policy_function"], name
        else:  # Serve's own policy on ongoing requests
            assert got["policy"]["policy_function"] == DEFAULT_AUTOSCALING_POLICY_NAME, name


def test_the_tracker_scales_on_the_job_queue(details: dict[str, Any]) -> None:
    """The one deployment the file gives a policy of ours: the video workers on the job queue."""
    policy = details["Tracker"]["deployment_config"]["autoscaling_config"]["policy"]["policy_function"]
    assert policy == "deployments.autoscaling:video_queue_policy"


def test_an_image_and_a_video_job_succeed_through_it(served: DeployedFile, tmp_path: Path) -> None:
    with httpx.Client(base_url=served.url, timeout=120) as client:
        resp = client.post("/v1/images", files={"image": ("people.png", encode(stick_figures()), "image/png")})
        assert resp.status_code == 200, resp.text
        assert resp.json()["people"], "the tiny detector finds the drawn figures"

        clip = crossing_video(tmp_path / "crossing.mp4", n=12)
        resp = client.post("/v1/videos", files={"video": ("crossing.mp4", clip.read_bytes(), "video/mp4")})
        assert resp.status_code == 202, resp.text
        job = wait_job(client, resp.json()["id"], timeout=300)
        assert job["state"] == "succeeded", job
        result = client.get(f"/v1/jobs/{job['id']}/result").json()
        assert len(result["frames"]) == 12
        assert {p["track_id"] for f in result["frames"] for p in f["people"]}  # tracked people
    assert any(served.data_dir.rglob(f"*{job['id']}*"))  # the job lives in the data folder the head was given
