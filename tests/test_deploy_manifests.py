"""The KubeRay manifests in deploy/kuberay: the RayService's embedded Serve config is a valid
Ray Serve config (Ray's own schema), its application arguments are valid `AppArgs`, it names
only deployments the application has, and every pod gets the job store URL from the Secret and
the shared volume where the arguments put data and models."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray.serve")

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kuberay"


@pytest.fixture(scope="module")
def rayservice() -> dict:
    return yaml.safe_load((DEPLOY / "rayservice.yaml").read_text())


def _pods(rayservice: dict) -> list[dict]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    assert len(groups) >= 2, "expected a head group and at least one worker group"
    return [g["template"]["spec"] for g in groups]


def test_serve_config_is_valid_for_ray_serve_and_our_application(rayservice):
    from ray.serve._private.build_app import build_app as flatten
    from ray.serve.schema import ServeDeploySchema

    from deployments.app import AppArgs, build_app

    assert rayservice["apiVersion"] == "ray.io/v1" and rayservice["kind"] == "RayService"
    config = ServeDeploySchema.model_validate(yaml.safe_load(rayservice["spec"]["serveConfigV2"]))
    (app,) = config.applications
    assert app.import_path == "deployments.app:build_app"
    args = AppArgs.model_validate(app.args)
    assert args.device == "cuda", "GPU shares must be requested so the autoscaler starts GPU pods"
    assert args.jobs.job_store is None and args.jobs.job_store_env == "POSE_JOB_STORE_URL"
    built = {d.name for d in flatten(build_app(args.model_copy(update={"device": "cpu"})), name="pose").deployments}
    assert {d.name for d in app.deployments} <= built
    video = next(d for d in app.deployments if d.name == "VideoPipeline")
    assert video.autoscaling_config["policy"]["policy_function"] == "deployments.autoscaling:video_queue_policy"


def test_every_pod_has_the_job_store_secret_and_the_shared_volume(rayservice):
    args = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]["args"]
    claim = yaml.safe_load((DEPLOY / "shared-storage.yaml").read_text())
    assert claim["kind"] == "PersistentVolumeClaim" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for pod in _pods(rayservice):
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["POSE_JOB_STORE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "url"
        # the proxy listens on the pod network: every pod that may run the Ingress has the key
        assert env[args.get("auth_token_env", "POSE_SERVICE_TOKEN")]["valueFrom"]["secretKeyRef"]["key"] == "token"
        (mount,) = [m for m in container["volumeMounts"] if volumes[m["name"]].get("persistentVolumeClaim")]
        assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        for key in ("data_dir", "weights_dir"):
            assert Path(args[key]).is_relative_to(mount["mountPath"]), f"{key} must be on the shared volume"


def test_the_ingress_is_pinned_to_the_head_group(rayservice):
    args = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]["args"]
    cluster = rayservice["spec"]["rayClusterConfig"]
    head = yaml.safe_load(cluster["headGroupSpec"]["rayStartParams"]["resources"].strip('"').replace('\\"', '"'))
    assert set(args["placement"]["ingress"]) <= set(head)
