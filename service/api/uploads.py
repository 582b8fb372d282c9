"""Uploads streamed to disk as they arrive: a raw body or the one file part of a multipart form
(python-multipart's push parser, fed chunk by chunk: the form is never held in memory, as
Starlette's ``request.form()`` would spool it), with the size limit and the disk budget enforced
before a byte past them is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Awaitable, Callable, cast

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from pipeline.errors import InputError, PoseError
from service.jobs.usage import ClientBytes

RAW_VIDEO_TYPES = {
    "video/mp4", "video/quicktime", "video/x-matroska", "video/webm", "video/x-msvideo", "video/avi",
    "application/octet-stream",
}
_FORM_FIELD_BYTES = 4096  # a text field of the upload form (options, callback URL)
MULTIPART_SLACK = 64 * 1024  # multipart framing and text fields on top of the video's own limit
# An upload holds its disk room in the job store (`service.jobs.usage.hold_upload`): all of its
# declared length at once; without one, FIRST_HOLD, then as much again as has arrived (at most
# HOLD_STEP more) each time it outgrows its hold, and near a full disk just what has arrived. The
# hold is taken again (renewed) every HOLD_STEP bytes and lapses HOLD_S after, so a crashed
# Ingress's holds free themselves (at the slowest rate the limits assume, HOLD_STEP takes under
# a minute).
FIRST_HOLD = 2**20
HOLD_STEP = 64 * 2**20
HOLD_S = 600.0


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
    *,
    hold: Callable[[int], Awaitable[None]] | None = None,
    client: ClientBytes | None = None,
) -> dict[str, str]:
    """The video of a multipart (field ``video``) or raw request body, streamed to ``dest``;
    returns the text fields. Raises 413 past ``limit`` bytes, 415 for other content types, and
    507 before writing past a bound: ``storage_full`` when ``hold(n)`` cannot hold the room for
    ``n`` bytes (see HOLD_STEP), ``client_storage_limit`` past what ``client``'s bytes limit leaves."""
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
    if client is not None:
        client.check(declared_size or 0)
    held = declared_size if declared_size is not None else min(limit, FIRST_HOLD)
    if hold is not None:
        await hold(held)
    received, renew_at = 0, HOLD_STEP

    async def count(chunk: bytes) -> None:
        nonlocal received, held, renew_at
        received += len(chunk)
        if received > limit:
            raise _too_large(received, limit)
        if client is not None:
            client.check(received)
        if hold is None or (received <= held and received < renew_at):
            return
        renew_at = received + HOLD_STEP
        if received <= held:  # renewed
            await hold(held)
            return
        grown = min(limit, received + min(HOLD_STEP, max(FIRST_HOLD, received)))  # outgrown: no declared length
        try:
            await hold(grown)
        except PoseError as exc:
            if exc.code != "storage_full":
                raise
            await hold(received)  # what has arrived may still fit: held chunk by chunk from here
            grown = received
        held = grown

    if kind != "multipart/form-data":
        with open(dest, "wb") as f:
            async for chunk in request.stream():
                await count(chunk)
                f.write(chunk)
        return {}
    return await _stream_multipart(request, ctype, dest, count)


async def _stream_multipart(request: Request, ctype: str, dest: Path, count: Any) -> dict[str, str]:
    _, params = parse_options_header(ctype)
    boundary = params.get(b"boundary")
    if not boundary:
        raise InputError("multipart_invalid", "multipart/form-data without a boundary")
    sink = _FormSink(dest)
    try:
        parser = MultipartParser(boundary, cast(Any, sink.callbacks()))  # a TypedDict of callbacks in its stubs
        async for chunk in request.stream():
            await count(chunk)
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
