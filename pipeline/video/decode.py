"""Video decoding confined to what a service should accept from strangers.

Videos are decoded with PyAV (libavformat/libavcodec) in chunks, so a ten-minute clip never sits
in memory at once. Before libav sees a byte, the container is identified from its leading bytes
(never from the file name) and only an allow-list passes: MP4/MOV, Matroska/WebM and AVI.
libav is then handed an already-open Python file object with that demuxer forced and an
``io_open`` callback that refuses every nested open, so no playlist, concat script or external
reference can make it read another file or a network address.

Decisions a caller can rely on:

* Truncated files are refused (``video_corrupt``, ``details["truncated"] = True``), not decoded
  up to the damage: a cut-off upload is almost always a failed transfer the client should
  retry, and a silently shorter result is worse than a clear error. Truncation is found from
  the container's own size fields before decoding (MP4 top-level boxes, the Matroska segment
  size, the AVI RIFF size); damage found later while decoding raises the same code from the
  iterator, after the chunks decoded before it.
* Timestamps come from each frame's presentation time stamp, relative to the stream start, so
  variable-frame-rate phone videos keep their real timing; frame indices count decoded frames.
* Rotation metadata (the display matrix phones write) is applied: frames come out upright and
  the reported width/height are the upright ones. Mirroring in the matrix is not applied.
* Limits are refused, never silently truncated: what the container declares is checked when
  probing, and what actually decodes is counted again while iterating.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, Generator, Iterator

import numpy as np

from pipeline.errors import InputError
from pipeline.video.container import IMAGE_BRANDS, check_complete, describe_other, sniff_container
from pipeline.video.frame_range import FrameRange

log = logging.getLogger(__name__)

#: libavformat demuxer names we hand to ``av.open(format=...)`` for each detected container.
_DEMUXER = {"mp4": "mov", "matroska": "matroska", "avi": "avi"}

#: libavformat's full name of each allowed demuxer (reported in `VideoInfo.format`); a forced
#: demuxer reports its short name (``container.format.name == "mov"``), so both are accepted.
ALLOWED_FORMATS = {"mov": "mov,mp4,m4a,3gp,3g2,mj2", "matroska": "matroska,webm", "avi": "avi"}

@dataclass(frozen=True)
class VideoLimits:
    """What one video may cost. Exceeding any limit is an error, never a silent cut."""

    max_bytes: int = 2 * 1024**3  # file size; 2 GiB holds ten minutes of 4K phone video
    max_frames: int = 18_000  # decoded frames; ten minutes at 30 fps
    max_duration_s: float = 600.0  # seconds of video, from the container and from frame times
    max_pixels: int = 4096 * 2304  # per frame; 4K UHD and DCI 4K in either orientation pass


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` learned from the container and its first frame."""

    format: str  # libavformat demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    codec: str  # video codec name, e.g. "h264"
    width: int  # pixels, upright (after rotation)
    height: int  # pixels, upright (after rotation)
    coded_width: int  # pixels as stored, before rotation
    coded_height: int  # pixels as stored, before rotation
    rotation: int  # degrees clockwise applied to stored frames to show them upright: 0, 90, 180, 270
    fps: float  # average frame rate (frames / duration); 0.0 if the container does not say
    frame_count: int  # frames: the container's count when it has one, else duration * fps
    frame_count_exact: bool  # True when `frame_count` is the container's own count
    duration_s: float  # seconds, from the stream (or container) duration
    has_video: bool  # always True for a returned info: a file without video is refused
    has_audio: bool  # an audio stream is present (ignored by decoding)
    variable_frame_rate: bool | None  # average and base rates differ; None when unknown
    size_bytes: int  # file size


@dataclass
class FrameChunk:
    """Consecutive decoded frames: (H, W, 3) BGR uint8 arrays, upright."""

    start: int  # index of the first frame of the chunk in the video
    frames: list[np.ndarray]  # BGR uint8, (H, W, 3) each
    timestamps: np.ndarray = field(repr=False)  # (N,) float64 seconds from the stream start, from pts
    indices: np.ndarray = field(repr=False)  # (N,) int64 frame indices, start .. start + N - 1

    def __len__(self) -> int:
        return len(self.frames)


def probe_video(path: str | Path, limits: VideoLimits = VideoLimits()) -> VideoInfo:
    """Check a video against the allow-list and the limits, and describe it.

    Decodes the first frame only (to learn its rotation and prove the stream decodes).
    Raises `InputError` with a stable code for anything a service should not process.
    """
    with _open_video(path, limits) as opened:
        stream = opened.container.streams.video[0]
        _check_stream_limits(opened.container, stream, limits)  # before a huge frame is decoded
        first = _first_frame(opened.container, stream)
        rotation = _rotation_of(first, stream)
        info = _describe(opened, stream, first, rotation)
    _check_declared_limits(info, limits)
    return info


def iter_frames(
    path: str | Path,
    limits: VideoLimits = VideoLimits(),
    chunk_size: int = 16,
    start_frame: int = 0,
    frame_range: FrameRange | None = None,
) -> Generator[FrameChunk, None, None]:
    """Decoded frames in chunks of at most ``chunk_size``; only the current chunk is held.

    ``start_frame``: frames before it are decoded (frame-exact, limits still checked) but not
    converted or returned; chunks then start there (resuming a job).

    ``frame_range``: only its frames are returned, with their indices and times in the whole
    video. Frames before it are decoded but neither converted nor returned: a frame's index
    counts decoded frames, and a seek lands on a key frame without saying which frame it is
    (in a variable-frame-rate video, not even from its time), so skipping by decoding is what
    keeps indices exact. Decoding stops at the range's end. A range holding no frame raises
    ``frame_range_past_end`` (the video ends before it starts) or ``frame_range_empty``.

    Limits are enforced as frames arrive; damage found mid-stream raises ``video_corrupt``
    after the chunks before it. A stream that decodes to nothing raises ``video_empty``.
    Closing the generator early closes the file.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    with _open_video(path, limits) as opened:
        stream = opened.container.streams.video[0]
        _check_stream_limits(opened.container, stream, limits)
        info_rotation: int | None = None
        start_pts = stream.start_time
        fps = float(stream.average_rate or stream.guessed_rate or 0) or None
        frames: list[np.ndarray] = []
        times: list[float] = []
        index = 0
        skip = max(0, int(start_frame))
        chunk_start: int | None = None
        last_time = -1.0
        in_range = 0  # frames of the range seen, also those before ``start_frame``
        for frame in _decode(opened.container, stream, frames_done=lambda: index):
            if info_rotation is None:
                info_rotation = _rotation_of(frame, stream)
            if frame.width * frame.height > limits.max_pixels:
                raise _too_large(frame.width, frame.height, limits)
            if index >= limits.max_frames:
                raise InputError(
                    "video_too_long",
                    f"expected at most {limits.max_frames} frames, got more while decoding",
                    status=413,
                    details={"max_frames": limits.max_frames},
                )
            t = _frame_time(frame, start_pts, last_time, fps)
            if t > limits.max_duration_s:
                raise InputError(
                    "video_too_long",
                    f"expected at most {limits.max_duration_s:g} s of video, got a frame at {t:.2f} s",
                    status=413,
                    details={"max_duration_s": limits.max_duration_s},
                )
            last_time = t
            index += 1
            if frame_range is not None:
                if frame_range.past(index - 1, t):
                    break
                if not frame_range.contains(index - 1, t):
                    continue
                in_range += 1
            if index <= skip:
                continue
            if chunk_start is None:
                chunk_start = index - 1
            frames.append(_upright(frame.to_ndarray(format="bgr24"), info_rotation))
            times.append(t)
            if len(frames) == chunk_size:
                yield _chunk(chunk_start, frames, times)
                chunk_start, frames, times = index, [], []
        if frames:
            assert chunk_start is not None  # set with the chunk's first frame
            yield _chunk(chunk_start, frames, times)
        if index == 0:
            raise InputError("video_empty", "expected at least one frame, got a video stream with none")
        if frame_range is not None and in_range == 0:
            if not frame_range.past(index - 1, last_time):  # the last frame comes before the range
                raise frame_range.past_end(f"the video's last frame is frame {index - 1}, at {last_time:.3f} s")
            raise InputError(
                "frame_range_empty",
                f"expected at least one frame in the range, got none: the video has no frame in {_describe_range(frame_range)}",
                status=422,
            )


# --- opening -------------------------------------------------------------------------------


@dataclass
class _Opened:
    container: Any  # av.container.InputContainer
    file: IO[bytes]
    size: int

    def __enter__(self) -> _Opened:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.container.close()
        finally:
            self.file.close()


def _refuse_nested_open(url: str, flags: int, options: dict) -> IO[bytes]:
    """libav asks here before opening any further file or URL: the answer is always no."""
    log.warning("refused a nested open of %r while reading a video", url)
    raise PermissionError(f"opening other files or URLs from a video is not allowed (asked for {url!r})")


def _open_video(path: str | Path, limits: VideoLimits) -> _Opened:
    """Open a local regular file whose leading bytes name an allowed container."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by _Opened
    except OSError as exc:
        raise InputError("video_unreadable", f"cannot read the video file: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InputError("video_unreadable", "expected a regular file, got a directory, device or pipe")
        size = st.st_size
        if size == 0:
            raise InputError("video_empty", "expected a video file, got 0 bytes")
        if size > limits.max_bytes:
            raise InputError(
                "video_too_large",
                f"expected at most {limits.max_bytes} bytes, got {size}",
                status=413,
                details={"max_bytes": limits.max_bytes, "size_bytes": size},
            )
        head = f.read(512)
        family = sniff_container(head)
        if family is None:
            raise InputError(
                "video_unsupported_format",
                f"expected an MP4/MOV, Matroska/WebM or AVI video, got {describe_other(head)}",
                status=415,
            )
        if family == "mp4" and head[4:8] == b"ftyp" and head[8:12] in IMAGE_BRANDS:
            raise InputError(
                "video_unsupported_format",
                f"expected an MP4/MOV, Matroska/WebM or AVI video, got a still image ({head[8:12].decode('latin-1')})",
                status=415,
            )
        check_complete(f, family, size)
        f.seek(0)
        container = _open_container(f, _DEMUXER[family])
    except BaseException:
        f.close()
        raise
    opened = _Opened(container, f, size)
    try:
        if container.format.name not in ALLOWED_FORMATS and container.format.name not in ALLOWED_FORMATS.values():
            raise InputError("video_unsupported_format", f"unexpected container {container.format.name!r}")
        if not container.streams.video:
            if not container.streams:
                raise InputError("video_empty", "expected a video stream with frames, got a container with no streams")
            kinds = ", ".join(sorted({s.type for s in container.streams}))
            raise InputError(
                "video_no_video_stream",
                f"expected a video stream, got only {kinds}",
                status=422,
            )
    except BaseException:
        opened.__exit__(None, None, None)
        raise
    return opened


def _open_container(f: IO[bytes], demuxer: str) -> Any:
    """``av.open`` on an open file object with the demuxer forced and nested opens refused."""
    import av

    # The input itself is our file object, so libav needs no protocol at all; a whitelist naming
    # none stops demuxers that open further inputs with their own calls (concat does, bypassing
    # ``io_open``).
    options = {"protocol_whitelist": "none"}
    if demuxer == "mov":
        # External data references (``dref``) would read other files; libav's default is off, keep it so.
        options["enable_drefs"] = "0"
    try:
        return av.open(f, mode="r", format=demuxer, container_options=options, io_open=_refuse_nested_open)
    except PermissionError as exc:
        raise InputError("video_unsupported_format", f"the file refers to other files or URLs: {exc}") from exc
    except av.error.EOFError as exc:
        raise InputError("video_empty", "expected frames, got a container that ends before any") from exc
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise InputError("video_corrupt", f"the {demuxer} container cannot be read: {exc}") from exc


# --- decoding --------------------------------------------------------------------------------


def _decode(container: Any, stream: Any, frames_done: Any) -> Iterator[Any]:
    """Frames of one stream; libav errors become ``video_corrupt`` with the count so far."""
    import av

    try:
        for packet in container.demux(stream):
            yield from packet.decode()
    except av.error.EOFError:
        return
    except (av.error.FFmpegError, ValueError) as exc:
        n = frames_done()
        raise InputError(
            "video_corrupt",
            f"the video stream is damaged after {n} frames: {exc}",
            details={"frames_decoded": n},
        ) from exc


def _first_frame(container: Any, stream: Any) -> Any:
    for frame in _decode(container, stream, frames_done=lambda: 0):
        return frame
    raise InputError("video_empty", "expected at least one frame, got a video stream with none")


def _rotation_of(frame: Any, stream: Any) -> int:
    """Clockwise degrees to show the stored frame upright, in {0, 90, 180, 270}.

    The display matrix (``frame.rotation``) states the counter-clockwise rotation, as
    ``av_display_rotation_get``; ffmpeg's own autorotate turns the frame by its negation
    clockwise, and so do we. Older files carry a ``rotate`` tag, already clockwise.
    """
    ccw = getattr(frame, "rotation", 0) or 0
    if ccw:
        return int(round(-ccw / 90.0)) % 4 * 90
    tag = stream.metadata.get("rotate")
    if tag:
        try:
            return int(round(float(tag) / 90.0)) % 4 * 90
        except ValueError:
            return 0
    return 0


def _upright(image: np.ndarray, rotation_cw: int | None) -> np.ndarray:
    if not rotation_cw:
        return image
    # np.rot90 turns counter-clockwise for positive k (row 0 shown at the top)
    return np.ascontiguousarray(np.rot90(image, k=-(rotation_cw // 90)))


def _frame_time(frame: Any, start_pts: int | None, last_time: float, fps: float | None) -> float:
    """Seconds from the stream start, from the frame's pts; a missing pts continues the clock."""
    if frame.pts is not None and frame.time_base is not None:
        return float((frame.pts - (start_pts or 0)) * frame.time_base)
    step = 1.0 / fps if fps else 0.0
    return last_time + step if last_time >= 0 else 0.0


def _describe_range(r: FrameRange) -> str:
    if r.in_seconds:
        return f"[{r.start_s or 0:g} s, {'end' if r.end_s is None else f'{r.end_s:g} s'})"
    return f"frames [{r.start_frame or 0}, {'end' if r.end_frame is None else r.end_frame})"


def _chunk(start: int, frames: list[np.ndarray], times: list[float]) -> FrameChunk:
    return FrameChunk(
        start=start,
        frames=frames,
        timestamps=np.asarray(times, dtype=np.float64),
        indices=np.arange(start, start + len(frames), dtype=np.int64),
    )


# --- description and limits ----------------------------------------------------------------


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def _describe(opened: _Opened, stream: Any, first: Any, rotation: int) -> VideoInfo:
    container = opened.container
    duration = _seconds(stream.duration, stream.time_base)
    if duration is None and container.duration is not None:
        duration = container.duration / 1_000_000  # AV_TIME_BASE
    duration = duration or 0.0
    avg = stream.average_rate
    base = stream.base_rate
    fps = float(avg) if avg else float(stream.guessed_rate or 0)
    exact = bool(stream.frames)
    frame_count = int(stream.frames) if exact else int(round(duration * fps))
    vfr = None if not (avg and base) else abs(float(avg) - float(base)) > 0.01 * float(base)
    coded_w, coded_h = first.width, first.height
    width, height = (coded_h, coded_w) if rotation in (90, 270) else (coded_w, coded_h)
    return VideoInfo(
        format=ALLOWED_FORMATS.get(container.format.name, container.format.name),
        codec=stream.codec_context.name,
        width=width,
        height=height,
        coded_width=coded_w,
        coded_height=coded_h,
        rotation=rotation,
        fps=fps,
        frame_count=frame_count,
        frame_count_exact=exact,
        duration_s=duration,
        has_video=True,
        has_audio=bool(container.streams.audio),
        variable_frame_rate=vfr,
        size_bytes=opened.size,
    )


def _too_large(width: int, height: int, limits: VideoLimits) -> InputError:
    return InputError(
        "video_too_large",
        f"expected at most {limits.max_pixels} pixels per frame, got {width}x{height} = {width * height}",
        status=413,
        details={"max_pixels": limits.max_pixels, "width": width, "height": height},
    )


def _check_stream_limits(container: Any, stream: Any, limits: VideoLimits) -> None:
    """What the container declares, before decoding starts (rotation does not change the area)."""
    width, height = stream.codec_context.width or 0, stream.codec_context.height or 0
    if width * height > limits.max_pixels:
        raise _too_large(width, height, limits)
    duration = _seconds(stream.duration, stream.time_base)
    if duration is None and container.duration is not None:
        duration = container.duration / 1_000_000  # AV_TIME_BASE
    _check_length(duration or 0.0, int(stream.frames or 0), bool(stream.frames), limits)


def _check_declared_limits(info: VideoInfo, limits: VideoLimits) -> None:
    if info.width * info.height > limits.max_pixels:
        raise _too_large(info.width, info.height, limits)
    _check_length(info.duration_s, info.frame_count, info.frame_count_exact, limits)


def _check_length(duration_s: float, frame_count: int, exact: bool, limits: VideoLimits) -> None:
    if duration_s > limits.max_duration_s:
        raise InputError(
            "video_too_long",
            f"expected at most {limits.max_duration_s:g} s of video, got {duration_s:.1f} s",
            status=413,
            details={"max_duration_s": limits.max_duration_s, "duration_s": duration_s},
        )
    if exact and frame_count > limits.max_frames:
        raise InputError(
            "video_too_long",
            f"expected at most {limits.max_frames} frames, got {frame_count}",
            status=413,
            details={"max_frames": limits.max_frames, "frame_count": frame_count},
        )
