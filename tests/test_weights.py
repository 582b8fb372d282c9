"""Finding, downloading (mirrors, resume), verifying and safely unpacking model files."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from pipeline.errors import WeightsError
from pipeline.weights import CacheRoots, Download, WeightFile, ensure, fetch, safe_extract


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    log: list[tuple[str, str | None]] = []
    cut_first: set[str] = set()  # paths whose first full response is cut short

    def do_GET(self):  # noqa: N802
        self.log.append((self.path, self.headers.get("Range")))
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        if self.path in self.cut_first and not rng:
            self.cut_first.discard(self.path)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 3])
            self.wfile.flush()
            self.connection.close()
            return
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture()
def server():
    _RangeHandler.files = {}
    _RangeHandler.log = []
    _RangeHandler.cut_first = set()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _RangeHandler
    httpd.shutdown()
    httpd.server_close()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_mirror_fallback_and_extraction(server, tmp_path):
    base, handler = server
    archive = _tar({"data/a.bin": b"a" * 1000, "logs/b.txt": b"hello"})
    handler.files["/mirror/data.tar.gz"] = archive
    dl = Download(
        name="data.tar.gz",
        root="hmr2",
        target="data.tar.gz",
        urls=(f"{base}/dead/data.tar.gz", f"{base}/mirror/data.tar.gz"),
        sha256=hashlib.sha256(archive).hexdigest(),
        extract=True,
    )
    files = [
        WeightFile(key="a", root="hmr2", path="data/a.bin", description="a", download=dl, min_bytes=1000),
        WeightFile(key="b", root="hmr2", path="logs/b.txt", description="b", download=dl),
    ]
    roots = CacheRoots.under(tmp_path)
    paths = ensure(files, roots, progress=False)
    assert paths["a"].read_bytes() == b"a" * 1000 and paths["b"].read_bytes() == b"hello"
    assert [p for p, _ in handler.log] == ["/dead/data.tar.gz", "/mirror/data.tar.gz"]  # one download for both files


def test_interrupted_download_resumes(server, tmp_path):
    base, handler = server
    body = bytes(range(256)) * 4000
    handler.files["/w.bin"] = body
    handler.cut_first.add("/w.bin")
    dl = Download(name="w.bin", root="phalp", target="weights/w.bin", urls=(f"{base}/w.bin",), size=len(body))
    roots = CacheRoots.under(tmp_path)
    with pytest.raises(WeightsError):
        fetch(dl, roots, progress=False)
    part = roots.phalp / "weights" / "w.bin.part"
    assert 0 < part.stat().st_size < len(body)
    fetch(dl, roots, progress=False)
    assert (roots.phalp / "weights" / "w.bin").read_bytes() == body
    assert handler.log[-1][1] == f"bytes={len(body) // 3}-"


def test_checksum_mismatch_is_refused(server, tmp_path):
    base, handler = server
    handler.files["/x"] = b"tampered"
    dl = Download(name="x", root="hmr2", target="x", urls=(f"{base}/x",), sha256="0" * 64)
    with pytest.raises(WeightsError) as info:
        fetch(dl, CacheRoots.under(tmp_path), progress=False)
    assert info.value.code == "download_failed" and "sha256" in info.value.message
    assert not (tmp_path / "4DHumans" / "x").exists()


@pytest.mark.parametrize(
    "name, kind",
    [("../escape.txt", "file"), ("/abs/escape.txt", "file"), ("ok/../../escape.txt", "file"), ("link", "symlink")],
)
def test_archive_cannot_write_outside_its_folder(tmp_path, name, kind):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        if kind == "symlink":
            info.type = tarfile.SYMTYPE
            info.linkname = "../../etc/passwd"
            tar.addfile(info)
        else:
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    archive = tmp_path / "a.tar"
    archive.write_bytes(buf.getvalue())
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(WeightsError) as info:
        safe_extract(archive, dest)
    assert info.value.code == "archive_unsafe"
    assert not (tmp_path / "escape.txt").exists() and not any(dest.iterdir())


def test_offline_error_names_every_missing_file(tmp_path):
    dl = Download(name="pack", root="hmr2", target="pack.tar", urls=("http://127.0.0.1:9/pack.tar",), extract=True)
    files = [
        WeightFile(key="one", root="hmr2", path="data/one", description="first", download=dl),
        WeightFile(key="two", root="phalp", path="weights/two", description="second", how_to_get="ask the authors"),
    ]
    roots = CacheRoots.under(tmp_path)
    with pytest.raises(WeightsError) as info:
        ensure(files, roots, download=False)
    msg = info.value.message
    assert "one" in msg and "two" in msg and str(roots.hmr2 / "data/one") in msg and "ask the authors" in msg
    assert info.value.details["missing"] == ["one", "two"]


def test_roots_from_environment(tmp_path):
    env = {"HOME": str(tmp_path), "POSE_PHALP_CACHE": str(tmp_path / "p")}
    roots = CacheRoots.from_env(env)
    assert roots.hmr2 == tmp_path / ".cache" / "4DHumans"
    assert roots.phalp == tmp_path / "p"
    assert roots.detectron2 == tmp_path / ".torch" / "iopath_cache"
    assert CacheRoots.from_env({"HOME": str(tmp_path), "FVCORE_CACHE": "/x"}).detectron2 == Path("/x")


def test_weights_command_reports_present_and_missing(tiny_roots, tmp_path):
    cmd = [sys.executable, "-m", "pipeline", "weights", "--cache-dir", str(tiny_roots.hmr2.parent), "--models", "hmr2", "--verify"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report_ = json.loads(done.stdout)
    assert report_["missing"] == [] and report_["verified"] is True
    empty = subprocess.run(cmd[:5] + [str(tmp_path)] + cmd[6:], capture_output=True, text=True, timeout=300)
    keys = json.loads(empty.stdout)["missing"]
    assert "hmr2.checkpoint" in keys and "smpl.neutral" in keys


def test_two_processes_download_a_file_once(tmp_path):
    """Replicas starting together on one node: the second waits for the first's download
    (an inter-process lock beside the file), then finds it in place instead of fetching again."""
    import multiprocessing
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    payload = os.urandom(200_000)
    hits: list[str] = []

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            for i in range(0, len(payload), 20_000):
                self.wfile.write(payload[i : i + 20_000])
                time.sleep(0.05)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/model.bin"
        dl = Download(name="model.bin", urls=(url,), root="phalp", target="weights/model.bin", size=len(payload))
        roots = CacheRoots.under(tmp_path)
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=fetch, args=(dl, roots), kwargs={"progress": False}) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0]
        assert (tmp_path / "phalp" / "weights" / "model.bin").read_bytes() == payload
        assert hits == ["/model.bin"]
    finally:
        server.shutdown()
        server.server_close()
