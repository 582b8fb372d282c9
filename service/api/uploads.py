"""Uploads streamed to disk as they arrive: a raw body or the one file part of a multipart form
(python-multipart's push parser, fed chunk by chunk: the form is never held in memory, as
Starlette's ``request.form()`` would spool it), with the size limit and the disk budget enforced
before a byte past them is written."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from pipeline.errors import InputError, PoseError
from service.disk import DiskBudget
from service.jobs.usage import ClientBytes

RAW_VIDEO_TYPES = {
    "video/mp4", "video/quicktime", "video/x-matroska", "video/webm", "video/x-msvideo", "video/avi",
    "application/octet-stream",
}
_FORM_FIELD_BYTES = 4096  # a text field of the upload form (options, callback URL)
MULTIPART_SLACK = 64 * 1024  # multipart framing and text fields on top of the video's own limit


class _FormSink:
    """python-multipart callbacks: the one file part goes to disk, text fields are kept (small)."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.file: Any = None
        self.got_file = False
        self.fields: dict[str, str] = {}
        self.error: PoseError | None = None
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._name: str | None = None
        self._is_file = False
        self._text = bytearray()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._add(d, s, e, "_field"),
            "on_header_value": lambda d, s, e: self._add(d, s, e, "_value"),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
        }

    def _add(self, data: bytes, start: int, end: int, attr: str) -> None:
        setattr(self, attr, getattr(self, attr) + data[start:end])

    def _part_begin(self) -> None:
        self._headers, self._name, self._is_file, self._text = {}, None, False, bytearray()

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_done(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        self._is_file = b"filename" in params or self._name == "video"
        if self._is_file:
            if self.got_file or self._name != "video":
                self.error = InputError(
                    "multipart_invalid", f"expected one file, in the field 'video', got a file in {self._name!r}"
                )
                return
            self.got_file = True
            self.file = open(self.dest, "wb")  # noqa: SIM115 - closed by close()

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        if self._is_file:
            self.file.write(data[start:end])
            return
        self._text += data[start:end]
        if len(self._text) > _FORM_FIELD_BYTES:
            self.error = InputError("multipart_invalid", f"form field {self._name!r} is over {_FORM_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._is_file:
            self.close()
        elif self._name and self.error is None:
            self.fields[self._name] = self._text.decode("utf-8", "replace")


async def stream_upload(
    request: Request,
    dest: Path,
    limit: int,
    disk: DiskBudget | None = None,
    *,
    reserved: int = 0,
    client: ClientBytes | None = None,
) -> dict[str, str]:
    """The video of a multipart (field ``video``) or raw request body, streamed to ``dest``;
    returns the text fields. Raises 413 past ``limit`` bytes, 415 for other content types, and
    507 before writing past a bound: ``storage_full`` past the room ``disk`` leaves once
    ``reserved`` bytes (what accepted jobs have still to write) are set aside,
    ``client_storage_limit`` past what ``client``'s bytes limit leaves."""
    ctype = request.headers.get("content-type", "")
    kind = ctype.split(";")[0].strip().lower()
    if kind != "multipart/form-data" and kind not in RAW_VIDEO_TYPES:
        raise PoseError(
            "unsupported_media_type",
            f"expected multipart/form-data (field 'video') or a raw video body (video/mp4, ..., "
            f"application/octet-stream), got {kind or 'no content type'!r}",
            status=415,
        )
    declared = request.headers.get("content-length")
    declared_size = int(declared) if declared is not None and declared.isdigit() else None
    if declared_size is not None and declared_size > limit:
        raise _too_large(declared_size, limit)
    room = None
    if disk is not None:
        room = max(0, await asyncio.to_thread(disk.room) - reserved)
        disk.check(declared_size or 0, room)
    if client is not None:
        client.check(declared_size or 0)
    received = charged = 0

    def count(chunk: bytes) -> None:
        nonlocal received, charged
        received += len(chunk)
        if received > limit:
            raise _too_large(received, limit)
        if client is not None:
            client.check(received)
        if disk is not None and room is not None:
            if received > room:
                raise disk.full(received, room)
            disk.charge(len(chunk))  # seen at once by uploads that start meanwhile
            charged += len(chunk)

    try:
        if kind != "multipart/form-data":
            with open(dest, "wb") as f:
                async for chunk in request.stream():
                    count(chunk)
                    f.write(chunk)
            return {}
        return await _stream_multipart(request, ctype, dest, count)
    except BaseException:
        if disk is not None:  # the caller deletes a refused upload: its bytes are free again
            disk.charge(-charged)
        raise


async def _stream_multipart(request: Request, ctype: str, dest: Path, count: Any) -> dict[str, str]:
    _, params = parse_options_header(ctype)
    boundary = params.get(b"boundary")
    if not boundary:
        raise InputError("multipart_invalid", "multipart/form-data without a boundary")
    sink = _FormSink(dest)
    try:
        parser = MultipartParser(boundary, cast(Any, sink.callbacks()))  # a TypedDict of callbacks in its stubs
        async for chunk in request.stream():
            count(chunk)
            parser.write(chunk)
            if sink.error is not None:
                raise sink.error
        parser.finalize()
    except PoseError:
        raise
    except Exception as exc:  # the parser's errors have no common base class
        raise InputError("multipart_invalid", f"the multipart body cannot be parsed: {exc}") from exc
    finally:
        sink.close()
    if not sink.got_file:
        raise InputError("video_missing", "expected the video as a file in the multipart field 'video'")
    return sink.fields


def _too_large(size: int, limit: int) -> PoseError:
    return PoseError(
        "request_too_large",
        f"the request body is {size} bytes or more, the limit is {limit} bytes",
        status=413,
        details={"max_bytes": limit},
    )


def form_flag(value: str | bool | None, name: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise InputError("request_invalid", f"{name}: expected true or false, got {value!r}", status=422)
