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

    from deployments.video import tracker_available

    built = flatten(build_app(args), name="pose")
    names = {d.name for d in built.deployments}
    configured = {d.name for d in app_cfg.deployments}
    if not tracker_available():  # video jobs need PHALP tracking; without it there is no VideoPipeline
        configured -= {"VideoPipeline"}
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
