"""serve_config.yaml is a valid Serve config for this application, and ``serve build`` accepts it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray.serve")

REPO = Path(__file__).resolve().parents[1]


def test_serve_config_validates_and_builds() -> None:
    from ray.serve.schema import ServeDeploySchema

    from deployments.app import AppArgs, build_app

    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    (app_cfg,) = schema.applications
    assert app_cfg.import_path == "deployments.app:build_app"
    args = AppArgs.model_validate(app_cfg.args)
    # GPU shares are arguments, never deployment options (see the file's header).
    for dep in config["applications"][0]["deployments"]:
        assert "num_gpus" not in dep.get("ray_actor_options", {}), dep["name"]
    from ray.serve._private.build_app import build_app as flatten  # what `serve build` uses

    from deployments.common import tracker_available

    built = flatten(build_app(args), name="pose")
    names = {d.name for d in built.deployments}
    configured = {d.name for d in app_cfg.deployments}
    if not tracker_available():  # video jobs need PHALP tracking; without it there is no Tracker
        configured -= {"Tracker"}
    assert configured <= names


def test_serve_build_accepts_the_application(tmp_path: Path) -> None:
    out = tmp_path / "generated.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "ray.serve.scripts", "build", "deployments.graph:app", "-o", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    if proc.returncode != 0 and "No module named ray.serve.scripts.__main__" in proc.stderr:
        pytest.skip("serve CLI not runnable as a module")
    assert proc.returncode == 0, proc.stderr[-2000:]
    generated = yaml.safe_load(out.read_text())
    deployments = {d["name"] for d in generated["applications"][0]["deployments"]}
    assert {"Ingress", "Detector", "MeshRegressor"} <= deployments


def test_weights_args_reach_the_replicas_and_a_changed_file_stops_the_build(tiny_roots, tmp_path: Path, monkeypatch) -> None:
    """Mirrors and the lock file from the application args end up in every replica's cache roots;
    a file in place that differs from its lock entry ends the deploy in the builder, with its code."""
    import shutil

    from deployments.app import AppArgs, check_model_files
    from pipeline.errors import WeightsError
    from pipeline.weights import DigestLock
    from service.settings import ModelSettings

    args = AppArgs(weights_dir=str(tmp_path / "w"), weights_mirrors=["https://models.internal/pose"])
    models = ModelSettings(profile="full", weights_dir=args.weights_dir, weights_mirrors=tuple(args.weights_mirrors))
    roots = models.roots()
    assert roots.mirrors == ("https://models.internal/pose",) and roots.lock == tmp_path / "w" / "weights.lock.json"
    elsewhere = ModelSettings(profile="full", weights_dir=args.weights_dir, weights_lock=str(tmp_path / "l.json"))
    assert elsewhere.roots().lock == tmp_path / "l.json"

    shutil.copytree(tiny_roots.phalp, roots.phalp)
    hmar = roots.phalp / "weights" / "hmar_v2_weights.pth"
    DigestLock(roots.lock).record("phalp/weights/hmar_v2_weights.pth", hmar, key="phalp.hmar_weights", source="test")
    monkeypatch.setenv("POSE_OFFLINE", "1")
    check_model_files(models, ["phalp"])  # as recorded: the deploy goes on
    hmar.write_bytes(hmar.read_bytes() + b"\0")
    with pytest.raises(WeightsError) as info:
        check_model_files(models, ["phalp"])
    assert info.value.code == "weights_lock_mismatch" and str(hmar) in info.value.message


def test_every_share_key_names_one_deployment() -> None:
    """Profiles and application arguments have the same keys, one per deployment of the graph."""
    from dataclasses import fields

    from configs.profiles import STAGE_DEPLOYMENTS, Fractions
    from deployments.app import FractionArgs, PlacementArgs

    keys = {"detector", "regressor", "tracker", "renderer", "ingress"}
    assert set(STAGE_DEPLOYMENTS) == keys
    assert sorted(STAGE_DEPLOYMENTS.values()) == ["Detector", "Ingress", "MeshRegressor", "Renderer", "Tracker"]
    assert {f.name for f in fields(Fractions)} == keys
    assert set(FractionArgs.model_fields) == set(PlacementArgs.model_fields) == keys


@pytest.mark.parametrize("field", ["gpu_fractions", "cpu_fractions", "placement"])
def test_the_renamed_video_key_is_refused_with_its_new_name(field: str) -> None:
    from pydantic import ValidationError

    from deployments.app import AppArgs

    value = {"pose_video": 1.0} if field == "placement" else 0.1
    with pytest.raises(ValidationError) as info:
        AppArgs.model_validate({field: {"video": value}})
    assert "`video` was renamed `tracker`" in str(info.value)


def test_an_unknown_share_key_is_refused_by_the_builder_with_its_name() -> None:
    from pydantic import ValidationError

    from deployments.app import build_app

    with pytest.raises(ValidationError) as info:
        build_app({"profile": "tiny", "gpu_fractions": {"decoder": 0.2}})  # type: ignore[arg-type]
    assert "gpu_fractions.decoder" in str(info.value)


def test_the_files_shares_reach_every_deployment_on_a_cluster_with_a_gpu(tmp_path: Path) -> None:
    """A Ray cluster with one (logical) GPU: the application built from serve_config.yaml's own
    args asks, per replica of each deployment, for the file's GPU and CPU shares, and one replica
    of each fits one GPU. Built only, never deployed: the replicas would start on CUDA."""
    import ray
    from ray.serve._private.build_app import build_app as flatten

    from configs.profiles import STAGE_DEPLOYMENTS
    from deployments.app import AppArgs, build_app

    file_args = yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]["args"]
    gpu, cpu = file_args["gpu_fractions"], file_args["cpu_fractions"]
    assert set(cpu) == set(STAGE_DEPLOYMENTS) and {"detector", "regressor", "tracker", "renderer"} <= set(gpu)
    args = AppArgs.model_validate(
        {**file_args, "profile": "tiny", "tiny_dir": str(tmp_path / "tiny"), "data_dir": str(tmp_path / "data"), "tracker": True}
    )
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False)
    try:
        def options_by_deployment(app_args: AppArgs) -> dict[str, dict]:
            built = flatten(build_app(app_args), name="pose")
            return {d.name: d.ray_actor_options for d in built.deployments}

        options = options_by_deployment(args)
        assert set(options) == set(STAGE_DEPLOYMENTS.values())
        for key, name in STAGE_DEPLOYMENTS.items():
            assert options[name]["num_cpus"] == cpu[key], name
            assert options[name].get("num_gpus", 0.0) == gpu.get(key, 0.0), name
        assert "num_gpus" not in options["Ingress"] or gpu.get("ingress")  # asked for only when given a share
        assert options["Tracker"]["num_gpus"] > 0  # PHALP's appearance network and tracker run in the video workers
        assert options["Renderer"]["num_gpus"] > 0  # the overlays' SMPL layer and rasterizer
        assert sum(o.get("num_gpus", 0.0) for o in options.values()) <= 1.0  # one replica of each on one GPU

        # an Ingress share above 0 is applied too
        with_ingress = args.model_copy(update={"gpu_fractions": args.gpu_fractions.model_copy(update={"ingress": 0.05})})
        assert options_by_deployment(with_ingress)["Ingress"]["num_gpus"] == 0.05
    finally:
        ray.shutdown()
