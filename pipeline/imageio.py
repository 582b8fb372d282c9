"""Image decoding with the checks a service needs before any model sees the pixels.

Images are decoded with OpenCV as 4D-Humans does (``cv2.imread``: BGR uint8, EXIF orientation
applied, alpha dropped, grayscale expanded). The size is read from the header first, so a huge
image is refused before it is decompressed.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError

DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: above the 24 MP of a full-frame phone photo

_MAGIC = {
    b"\xff\xd8\xff": "jpeg",
    b"\x89PNG\r\n\x1a\n": "png",
    b"BM": "bmp",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
}


def sniff_format(data: bytes) -> str | None:
    """Image format from the leading bytes (never from a file name or a client's content type)."""
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded bytes -> (H, W, 3) BGR uint8. `InputError` with a stable code for anything else."""
    if not data:
        raise InputError("image_empty", "the image is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise InputError("image_unsupported_format", "not an image: expected JPEG, PNG, WebP, BMP or TIFF data")
    width, height = _header_size(data)
    if width * height > max_pixels:
        raise InputError(
            "image_too_large",
            f"image is {width}x{height} = {width * height / 1e6:.1f} MP, the limit is {max_pixels / 1e6:.1f} MP",
            status=413,
        )
    if fmt == "jpeg" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise InputError("image_truncated", "the JPEG data is truncated (no end-of-image marker)")
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise InputError("image_unreadable", f"the {fmt} data cannot be decoded (corrupt or truncated)")
    return img


def load_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError("image_unreadable", f"cannot read {path}: {exc.strerror or exc}") from exc
    return decode_image(data, max_pixels=max_pixels)


def _header_size(data: bytes) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                return im.size
    except Image.DecompressionBombError as exc:
        raise InputError("image_too_large", f"image is far too large: {exc}", status=413) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError("image_unreadable", f"the image header cannot be read: {exc}") from exc


def as_bgr_image(image: object, index: int | None = None) -> np.ndarray:
    """A (H, W, 3) BGR uint8 image from (H, W) gray, (H, W, 3) BGR or (H, W, 4) BGRA uint8 arrays.

    Gray is replicated and alpha dropped, as ``cv2.imread(..., IMREAD_COLOR)`` does for such
    files. ``index`` names the image in messages when it is one of several.
    """
    where = "image" if index is None else f"image {index}"
    if not isinstance(image, np.ndarray):
        raise InputError("image_invalid", f"{where}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError("image_dtype", f"{where}: expected dtype uint8 (BGR 0..255), got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError("image_shape", f"{where}: expected HxW, HxWx3 (BGR) or HxWx4 (BGRA), got shape {tuple(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError("image_empty", f"{where}: expected a non-empty image, got shape {tuple(image.shape)}")
    return image
