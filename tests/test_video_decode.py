"""Confined, chunked video decoding: allow-listed containers, limits, rotation, VFR, damage."""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from videos import audio_only

from pipeline.errors import InputError
from pipeline.video import decode as video_mod
from pipeline.video.decode import FrameChunk, VideoInfo, VideoLimits, iter_frames, probe_video

REAL_CLIP = Path(__file__).resolve().parents[2] / "shared" / "media" / "phalp_vid.mp4"
W, H = 64, 48


def _frame(i: int, w: int = W, h: int = H) -> np.ndarray:
    """A dark frame with a red block in the top-left corner and a square that moves."""
    img = np.full((h, w, 3), 20, np.uint8)
    img[: h // 4, : w // 4] = (0, 0, 255)
    x = (4 * i) % (w - 8)
    img[h - 10 : h - 2, x : x + 8] = (255, 255, 255)
    return img


def write_video(
    path: Path,
    n: int = 5,
    *,
    fmt: str | None = None,
    codec: str = "libx264",
    size: tuple[int, int] = (W, H),
    rotation: int | None = None,
    pts_ms: list[int] | None = None,
    faststart: bool = False,
    live: bool = False,
) -> Path:
    """Write ``n`` frames; ``pts_ms`` gives variable frame times, ``live`` an unseekable (streamed) file."""
    w, h = size
    options = {"movflags": "faststart"} if faststart else {}

    class _Sink:  # write-only: the muxer cannot seek back to fill in sizes
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, b: bytes) -> int:
            self.data += b
            return len(b)

    target = _Sink() if live else str(path)
    with av.open(target, "w", format=fmt or (None if not live else "matroska"), options=options) as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        out.start_encoding()
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(_frame(i, w, h), format="bgr24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    if live:
        path.write_bytes(bytes(target.data))
    return path


def _code(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.code


def _all_frames(path: Path, **kw) -> list[FrameChunk]:
    return list(iter_frames(path, **kw))


# --- allowed containers, detected from content -------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt", "codec", "expected_format"),
    [
        ("a.mp4", None, "libx264", "mov,mp4,m4a,3gp,3g2,mj2"),
        ("a.mov", None, "libx264", "mov,mp4,m4a,3gp,3g2,mj2"),
        ("a.mkv", "matroska", "libx264", "matroska,webm"),
        ("a.webm", "webm", "libvpx", "matroska,webm"),
        ("a.avi", None, "mpeg4", "avi"),
    ],
)
def test_allowed_containers_probe_and_decode(tmp_path, name, fmt, codec, expected_format):
    path = write_video(tmp_path / name, 7, fmt=fmt, codec=codec)
    info = probe_video(path)
    assert isinstance(info, VideoInfo)
    assert info.format == expected_format
    assert (info.width, info.height, info.rotation) == (W, H, 0)
    assert info.has_video and not info.has_audio
    assert info.fps == pytest.approx(25.0)
    assert info.duration_s == pytest.approx(7 / 25, abs=0.05)
    chunks = _all_frames(path, chunk_size=3)
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert [c.start for c in chunks] == [0, 3, 6]
    indices = np.concatenate([c.indices for c in chunks])
    times = np.concatenate([c.timestamps for c in chunks])
    np.testing.assert_array_equal(indices, np.arange(7))
    np.testing.assert_allclose(times, np.arange(7) / 25, atol=1e-6)
    first = chunks[0].frames[0]
    assert first.dtype == np.uint8 and first.shape == (H, W, 3)
    b, g, r = first[2, 2].astype(int)  # the red block, in BGR order
    assert r > 180 and b < 80 and g < 80


def test_format_comes_from_content_not_name(tmp_path):
    mkv_named_mp4 = write_video(tmp_path / "x.mkv", 3, fmt="matroska").rename(tmp_path / "clip.mp4")
    assert probe_video(mkv_named_mp4).format == "matroska,webm"
    mp4_named_txt = write_video(tmp_path / "y.mp4", 3).rename(tmp_path / "notes.txt")
    assert probe_video(mp4_named_txt).format == "mov,mp4,m4a,3gp,3g2,mj2"


# --- playlists, concat scripts and other non-videos --------------------------------------

_PLAYLISTS = {
    "hls": "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{target}\n#EXT-X-ENDLIST\n",
    "concat": "ffconcat version 1.0\nfile '{target}'\n",
}


@pytest.mark.parametrize("kind", sorted(_PLAYLISTS))
def test_playlist_named_mp4_is_refused_before_libav(tmp_path, monkeypatch, kind):
    target = write_video(tmp_path / "secret.avi", 3, codec="mpeg4")
    clip = tmp_path / "clip.mp4"
    clip.write_text(_PLAYLISTS[kind].format(target=target))

    def no_libav(*args, **kwargs):
        raise AssertionError("libav must not see a playlist")

    monkeypatch.setattr(av, "open", no_libav)
    for call in (lambda: probe_video(clip), lambda: _all_frames(clip)):
        with pytest.raises(InputError) as excinfo:
            call()
        assert _code(excinfo) == "video_unsupported_format"
        assert excinfo.value.status == 415
        assert "playlist" in excinfo.value.message or "ffconcat" in excinfo.value.message


class _OpenDetector:
    """A named pipe standing in for the referenced file: anyone opening it to read is seen.

    A reader blocks in open() until a writer appears; the poller is that writer, so a reader is
    both detected and released (it then reads end-of-file), and the test cannot hang.
    """

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path, self.opened, self._stop = path, False, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: nobody has it open for reading
                time.sleep(0.005)
                continue
            self.opened = True
            os.close(fd)

    def __enter__(self) -> _OpenDetector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.05)
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize(
    ("kind", "demuxer", "code"),
    [
        ("hls", "hls", "video_unsupported_format"),  # the refused open surfaces as such
        ("concat", "concat", "video_corrupt"),  # concat reports it as an unreadable input
    ],
)
def test_nested_opens_are_refused_even_if_a_playlist_reached_libav(tmp_path, monkeypatch, kind, demuxer, code):
    """Second line of defence: with the playlist demuxer forced, libav still cannot open the other file."""
    clip = tmp_path / "clip.mp4"
    clip.write_text(_PLAYLISTS[kind].format(target="secret.avi"))  # relative: passes concat's "safe" check
    monkeypatch.chdir(tmp_path)
    with _OpenDetector(tmp_path / "secret.avi") as detector:
        with open(clip, "rb") as f, pytest.raises(InputError) as excinfo:
            container = video_mod._open_container(f, demuxer)
            try:
                for _ in container.demux():
                    pass
            finally:
                container.close()
    assert _code(excinfo) == code
    assert not detector.opened, "libav opened the file the playlist points at"


def test_open_detector_sees_an_open(tmp_path):
    with _OpenDetector(tmp_path / "fifo") as detector:
        with open(tmp_path / "fifo", "rb") as f:
            f.read()
    assert detector.opened


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nm=video 5004 RTP/AVP 96\n", "SDP"),
        (b"hello, this is not a video\n", "text"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "PNG"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 32, "still image"),
        (bytes(range(256)) * 4, "unrecognised"),
    ],
)
def test_not_a_video(tmp_path, data, says):
    path = tmp_path / "upload.mp4"
    path.write_bytes(data)
    with pytest.raises(InputError) as excinfo:
        probe_video(path)
    assert _code(excinfo) == "video_unsupported_format"
    assert says in excinfo.value.message and "expected" in excinfo.value.message


def test_empty_missing_and_non_regular_files(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(InputError) as excinfo:
        probe_video(empty)
    assert _code(excinfo) == "video_empty"
    with pytest.raises(InputError) as excinfo:
        probe_video(tmp_path / "missing.mp4")
    assert _code(excinfo) == "video_unreadable"
    with pytest.raises(InputError) as excinfo:
        probe_video(tmp_path)
    assert _code(excinfo) == "video_unreadable"


def test_audio_only_file(tmp_path):
    path = audio_only(tmp_path / "voice.mp4")
    with pytest.raises(InputError) as excinfo:
        probe_video(path)
    assert _code(excinfo) == "video_no_video_stream"
    assert "audio" in excinfo.value.message


@pytest.mark.parametrize(("name", "fmt"), [("zero.mp4", None), ("zero.mkv", "matroska")])
def test_zero_frames(tmp_path, name, fmt):
    path = write_video(tmp_path / name, 0, fmt=fmt)
    for call in (lambda: probe_video(path), lambda: _all_frames(path)):
        with pytest.raises(InputError) as excinfo:
            call()
        assert _code(excinfo) == "video_empty"


def test_one_frame_is_a_valid_video(tmp_path):
    path = write_video(tmp_path / "one.mp4", 1)
    info = probe_video(path)
    assert info.frame_count == 1 and info.frame_count_exact
    (chunk,) = _all_frames(path, chunk_size=8)
    assert len(chunk) == 1 and chunk.start == 0 and chunk.timestamps.tolist() == [0.0]


# --- timing and orientation ---------------------------------------------------------------


def test_variable_frame_rate_timestamps_come_from_pts(tmp_path):
    pts = [0, 40, 200, 240, 600]
    path = write_video(tmp_path / "vfr.mp4", len(pts), pts_ms=pts)
    info = probe_video(path)
    assert info.variable_frame_rate is True
    times = np.concatenate([c.timestamps for c in iter_frames(path, chunk_size=2)])
    np.testing.assert_allclose(times, np.array(pts) / 1000, atol=1e-6)
    cfr = write_video(tmp_path / "cfr.mp4", 5)
    assert probe_video(cfr).variable_frame_rate is False


@pytest.mark.parametrize(
    ("display_ccw", "rotation_cw", "red_corner"),
    [
        (-90, 90, "top-right"),  # a phone held upright: the ``rotate=90`` tag
        (90, 270, "bottom-left"),
        (180, 180, "bottom-right"),
        (0, 0, "top-left"),
    ],
)
def test_rotation_metadata_is_applied(tmp_path, display_ccw, rotation_cw, red_corner):
    path = write_video(tmp_path / "phone.mp4", 3, rotation=display_ccw)
    info = probe_video(path)
    assert info.rotation == rotation_cw
    upright = (H, W) if rotation_cw in (90, 270) else (W, H)
    assert (info.width, info.height) == upright
    assert (info.coded_width, info.coded_height) == (W, H)
    frame = _all_frames(path)[0].frames[0]
    assert frame.shape == (info.height, info.width, 3) and frame.flags["C_CONTIGUOUS"]
    h, w = frame.shape[:2]
    corners = {
        "top-left": frame[2, 2],
        "top-right": frame[2, w - 3],
        "bottom-left": frame[h - 3, 2],
        "bottom-right": frame[h - 3, w - 3],
    }
    reds = {name for name, px in corners.items() if px[2] > 180 and px[0] < 80}
    assert reds == {red_corner}


# --- limits ---------------------------------------------------------------------------------


def test_limits_from_the_container_are_refused_when_probing(tmp_path):
    path = write_video(tmp_path / "a.mp4", 10, size=(128, 96))
    cases = [
        (VideoLimits(max_pixels=64 * 48), "video_too_large"),
        (VideoLimits(max_frames=9), "video_too_long"),
        (VideoLimits(max_duration_s=0.2), "video_too_long"),
        (VideoLimits(max_bytes=100), "video_too_large"),
    ]
    for limits, code in cases:
        for call in (lambda: probe_video(path, limits), lambda: _all_frames(path, limits=limits)):
            with pytest.raises(InputError) as excinfo:
                call()
            assert _code(excinfo) == code, limits
            assert excinfo.value.status == 413
            assert "expected at most" in excinfo.value.message
    assert probe_video(path, VideoLimits(max_pixels=128 * 96, max_frames=10)).frame_count == 10


def test_limits_are_counted_again_while_decoding(tmp_path):
    """A streamed Matroska file declares neither frame count nor duration: decoding counts."""
    path = write_video(tmp_path / "live.mkv", 10, codec="mpeg4", live=True)
    info = probe_video(path)
    assert not info.frame_count_exact
    got: list[int] = []
    with pytest.raises(InputError) as excinfo:
        for chunk in iter_frames(path, VideoLimits(max_frames=6), chunk_size=4):
            got.append(len(chunk))
    assert _code(excinfo) == "video_too_long" and got == [4]
    with pytest.raises(InputError) as excinfo:
        _all_frames(path, limits=VideoLimits(max_duration_s=0.15))
    assert _code(excinfo) == "video_too_long"


def test_very_large_resolution(tmp_path):
    path = write_video(tmp_path / "big.mp4", 1, codec="mpeg4", size=(4096 + 64, 2304))
    with pytest.raises(InputError) as excinfo:
        probe_video(path)
    assert _code(excinfo) == "video_too_large"
    assert excinfo.value.details["width"] == 4096 + 64


# --- damage ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("moov_at_end.mp4", {}),
        ("faststart.mp4", {"faststart": True}),
        ("cut.mkv", {"fmt": "matroska"}),
        ("cut.avi", {"codec": "mpeg4"}),
    ],
)
def test_truncated_files_are_refused(tmp_path, name, kw):
    """Documented answer: a cut-off file is refused as a whole, before any frame is decoded."""
    full = write_video(tmp_path / ("full_" + name), 20, **kw)
    data = full.read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) * 2 // 3])
    for call in (lambda: probe_video(cut), lambda: _all_frames(cut)):
        with pytest.raises(InputError) as excinfo:
            call()
        assert _code(excinfo) == "video_corrupt"
        assert excinfo.value.details == {"truncated": True}


def test_streamed_matroska_without_sizes_decodes_up_to_the_cut(tmp_path):
    """Documented exception: a live-written Matroska file has no size to check against."""
    full = write_video(tmp_path / "live.mkv", 20, codec="mpeg4", live=True)
    data = full.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    n = sum(len(c) for c in iter_frames(cut))
    assert 0 < n < 20


def test_damage_in_the_middle_raises_after_the_good_chunks(tmp_path):
    path = write_video(tmp_path / "a.mp4", 30, faststart=True)
    with av.open(str(path)) as c:
        samples = [(e.pos, e.size) for e in c.streams.video[0].index_entries]
    data = bytearray(path.read_bytes())
    for pos, size in samples[20:]:
        data[pos : pos + size] = b"\xff" * size
    path.write_bytes(bytes(data))
    got: list[int] = []
    with pytest.raises(InputError) as excinfo:
        for chunk in iter_frames(path, chunk_size=4):
            got.append(len(chunk))
    assert _code(excinfo) == "video_corrupt"
    assert sum(got) >= 12 and all(n == 4 for n in got)
    assert excinfo.value.details["frames_decoded"] >= sum(got)


def test_garbage_after_a_valid_header(tmp_path):
    path = tmp_path / "junk.mp4"
    rng = np.random.default_rng(0)
    path.write_bytes(b"\x00\x00\x00\x14ftypisom\x00\x00\x02\x00isom" + rng.bytes(4000))
    with pytest.raises(InputError) as excinfo:
        probe_video(path)
    assert _code(excinfo) == "video_corrupt"


# --- chunking -----------------------------------------------------------------------------


def test_only_the_current_chunk_is_held(tmp_path):
    path = write_video(tmp_path / "a.mp4", 12)
    it = iter_frames(path, chunk_size=4)
    chunk = next(it)
    assert len(chunk) == 4
    refs = [weakref.ref(f) for f in chunk.frames]
    del chunk
    second = next(it)
    gc.collect()
    assert all(r() is None for r in refs), "the iterator kept frames of a chunk it already yielded"
    assert len(second) == 4 and second.start == 4
    it.close()  # an early stop closes the container and the file


def test_chunk_size_must_be_positive(tmp_path):
    path = write_video(tmp_path / "a.mp4", 2)
    with pytest.raises(ValueError, match="chunk_size"):
        next(iter_frames(path, chunk_size=0))


def test_real_clip(request):
    if not REAL_CLIP.is_file():
        pytest.skip(f"real clip not found at {REAL_CLIP}")
    info = probe_video(REAL_CLIP)
    assert (info.width, info.height) == (1920, 1088)
    assert info.frame_count == 180 and info.frame_count_exact
    it = iter_frames(REAL_CLIP, chunk_size=2)
    chunk = next(it)
    it.close()
    assert chunk.frames[0].shape == (1088, 1920, 3)
    assert chunk.timestamps[0] == pytest.approx(0.0, abs=1e-3)
