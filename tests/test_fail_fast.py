"""A missing model file stops a start at once, with one message naming every file.

* ``bash scripts/serve.sh`` (the full profile) checks the files before Ray starts
  (`deployments.preflight`, the builder's own `deployments.app.check_model_files`);
* ``python -m pipeline image`` / ``video`` check every file they need before loading a model;
* ``python -m pipeline weights`` prints a table (``--json``: its report) and exits 1 while a file
  is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from pipeline.weights import CacheRoots, DigestLock, catalog

# Every variable that moves a model cache or the lock file (pipeline/weights/cache.py), and
# those that would change what the start checks.
# the models the service loads (the catalog also lists the optional RegNetY detector)
SERVED = ("hmr2", "vitdet", "phalp")
CACHE_VARS = ("POSE_4DHUMANS_CACHE", "POSE_PHALP_CACHE", "POSE_DETECTRON2_CACHE", "FVCORE_CACHE", "POSE_WEIGHTS_LOCK")
DROPPED = (
    "POSE_WEIGHTS_MIRRORS", "POSE_SERVICE_PROFILE", "POSE_TINY_DIR", "RAY_ADDRESS",
    "POSE_SERVICE_KEYS", "POSE_SERVICE_KEYS_FILE", "POSE_SERVICE_TOKEN",
)
STAMP = REPO / ".venv" / ".pose-service-installed"


def empty_env(tmp_path: Path, *, offline: bool = True) -> dict[str, str]:
    """The environment of a newcomer's machine: an empty home, every cache in an empty folder."""
    home = tmp_path / "home"
    caches = tmp_path / "caches"
    home.mkdir(exist_ok=True)
    caches.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in DROPPED}
    env.update({"HOME": str(home), "PYTHONUNBUFFERED": "1"})
    for name in CACHE_VARS:
        env[name] = str(caches / name.lower())
    env["POSE_WEIGHTS_LOCK"] = str(caches / "weights.lock.json")
    if offline:
        env["POSE_OFFLINE"] = "1"
    else:
        env.pop("POSE_OFFLINE", None)
    return env


def _run_serve_sh(env: dict[str, str], timeout: float) -> tuple[int, str, float]:
    """``bash scripts/serve.sh``: exit status, output, seconds. Past ``timeout`` (a start that went
    on to ``serve run``) its whole process group is stopped."""
    start = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "scripts/serve.sh"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        pytest.fail(f"scripts/serve.sh still running after {timeout} s:\n{out[-3000:]}")
    return proc.returncode, out, time.monotonic() - start


def test_serve_sh_without_model_files_stops_before_ray_naming_every_file(tmp_path: Path) -> None:
    env = empty_env(tmp_path)
    # Ray keeps its sessions under $RAY_TMPDIR/ray: one started by this call would appear there.
    ray_tmp = tmp_path / "raytmp"
    ray_tmp.mkdir()
    env["RAY_TMPDIR"] = str(ray_tmp)
    want = hashlib.sha256(b"".join((REPO / name).read_bytes() for name in ("pyproject.toml", "constraints.txt"))).hexdigest()
    if not STAMP.is_file() or STAMP.read_text().strip() != want:
        # the first call installs the project into .venv (and writes the stamp); the timed one follows
        code, out, _ = _run_serve_sh(env, timeout=900)
        assert code == 2, out[-3000:]
        assert STAMP.read_text().strip() == want
    code, out, seconds = _run_serve_sh(env, timeout=120)
    assert code == 2, out[-3000:]
    assert seconds < 15, f"scripts/serve.sh took {seconds:.1f} s to refuse"
    assert not list(ray_tmp.rglob("session_*")), "a Ray session was started"
    assert "Started a local Ray instance" not in out
    roots = CacheRoots.from_env(env)
    files = catalog(SERVED)
    assert files, "the catalog lists the model files"
    for file in files:
        assert file.key in out, f"{file.key} is not named:\n{out}"
        assert str(file.candidates(roots)[0]) in out, f"where {file.key} was looked for is not said"
        if file.how_to_get:
            assert file.how_to_get in out
        if file.download is not None:
            assert file.download.urls[0] in out  # where to get it
    assert "smpl.is.tue.mpg.de" in out  # the licensed model, and how to obtain it
    assert out.count("ERROR deployments.preflight") == 1  # one message
    assert not any(Path(env[name]).exists() for name in CACHE_VARS[:4])  # nothing was fetched or created


def test_preflight_leaves_public_files_to_the_replicas_but_not_smpl(tmp_path: Path, monkeypatch, caplog) -> None:
    """Online, a missing public file is downloaded by the replicas (as on every first start), so
    alone it stops nothing; the licensed SMPL model stops the start, and the one message also
    names the public files still to come. The tiny profile needs no file."""
    pytest.importorskip("ray.serve")
    import logging

    from deployments.preflight import main

    config = tmp_path / "serve_config.yaml"
    config.write_text((REPO / "serve_config.yaml").read_text())
    for name, value in empty_env(tmp_path, offline=False).items():
        monkeypatch.setenv(name, value)
    for name in (*DROPPED, "POSE_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level(logging.ERROR, logger="deployments.preflight"):
        assert main([str(config)]) == 2
    (record,) = [r for r in caplog.records if r.name == "deployments.preflight"]
    message = record.getMessage()
    assert "[weights_missing] 1 model file(s) missing" in message and "smpl.neutral" in message
    for file in catalog(SERVED):
        assert file.key in message
    monkeypatch.setenv("POSE_SERVICE_PROFILE", "tiny")
    assert main([str(config)]) == 0
    assert not (Path(os.environ["HOME"]) / ".cache" / "pose-service" / "tiny").exists()  # nothing written for it


def test_preflight_refuses_files_that_fail_their_checks(tmp_path: Path, tiny_roots: CacheRoots, monkeypatch, caplog) -> None:
    """A ``weights_dir`` holding every file: the start goes on; a file that differs from its lock
    entry and a removed SMPL model are both named, in one message."""
    pytest.importorskip("ray.serve")
    import logging

    import yaml

    from deployments.preflight import main

    weights = tmp_path / "w"
    shutil.copytree(tiny_roots.hmr2.parent, weights)
    (weights / "weights.lock.json").unlink(missing_ok=True)
    roots = CacheRoots.under(weights)
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["applications"][0]["args"]["weights_dir"] = str(weights)
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    for name, value in empty_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    for name in DROPPED:
        monkeypatch.delenv(name, raising=False)
    assert main([str(path)]) == 0
    hmar = roots.phalp / "weights" / "hmar_v2_weights.pth"
    DigestLock(roots.lock).record("phalp/weights/hmar_v2_weights.pth", hmar, key="phalp.hmar_weights", source="test")
    hmar.write_bytes(hmar.read_bytes() + b"\0")
    (roots.hmr2 / "data" / "smpl" / "SMPL_NEUTRAL.pkl").unlink()
    with caplog.at_level(logging.ERROR, logger="deployments.preflight"):
        assert main([str(path)]) == 2
    (record,) = [r for r in caplog.records if r.name == "deployments.preflight"]
    message = record.getMessage()
    assert "smpl.neutral" in message and "phalp.hmar_weights" in message and str(hmar) in message


def _png(tmp_path: Path) -> Path:
    import cv2
    import numpy as np

    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.full((64, 48, 3), 128, np.uint8))
    return photo


def test_cli_image_names_every_missing_file_at_once(tmp_path: Path) -> None:
    photo = _png(tmp_path)
    env = empty_env(tmp_path)
    done = subprocess.run([sys.executable, "-m", "pipeline", "image", str(photo)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    error = json.loads(done.stdout)["error"]
    wanted = [f.key for f in catalog(["hmr2", "vitdet"])]
    assert error["code"] == "weights_missing" and sorted(error["details"]["missing"]) == sorted(wanted)
    for key in wanted:
        assert key in error["message"]
    # own boxes: the detector's file is not needed
    boxed = subprocess.run([sys.executable, "-m", "pipeline", "image", str(photo), "--boxes", "1,1,40,60"], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=300)
    assert boxed.returncode == 2
    assert sorted(json.loads(boxed.stdout)["error"]["details"]["missing"]) == sorted(f.key for f in catalog(["hmr2"]))
    # online: the licensed model stops it before any download starts, the public files named too
    online = subprocess.run([sys.executable, "-m", "pipeline", "image", str(photo)], cwd=REPO,
                            env=empty_env(tmp_path, offline=False), capture_output=True, text=True, timeout=300)
    assert online.returncode == 2, online.stderr[-2000:]
    error = json.loads(online.stdout)["error"]
    assert error["details"]["missing"] == ["smpl.neutral"]
    assert sorted(error["details"]["downloadable"]) == sorted(k for k in wanted if k != "smpl.neutral")
    assert not any(Path(env[name]).exists() for name in CACHE_VARS[:4])


def test_cli_video_names_every_missing_file_at_once(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not read: the files are checked first")
    done = subprocess.run([sys.executable, "-m", "pipeline", "video", str(clip)], cwd=REPO, env=empty_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    error = json.loads(done.stdout)["error"]
    assert error["code"] == "weights_missing"
    assert sorted(error["details"]["missing"]) == sorted(f.key for f in catalog(["vitdet", "hmr2", "phalp"]))


def test_weights_command_table_json_and_exit_status(tmp_path: Path, tiny_roots: CacheRoots) -> None:
    from pipeline.cli import DEFAULT_MODELS

    env = empty_env(tmp_path)
    keys = [f.key for f in catalog(DEFAULT_MODELS)]  # without --models: the default graph's files

    def weights(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pipeline", "weights", *argv], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)

    table = weights()
    assert table.returncode == 1, table.stderr[-2000:]
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["FILE", "STATUS", "SIZE", "WHERE"]
    rows = {line.split()[0]: line for line in lines[1:len(keys) + 1]}
    assert sorted(rows) == sorted(keys)
    assert all(" missing" in row for row in rows.values())
    assert "missing (licensed)" in rows["smpl.neutral"] and "smpl.is.tue.mpg.de" in table.stdout
    report = weights("--json")
    assert report.returncode == 1
    doc = json.loads(report.stdout)
    assert sorted(doc["missing"]) == sorted(keys) and doc["ok"] is False

    # `python -m pipeline tiny DIR` writes a whole set, the SMPL model included
    full = str(tiny_roots.hmr2.parent)
    table = weights("--cache-dir", full)
    assert table.returncode == 0, table.stdout + table.stderr[-2000:]
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[1:len(keys) + 1]}
    assert sorted(rows) == sorted(keys) and all(row[1] == "present" for row in rows.values())
    assert f"{len(keys)} of {len(keys)} present" in table.stdout
    report = weights("--cache-dir", full, "--json")
    assert report.returncode == 0 and json.loads(report.stdout)["missing"] == []
    part = weights("--cache-dir", str(tmp_path / "none"), "--models", "vitdet", "--json")
    assert part.returncode == 1 and json.loads(part.stdout)["missing"] == ["vitdet.checkpoint"]
    fast = weights("--cache-dir", str(tmp_path / "none"), "--models", "regnety", "--json")
    assert fast.returncode == 1 and json.loads(fast.stdout)["missing"] == ["regnety.checkpoint"]
