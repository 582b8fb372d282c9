"""Sample media for trying the project: a photo and a short clip of the drawn figures that the
tiny test models find (`pipeline.tiny.vitdet.draw_figures`), so every documented command can be
run as written on a machine without footage or model files."""

from __future__ import annotations

from pathlib import Path

import cv2

from pipeline.atomic import atomic_path
from pipeline.render.overlay import H264Writer
from pipeline.tiny.vitdet import draw_figures

PHOTO_NAME = "photo.jpg"
CLIP_NAME = "clip.mp4"


def write_demo_media(dest: str | Path, *, frames: int = 12, fps: float = 10.0) -> dict[str, Path]:
    """``photo.jpg`` (three figures) and ``clip.mp4`` (two figures walking past each other, H.264)
    under ``dest``; their paths by name."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    photo = dest / PHOTO_NAME
    ok, jpeg = cv2.imencode(".jpg", draw_figures([160, 340, 520]), [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError("OpenCV could not encode the demo photo")
    with atomic_path(photo) as tmp:
        tmp.write_bytes(jpeg.tobytes())
    clip = dest / CLIP_NAME
    with atomic_path(clip) as tmp:
        writer = H264Writer(tmp, fps, crf=18)
        try:
            for i in range(frames):
                step = 380 * i // max(1, frames - 1)
                writer.write(draw_figures([120 + step, 520 - step]))
        finally:
            writer.close()
    return {"photo": photo, "clip": clip}
