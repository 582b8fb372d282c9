"""Recognising a video container from its content, and checking it is whole, before any
demuxer reads it: the leading bytes name the family (never the file name), other uploads are
named in the error, and the container's own size fields (MP4 top-level boxes, the Matroska
segment size, the AVI RIFF size) must fit in the file."""

from __future__ import annotations

import os
from typing import IO

from pipeline.errors import InputError

# ISO-BMFF / QuickTime top-level box types a movie file may start with.
_MP4_FIRST_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"}
# ``ftyp`` major brands of still images that the mov demuxer would also accept.
IMAGE_BRANDS = {b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis"}

# Things people upload instead of a video, named in the error so the message is useful.
_KNOWN_OTHER = (
    (b"#EXTM3U", "an HLS/M3U playlist"),
    (b"ffconcat version", "an ffconcat script"),
    (b"\xef\xbb\xbfffconcat version", "an ffconcat script"),
    (b"v=0", "an SDP session description"),
    (b"<?xml", "an XML document (e.g. a DASH manifest)"),
    (b"<MPD", "a DASH manifest"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"FLV", "an FLV video (not supported)"),
    (b"OggS", "an Ogg file (not supported)"),
    (b"ID3", "an MP3 audio file"),
    (b"fLaC", "a FLAC audio file"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
)


def sniff_container(head: bytes) -> str | None:
    """Container family from the leading bytes: "mp4", "matroska", "avi" or None."""
    if len(head) >= 8 and head[4:8] in _MP4_FIRST_BOXES:
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    return None


def describe_other(head: bytes) -> str:
    stripped = head.lstrip()
    for magic, what in _KNOWN_OTHER:
        if head.startswith(magic) or stripped.startswith(magic):
            return what
    if len(head) >= 12 and head[:4] == b"RIFF":
        return f"a RIFF file of type {head[8:12]!r}"
    if len(head) >= 189 and head[0] == 0x47 and head[188] == 0x47:
        return "an MPEG transport stream (not supported)"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "unrecognised data"


def truncated(what: str) -> InputError:
    return InputError(
        "video_corrupt",
        f"the file is truncated: {what}",
        details={"truncated": True},
    )


def check_complete(f: IO[bytes], family: str, size: int) -> None:
    if family == "mp4":
        _check_mp4_boxes(f, size)
    elif family == "matroska":
        _check_matroska_segment(f, size)
    elif family == "avi":
        f.seek(4)
        riff_size = int.from_bytes(f.read(4), "little")
        if riff_size and 8 + riff_size > size:
            raise truncated(f"the RIFF header announces {8 + riff_size} bytes, the file has {size}")


def _check_mp4_boxes(f: IO[bytes], size: int, max_boxes: int = 1_000_000) -> None:
    """Walk the top-level boxes: each must end inside the file (size 0 means "to the end")."""
    offset = 0
    for _ in range(max_boxes):
        if offset >= size:
            return
        f.seek(offset)
        header = f.read(16)
        if len(header) < 8:
            raise truncated(f"a box header at byte {offset} is cut off")
        box_size = int.from_bytes(header[:4], "big")
        if box_size == 1:
            if len(header) < 16:
                raise truncated(f"a box header at byte {offset} is cut off")
            box_size = int.from_bytes(header[8:16], "big")
        elif box_size == 0:
            return
        if box_size < 8:
            raise InputError(
                "video_corrupt", f"expected an MP4 box of at least 8 bytes at byte {offset}, got size {box_size}"
            )
        if offset + box_size > size:
            kind = header[4:8].decode("latin-1")
            kind = repr(kind) if kind.isascii() and kind.isprintable() else "a"
            raise truncated(f"{kind} box at byte {offset} needs {box_size} bytes, {size - offset} remain")
        offset += box_size


def _read_vint(f: IO[bytes], *, strip_marker: bool) -> tuple[int, int, bool] | None:
    """EBML variable-length integer: (value, length, all-ones) or None at EOF / invalid."""
    first = f.read(1)
    if not first:
        return None
    b0 = first[0]
    length = next((i + 1 for i in range(8) if b0 & (0x80 >> i)), 0)
    if length == 0:
        return None
    rest = f.read(length - 1)
    if len(rest) != length - 1:
        return None
    raw = int.from_bytes(first + rest, "big")
    value = raw & ((1 << (7 * length)) - 1) if strip_marker else raw
    all_ones = (raw & ((1 << (7 * length)) - 1)) == (1 << (7 * length)) - 1
    return value, length, all_ones


def _check_matroska_segment(f: IO[bytes], size: int) -> None:
    """The EBML header, then the Segment: a known segment size must fit in the file."""
    f.seek(0)
    ident = _read_vint(f, strip_marker=False)
    header_size = _read_vint(f, strip_marker=True)
    if ident is None or header_size is None:
        raise truncated("the EBML header is cut off")
    f.seek(header_size[0], os.SEEK_CUR)
    seg_id = _read_vint(f, strip_marker=False)
    seg_size = _read_vint(f, strip_marker=True)
    if seg_id is None or seg_size is None:
        raise truncated("the Matroska segment header is cut off")
    if seg_id[0] != 0x18538067:
        raise InputError(
            "video_corrupt", f"expected a Matroska Segment after the EBML header, got element 0x{seg_id[0]:x}"
        )
    if seg_size[2]:
        return  # unknown size: live recordings (browser MediaRecorder) write this; nothing to check
    end = f.tell() + seg_size[0]
    if end > size:
        raise truncated(f"the Matroska segment announces {end} bytes, the file has {size}")
