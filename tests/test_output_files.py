"""Files the project writes get the mode a plain ``open`` gives (0666 less the umask), not the
0600 of a temporary file: a result shared with a group or served by a web server stays readable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pipeline.atomic import atomic_open, atomic_path, atomic_write


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_files_follow_the_umask(tmp_path: Path, umask, mask: int, mode: int) -> None:
    umask(mask)
    written = atomic_write(tmp_path / "result.json", b"{}")
    with atomic_open(tmp_path / "segment.jsonl") as f:
        f.write(b"{}\n")
    with atomic_path(tmp_path / "overlay.mp4") as tmp:
        tmp.write_bytes(b"\0")
    for path in (written, tmp_path / "segment.jsonl", tmp_path / "overlay.mp4"):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.mp4", "result.json", "segment.jsonl"]


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with atomic_open(tmp_path / "result.json") as f:
            f.write(b"half")
            raise RuntimeError("the writer failed")
    assert list(tmp_path.iterdir()) == []
