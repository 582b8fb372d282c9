"""Synthetic test videos: figures drawn with OpenCV, written with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import av
import numpy as np

from pipeline.tiny.vitdet import draw_figures


def figure_frame(positions: Sequence[int], size: tuple[int, int] = (360, 640)) -> np.ndarray:
    """A light frame with one standing figure per x position (BGR uint8): the figures the tiny
    detector is built to find."""
    return draw_figures(positions, size=size)


def write_video(
    path: Path,
    frames: Sequence[np.ndarray],
    fps: int = 10,
    codec: str = "libx264",
    *,
    size: tuple[int, int] | None = None,
    rotation: int | None = None,
    pts_ms: Sequence[int] | None = None,
) -> Path:
    """Encode BGR frames; ``size`` (h, w) for a stream without frames, ``rotation`` a display
    matrix (degrees counter-clockwise, as phones write it), ``pts_ms`` variable frame times."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = size if size is not None else frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        container.start_encoding()
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[:, :, ::-1]), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def audio_only(path: Path) -> Path:
    """An MP4 holding a short silent AAC track and no video."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=8000)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def crossing_video(path: Path, n: int = 12, fps: int = 10) -> Path:
    """Two figures walking towards each other."""
    return write_video(path, [figure_frame([120 + 14 * i, 520 - 14 * i]) for i in range(n)], fps=fps)


def walking_video(path: Path, n: int, size: tuple[int, int] = (360, 480), fps: int = 30) -> Path:
    """Two figures walking across the frame and back, ``n`` frames of ``size`` (h, w): the same
    people and about the same work in every frame, for a steady load of any length (frames are
    drawn as they are encoded, never held together)."""
    h, w = size
    span = max(1, w - 120)

    def frames() -> Iterator[np.ndarray]:
        for i in range(n):
            phase = (i % (2 * span)) / span
            x = int(60 + span * (phase if phase <= 1 else 2 - phase))
            yield figure_frame([x, w - x] if abs(w - 2 * x) > 60 else [x], size=(h, w))

    return write_video(path, frames(), fps=fps, size=(h, w))  # type: ignore[arg-type]  # iterated once
