"""Bounded disk and time: the data folder's budget (`service.disk`) on real files and the real
file system, and limits that a client at the documented minimum speed can meet.

The served answers (507 ``storage_full`` with ``Retry-After``, nothing left on disk) are in
tests/test_serve_loopback.py, against the running application.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from pipeline.errors import PoseError
from service.disk import RETRY_AFTER_S, DiskBudget, folder_bytes


def _write(path: Path, nbytes: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(nbytes))
    return path


def test_usage_counts_every_file_under_the_folder_and_no_link(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _write(root / "uploads" / "a.upload", 1000)
    _write(root / "jobs" / "j1" / "input.mp4", 2500)
    _write(root / "jobs" / "j1" / "segments" / "00000.jsonl", 300)
    outside = _write(tmp_path / "elsewhere.bin", 10_000)
    os.symlink(outside, root / "jobs" / "j1" / "link.bin")
    assert folder_bytes(root) == 3800
    assert folder_bytes(tmp_path / "missing") == 0


def test_the_budget_refuses_what_does_not_fit_and_says_how_much_room_is_left(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _write(root / "jobs" / "j1" / "result.json", 6000)
    budget = DiskBudget(root, max_bytes=10_000, min_free_bytes=0, cache_s=0.0)
    assert budget.room() == 4000
    budget.check(4000)  # fits exactly
    with pytest.raises(PoseError) as refused:
        budget.check(4001)
    err = refused.value
    assert (err.code, err.status) == ("storage_full", 507)
    assert err.details == {
        "retry_after": RETRY_AFTER_S, "incoming_bytes": 4001, "room_bytes": 4000, "min_free_bytes": 0, "max_bytes": 10_000,
    }
    _write(root / "jobs" / "j2" / "input.mp4", 4000)  # now full: even a request that brings no bytes is refused
    with pytest.raises(PoseError, match="room for 0 more bytes"):
        budget.check(0)
    shutil.rmtree(root / "jobs" / "j1")  # retention deletes a job: room comes back
    assert budget.room() == 6000


def test_the_free_space_floor_holds_without_a_budget(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    roomy = DiskBudget(tmp_path, max_bytes=None, min_free_bytes=0)
    assert roomy.room() == pytest.approx(free, rel=0.01)
    tight = DiskBudget(tmp_path, max_bytes=None, min_free_bytes=free + 2**30)  # the floor is above what is free
    assert tight.room() == 0
    with pytest.raises(PoseError) as refused:
        tight.check(1)
    assert refused.value.code == "storage_full" and "max_bytes" not in refused.value.details


def test_the_walk_is_cached_for_its_period(tmp_path: Path) -> None:
    budget = DiskBudget(tmp_path, max_bytes=1000, cache_s=3600.0)
    assert budget.used_bytes() == 0
    _write(tmp_path / "jobs" / "j1" / "input.mp4", 700)  # written after the walk: seen at the next one
    assert budget.room() == 1000
    report = budget.report()
    assert report["used_bytes"] == 0 and report["max_bytes"] == 1000 and report["room_bytes"] == 1000
    assert budget.bounds() == {"min_free_bytes": 0, "max_bytes": 1000}


def _args(max_bytes: int, mbit_s: float):
    from deployments.app import AppArgs

    return AppArgs.model_validate({"video_limits": {"max_bytes": max_bytes}, "jobs": {"min_upload_mbit_s": mbit_s}})


def test_limits_a_slow_client_cannot_meet_are_refused_at_deploy() -> None:
    pytest.importorskip("ray.serve")
    from deployments.app import check_upload_time

    gib2 = 2 * 1024**3
    check_upload_time(_args(gib2, 10.0), None)  # no proxy timeout: nothing to meet
    check_upload_time(_args(gib2, 10.0), 1800.0)  # 1718 s at 10 Mbit/s
    with pytest.raises(PoseError) as refused:
        check_upload_time(_args(gib2, 10.0), 300.0)  # the old default: only clients above 57 Mbit/s made it
    err = refused.value
    assert err.code == "upload_timeout_too_short" and err.status == 500
    assert "takes 1718 s" in err.message and "request_timeout_s to 1718 or more" in err.message
    assert "max_bytes to 375000000 or less" in err.message


@pytest.mark.parametrize("manifest", ["serve_config.yaml", "deploy/kuberay/rayservice.yaml"])
def test_the_shipped_configs_meet_their_own_upload_speed(manifest: str) -> None:
    pytest.importorskip("ray.serve")
    from deployments.app import AppArgs, check_upload_time

    doc = yaml.safe_load((REPO / manifest).read_text())
    config = yaml.safe_load(doc["spec"]["serveConfigV2"]) if "spec" in doc else doc
    timeout = config["http_options"]["request_timeout_s"]
    apps = [a for a in config["applications"] if a["import_path"] == "deployments.app:build_app"]
    assert apps, f"{manifest} deploys no pose application"
    for app in apps:
        args = AppArgs.model_validate(app["args"])
        check_upload_time(args, timeout)
        assert args.video_limits.max_bytes * 8 / (args.jobs.min_upload_mbit_s * 1e6) <= timeout
