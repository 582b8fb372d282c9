"""File answers: attachments, and files served with byte ranges (a browser ``<video>`` seeks with them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, MutableMapping

from fastapi.responses import FileResponse, JSONResponse, Response

from pipeline.errors import PoseError


def attachment(filename: str) -> dict[str, str]:
    return {"content-disposition": f'attachment; filename="{filename}"'}


class _RangedFile(FileResponse):
    """Starlette's `FileResponse` (which answers ``Range`` requests: 206 with ``Content-Range``,
    multipart byte ranges, ``If-Range``) with its two refusals as our JSON errors: 416
    ``range_not_satisfiable`` (keeping ``Content-Range: bytes */size``) and 400 ``range_invalid``."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        refused: dict[str, Any] = {}

        async def relay(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] in (400, 416):
                refused.update(message)
                return
            if refused:  # the refusal's own plain-text body
                return
            await send(message)

        await super().__call__(scope, receive, relay)
        if refused:
            status = refused["status"]
            headers = {k.decode(): v.decode() for k, v in refused.get("headers", []) if k.lower() == b"content-range"}
            if status == 416:
                err = PoseError("range_not_satisfiable", f"the range {_range_of(scope)!r} starts past the end of the file", status=416)
            else:
                err = PoseError("range_invalid", f"expected a byte range such as bytes=0-1023, got {_range_of(scope)!r}", status=400)
            await JSONResponse(err.to_dict(), status_code=status, headers=headers)(scope, receive, send)


def _range_of(scope: Any) -> str:
    return dict(scope.get("headers") or []).get(b"range", b"").decode("latin-1")[:100]


def ranged_file_response(path: Path, media_type: str) -> Response:
    """A file served with byte ranges, so a browser ``<video>`` can seek in it."""
    return _RangedFile(path, media_type=media_type)
