"""Finding, downloading (mirrors, resume), verifying and safely unpacking model files."""

from __future__ import annotations

import dataclasses
import filecmp
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
import zipfile
from pathlib import Path

import pytest

from pipeline.errors import WeightsError
from pipeline.weights import (
    MIRRORS_ENV,
    CacheRoots,
    DigestLock,
    Download,
    FileStatus,
    WeightFile,
    catalog,
    check_file,
    ensure,
    fetch,
    import_weights,
    safe_extract,
)


@pytest.fixture(autouse=True)
def _no_mirrors_from_the_shell(monkeypatch):
    monkeypatch.delenv(MIRRORS_ENV, raising=False)


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    log: list[tuple[str, str | None]] = []
    cut_first: set[str] = set()  # paths whose first full response is cut short
    cut_always: set[str] = set()  # paths whose every response is cut short (ranges included)
    chunked_cut: set[str] = set()  # paths answered in chunks, the connection closed inside one
    status: dict[str, int] = {}  # paths answered with this error status

    def do_GET(self):  # noqa: N802
        self.log.append((self.path, self.headers.get("Range")))
        if self.path in self.status:
            self.send_error(self.status[self.path])
            return
        body = self.files.get(self.path)
        if body is not None and self.path in self.chunked_cut:
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n" % len(body) + body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
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
        if self.path in self.cut_always or (self.path in self.cut_first and not rng):
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
    _RangeHandler.cut_always = set()
    _RangeHandler.chunked_cut = set()
    _RangeHandler.status = {}
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
    assert roots.lock == tmp_path / ".cache" / "pose-service" / "weights.lock.json"
    assert CacheRoots.from_env({"HOME": str(tmp_path), "POSE_WEIGHTS_LOCK": "/srv/w.json"}).lock == Path("/srv/w.json")
    assert CacheRoots.under(tmp_path).lock == tmp_path / "weights.lock.json"


def test_weights_command_reports_present_and_missing(tiny_roots, tmp_path):
    cmd = [sys.executable, "-m", "pipeline", "weights", "--cache-dir", str(tiny_roots.hmr2.parent), "--models", "hmr2", "--verify", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report_ = json.loads(done.stdout)
    assert report_["missing"] == [] and report_["verified"] is True and report_["ok"] is True
    empty = subprocess.run(cmd[:5] + [str(tmp_path)] + cmd[6:], capture_output=True, text=True, timeout=300)
    assert empty.returncode == 1, empty.stderr
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


def _one_file(url: str, *, key: str = "w", path: str = "weights/w.bin") -> tuple[Download, list[WeightFile]]:
    dl = Download(name=Path(path).name, root="phalp", target=path, urls=(url,))
    return dl, [WeightFile(key=key, root="phalp", path=path, description=key, download=dl)]


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cut_download_is_never_renamed_into_place(server, tmp_path):
    """No size or checksum known (as for every real file before its first download): the
    announced Content-Length alone refuses a body cut short, fresh or resumed."""
    base, handler = server
    body = os.urandom(300_000)
    handler.files["/w.bin"] = body
    handler.cut_always.add("/w.bin")
    dl, _ = _one_file(f"{base}/w.bin")
    roots = CacheRoots.under(tmp_path)
    for _ in range(2):
        with pytest.raises(WeightsError) as info:
            fetch(dl, roots, progress=False)
        assert info.value.code == "download_failed" and "cut short" in info.value.message
    assert not (roots.phalp / "weights" / "w.bin").exists()
    assert handler.log[1] == ("/w.bin", f"bytes={len(body) // 3}-")  # the second try resumed
    assert not roots.lock.exists()  # nothing recorded for a file never obtained


def test_chunked_download_cut_inside_a_chunk_is_a_failed_address(server, tmp_path):
    """Without a Content-Length the chunk framing tells the cut: an address failure like any other."""
    base, handler = server
    handler.files["/w.bin"] = os.urandom(10_000)
    handler.chunked_cut.add("/w.bin")
    dl, _ = _one_file(f"{base}/w.bin")
    with pytest.raises(WeightsError) as info:
        fetch(dl, CacheRoots.under(tmp_path), progress=False)
    assert info.value.code == "download_failed"
    assert info.value.details["tried"][0]["answer"].startswith("cut short")
    assert not (tmp_path / "phalp" / "weights" / "w.bin").exists()


def test_refused_address_then_a_mirror_serves_it(server, tmp_path, monkeypatch):
    """Mirrors in the cache layout, configured ones before $POSE_WEIGHTS_MIRRORS, both before the
    published address; a mirror without the file falls through to the published one."""
    base, handler = server
    w, v = os.urandom(5000), os.urandom(7000)
    handler.status["/refusing/phalp/weights/w.bin"] = 403
    handler.files["/good/phalp/weights/w.bin"] = w
    handler.files["/official/v.bin"] = v
    roots = dataclasses.replace(CacheRoots.under(tmp_path / "c"), mirrors=(f"{base}/refusing/",))
    monkeypatch.setenv(MIRRORS_ENV, f" {base}/good , ")
    _, w_files = _one_file(f"{base}/official/w.bin")
    _, v_files = _one_file(f"{base}/official/v.bin", key="v", path="weights/v.bin")
    paths = ensure(w_files + v_files, roots, progress=False)
    assert paths["w"].read_bytes() == w and paths["v"].read_bytes() == v
    assert [p for p, _ in handler.log] == [
        "/refusing/phalp/weights/w.bin",
        "/good/phalp/weights/w.bin",
        "/refusing/phalp/weights/v.bin",
        "/good/phalp/weights/v.bin",
        "/official/v.bin",
    ]


def test_every_address_refusing_names_the_file_the_addresses_and_the_ways_out(server, tmp_path, monkeypatch):
    base, handler = server
    handler.status["/official/w.bin"] = 403
    dead = f"http://127.0.0.1:{_closed_port()}/m"
    monkeypatch.setenv(MIRRORS_ENV, dead)
    roots = dataclasses.replace(CacheRoots.under(tmp_path), mirrors=(f"{base}/gone",))
    _, files = _one_file(f"{base}/official/w.bin")
    with pytest.raises(WeightsError) as info:
        ensure(files, roots, progress=False)
    err = info.value
    assert err.code == "weights_missing" and err.details["missing"] == ["w"]
    tried = err.details["downloads"]["w.bin"]
    assert [t["url"] for t in tried] == [f"{base}/gone/phalp/weights/w.bin", f"{dead}/phalp/weights/w.bin", f"{base}/official/w.bin"]
    assert tried[0]["answer"].startswith("HTTP 404")
    assert tried[1]["answer"] == "connection refused"
    assert tried[2]["answer"].startswith("HTTP 403")
    for t in tried:
        assert f"{t['url']}: {t['answer']}" in err.message
    assert MIRRORS_ENV in err.message and "weights import PATH" in err.message
    assert str(roots.phalp / "weights" / "w.bin") in err.message
    assert not (roots.phalp / "weights" / "w.bin").exists()


def test_first_download_is_recorded_then_a_changed_file_refused(server, tmp_path):
    base, handler = server
    body = os.urandom(4096)
    handler.files["/w.bin"] = body
    _, files = _one_file(f"{base}/w.bin")
    roots = CacheRoots.under(tmp_path)
    ensure(files, roots, progress=False)
    entry = json.loads((tmp_path / "weights.lock.json").read_text())["files"]["phalp/weights/w.bin"]
    assert (entry["size"], entry["sha256"], entry["source"]) == (4096, hashlib.sha256(body).hexdigest(), f"{base}/w.bin")
    ensure(files, roots, progress=False)  # a restart with the file as recorded

    path = roots.phalp / "weights" / "w.bin"
    before = path.stat()
    changed = bytearray(body)
    changed[100] ^= 0xFF
    path.write_bytes(bytes(changed))  # same size, new mtime: the start check reads it again
    with pytest.raises(WeightsError) as info:
        ensure(files, roots, progress=False)
    err = info.value
    assert err.code == "weights_lock_mismatch" and err.status == 503
    assert str(path) in err.message and str(roots.lock) in err.message and "weights --forget w" in err.message
    assert err.details["entry"] == "phalp/weights/w.bin"

    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # the old mtime put back: a full check still reads it
    status = FileStatus(file=files[0], found=path, looked_in=(path,))
    with pytest.raises(WeightsError) as info:
        check_file(status, roots, deep=True)
    assert info.value.code == "weights_lock_mismatch"

    path.write_bytes(body[:-1])
    with pytest.raises(WeightsError) as info:
        ensure(files, roots, progress=False)
    assert info.value.code == "weights_lock_mismatch" and "4095 bytes" in info.value.message

    assert DigestLock(roots.lock).forget(["w"]) == ["phalp/weights/w.bin"]
    ensure(files, roots, progress=False)  # replaced on purpose and forgotten: accepted


def test_a_later_download_must_bring_the_recorded_bytes(server, tmp_path, monkeypatch):
    """Once recorded, a file fetched again (cache wiped) from any address must be the same bytes."""
    base, handler = server
    body = os.urandom(4096)
    handler.files["/w.bin"] = body
    _, files = _one_file(f"{base}/w.bin")
    roots = CacheRoots.under(tmp_path)
    ensure(files, roots, progress=False)
    (roots.phalp / "weights" / "w.bin").unlink()
    handler.files["/w.bin"] = os.urandom(4096)
    handler.files["/m/phalp/weights/w.bin"] = os.urandom(4096)
    monkeypatch.setenv(MIRRORS_ENV, f"{base}/m")
    with pytest.raises(WeightsError) as info:
        ensure(files, roots, progress=False)
    answers = [t["answer"] for t in info.value.details["downloads"]["w.bin"]]
    assert len(answers) == 2 and all(hashlib.sha256(body).hexdigest() in a for a in answers)
    assert not (roots.phalp / "weights" / "w.bin").exists()
    handler.files["/m/phalp/weights/w.bin"] = body
    assert ensure(files, roots, progress=False)["w"].read_bytes() == body


def _official_path(roots: CacheRoots, key: str) -> Path:
    file = next(f for f in catalog() if f.key == key)
    return roots.root(file.root) / file.path


def test_import_from_a_cache_folder(tiny_roots, tmp_path):
    """A --cache-dir folder of real-layout files (the tiny writers'): every file linked into place,
    checked, recorded; a second import finds them present."""
    roots = CacheRoots.under(tmp_path / "cache")
    files = catalog()
    report_ = import_weights(tiny_roots.hmr2.parent, roots, files)
    assert report_["ok"] is True and report_["rejected"] == [] and report_["missing"] == []
    assert sorted(i["key"] for i in report_["imported"]) == sorted(f.key for f in files)
    lock = json.loads(roots.lock.read_text())["files"]
    for item in report_["imported"]:
        dest = _official_path(roots, item["key"])
        assert item["to"] == str(dest) and filecmp.cmp(item["from"], dest, shallow=False)
        assert item["how"] == "hardlink" and os.stat(item["from"]).st_ino == dest.stat().st_ino  # same filesystem
        entry = next(e for e in lock.values() if e["key"] == item["key"])
        assert entry["sha256"] == hashlib.sha256(dest.read_bytes()).hexdigest()
    assert len(report_["imported"]) > 0
    again = import_weights(tiny_roots.hmr2.parent, roots, files)
    assert again["imported"] == [] and sorted(p["key"] for p in again["present"]) == sorted(f.key for f in files)
    assert again["ok"] is True


def test_import_command_from_an_archive_checks_each_file(tiny_roots, tmp_path):
    """4D-Humans' hmr2_data.tar.gz layout at the top, a PHALP cache under a home-folder prefix and a
    truncated ViTDet pickle: the good files are imported, the bad one rejected with its reason,
    and the command exits 1."""
    archive = tmp_path / "old_machine.tar.gz"
    smpl = _official_path(tiny_roots, "smpl.neutral")
    vitdet = _official_path(tiny_roots, "vitdet.checkpoint")
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(tiny_roots.hmr2.rglob("*")):
            if path.is_file() and path != smpl:
                tar.add(path, arcname=path.relative_to(tiny_roots.hmr2).as_posix())
        tar.add(tiny_roots.phalp, arcname=".cache/phalp")
        cut = vitdet.read_bytes()[:-100]
        info = tarfile.TarInfo("iopath_cache/" + vitdet.relative_to(tiny_roots.detectron2).as_posix())
        info.size = len(cut)
        tar.addfile(info, io.BytesIO(cut))
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "pipeline", "weights", "import", str(archive), "--cache-dir", str(cache), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    report_ = json.loads(done.stdout)
    assert report_["missing"] == ["smpl.neutral"] and report_["ok"] is False
    assert [r["key"] for r in report_["rejected"]] == ["vitdet.checkpoint"]
    assert "pickle" in report_["rejected"][0]["reason"] and ".import-" not in report_["rejected"][0]["reason"]
    roots = CacheRoots.under(cache)
    from pipeline.cli import DEFAULT_MODELS  # without --models: the default graph's files

    expected = [f.key for f in catalog(DEFAULT_MODELS) if f.key not in ("smpl.neutral", "vitdet.checkpoint")]
    assert sorted(i["key"] for i in report_["imported"]) == sorted(expected)
    for key in expected:
        assert filecmp.cmp(_official_path(tiny_roots, key), _official_path(roots, key), shallow=False)
    assert not _official_path(roots, "vitdet.checkpoint").exists()
    assert [p.name for p in cache.rglob(".import-*")] == []


def _phalp_archive(tmp_path: Path, tiny_roots: CacheRoots, bad_name: str, kind: str) -> Path:
    good = tiny_roots.phalp / "3D" / "mean_std.npy"
    evil = (tiny_roots.phalp / "weights" / "hmar_v2_weights.pth").read_bytes()
    if kind == "zip":
        archive = tmp_path / "a.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.write(good, "phalp/3D/mean_std.npy")
            zf.writestr(zipfile.ZipInfo(bad_name), evil)
        return archive
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(good, arcname="phalp/3D/mean_std.npy")
        info = tarfile.TarInfo(bad_name)
        if kind == "symlink":
            info.type = tarfile.SYMTYPE
            info.linkname = "../../../etc/passwd"
            tar.addfile(info)
        else:
            info.size = len(evil)
            tar.addfile(info, io.BytesIO(evil))
    return archive


@pytest.mark.parametrize(
    "bad_name, kind",
    [
        ("../weights/hmar_v2_weights.pth", "tar"),
        ("phalp/../../weights/hmar_v2_weights.pth", "tar"),
        ("/abs/phalp/weights/hmar_v2_weights.pth", "tar"),
        ("phalp/weights/hmar_v2_weights.pth", "symlink"),
        ("../weights/hmar_v2_weights.pth", "zip"),
    ],
)
def test_import_refuses_an_archive_member_leaving_its_folder(tiny_roots, tmp_path, bad_name, kind):
    archive = _phalp_archive(tmp_path, tiny_roots, bad_name, kind)
    roots = CacheRoots.under(tmp_path / "cache")
    with pytest.raises(WeightsError) as info:
        import_weights(archive, roots, catalog(["phalp"]))
    assert info.value.code == "archive_unsafe" and repr(bad_name) in info.value.message
    assert not (tmp_path / "cache").exists() or not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_import_from_a_zip_and_from_a_folder_without_model_files(tiny_roots, tmp_path):
    archive = tmp_path / "phalp.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(tiny_roots.phalp.rglob("*")):
            if path.is_file():
                zf.write(path, "phalp/" + path.relative_to(tiny_roots.phalp).as_posix())
    roots = CacheRoots.under(tmp_path / "cache")
    phalp = catalog(["phalp"])
    report_ = import_weights(archive, roots, phalp)
    assert report_["ok"] is True and sorted(i["key"] for i in report_["imported"]) == sorted(f.key for f in phalp)
    assert {i["how"] for i in report_["imported"]} == {"extract"}
    for f in phalp:
        assert filecmp.cmp(tiny_roots.phalp / f.path, roots.phalp / f.path, shallow=False)

    unrelated = tmp_path / "photos"
    unrelated.mkdir()
    (unrelated / "a.jpg").write_bytes(b"\xff\xd8")
    nothing = import_weights(unrelated, CacheRoots.under(tmp_path / "other"), phalp)
    assert nothing["ok"] is False and nothing["imported"] == [] and "none of the" in nothing["note"]
    assert sorted(nothing["missing"]) == sorted(f.key for f in phalp)
