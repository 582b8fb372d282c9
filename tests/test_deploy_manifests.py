"""The KubeRay manifests in deploy/kuberay: the RayService itself matches the RayService CRD's
schema (tests/kuberay_schema.py), its embedded Serve config is a valid Ray Serve config (Ray's
own schema), its application arguments are valid `AppArgs`, it names only deployments the
application has, and every pod gets the job store URL from the Secret and the shared volume
where the arguments put data and models."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
import yaml
from kuberay_schema import QUANTITY_PATTERN, RAYSERVICE_SCHEMA

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
    pytest.importorskip("ray.serve")
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
    video = next(d for d in app.deployments if d.name == "Tracker")
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


def _rayservices() -> list[dict]:
    documents = yaml.safe_load_all((DEPLOY / "rayservice.yaml").read_text())
    return [d for d in documents if d and d.get("kind") == "RayService"]


def _errors(document: dict) -> list[tuple[str, str]]:
    validator = jsonschema.Draft202012Validator(RAYSERVICE_SCHEMA)
    return sorted((e.json_path, e.message) for e in validator.iter_errors(document))


def test_the_kuberay_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(RAYSERVICE_SCHEMA)


def test_every_rayservice_matches_the_crd_schema():
    rayservices = _rayservices()
    assert rayservices, "expected a RayService document in deploy/kuberay/rayservice.yaml"
    for document in rayservices:
        assert _errors(document) == [], document["metadata"]["name"]


def _rename(key: str, new: str) -> Callable[[dict], None]:
    def mutate(node: dict) -> None:
        node[new] = node.pop(key)

    return mutate


def _set(key: str, value: object) -> Callable[[dict], None]:
    def mutate(node: dict) -> None:
        node[key] = value

    return mutate


def _delete(key: str) -> Callable[[dict], None]:
    def mutate(node: dict) -> None:
        del node[key]

    return mutate


def _spec(rs: dict) -> dict:
    return rs["spec"]


def _cluster(rs: dict) -> dict:
    return rs["spec"]["rayClusterConfig"]


def _head(rs: dict) -> dict:
    return _cluster(rs)["headGroupSpec"]


def _worker(rs: dict) -> dict:
    return _cluster(rs)["workerGroupSpecs"][0]


def _worker_container(rs: dict) -> dict:
    return _worker(rs)["template"]["spec"]["containers"][0]


CLUSTER = "$.spec.rayClusterConfig"
WORKER = f"{CLUSTER}.workerGroupSpecs[0]"
CONTAINER = f"{WORKER}.template.spec.containers[0]"


def _unexpected(key: str) -> str:
    return f"Additional properties are not allowed ({key!r} was unexpected)"


# (where, mutation, the one error expected: JSON path and jsonschema's message)
MISTAKES = {
    "misspelled spec field": (
        _spec, _rename("serveConfigV2", "serveConfig"),
        ("$.spec", _unexpected("serveConfig")),
    ),
    "workerGroupSpec for workerGroupSpecs": (
        _cluster, _rename("workerGroupSpecs", "workerGroupSpec"),
        (CLUSTER, _unexpected("workerGroupSpec")),
    ),
    "rayStartParam for rayStartParams": (
        _head, _rename("rayStartParams", "rayStartParam"),
        (f"{CLUSTER}.headGroupSpec", _unexpected("rayStartParam")),
    ),
    "a rayStartParams value that is not a string": (
        lambda rs: _worker(rs)["rayStartParams"], _set("num-cpus", 0),
        (f"{WORKER}.rayStartParams['num-cpus']", "0 is not of type 'string'"),
    ),
    "a worker group without groupName": (
        _worker, _delete("groupName"),
        (WORKER, "'groupName' is a required property"),
    ),
    "a worker group without template": (
        _worker, _delete("template"),
        (WORKER, "'template' is a required property"),
    ),
    "maxReplicas as a string": (
        _worker, _set("maxReplicas", "4"),
        (f"{WORKER}.maxReplicas", "'4' is not of type 'integer'"),
    ),
    "enableInTreeAutoscaling as a string": (
        _cluster, _set("enableInTreeAutoscaling", "true"),
        (f"{CLUSTER}.enableInTreeAutoscaling", "'true' is not of type 'boolean'"),
    ),
    "a memory quantity in GB": (
        lambda rs: _worker_container(rs)["resources"]["limits"], _set("memory", "48GB"),
        (f"{CONTAINER}.resources.limits.memory", f"'48GB' does not match {QUANTITY_PATTERN!r}"),
    ),
    "volumeMount for volumeMounts": (
        _worker_container, _rename("volumeMounts", "volumeMount"),
        (CONTAINER, _unexpected("volumeMount")),
    ),
    "a secretKeyRef without key": (
        lambda rs: _worker_container(rs)["env"][0]["valueFrom"]["secretKeyRef"], _delete("key"),
        (f"{CONTAINER}.env[0].valueFrom.secretKeyRef", "'key' is a required property"),
    ),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_the_schema_rejects_a_typical_mistake(mistake):
    where, mutate, expected = MISTAKES[mistake]
    (original, *_) = _rayservices()
    document = copy.deepcopy(original)
    mutate(where(document))
    assert _errors(document) == [expected]
