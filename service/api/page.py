"""The web page: a plain HTML/CSS/JavaScript client of the public API, served by the Ingress.

The files hold no data and no key, so they are served like ``/docs`` (public unless
``public_docs`` is off); every call the page makes carries the key a person typed in, kept in
the browser's session storage. A fixed set of files is served, never a path taken from the URL.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response

from pipeline.errors import PoseError

WEB_DIR = Path(__file__).with_name("web")
# name -> media type: the only files the page routes answer
PAGE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
# Scripts and styles from these files only; media from the API or from blobs the page fetched
# with the key; no framing by other sites.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
        "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_page_routes(app: FastAPI) -> None:
    """``/`` and ``/ui`` lead to the page; ``/ui/<file>`` answers the page's own files."""

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse("/ui/", status_code=307)

    @app.get("/ui", include_in_schema=False)
    async def ui_slash() -> Response:
        return RedirectResponse("/ui/", status_code=307)

    @app.get("/ui/", include_in_schema=False)
    async def ui_index() -> Response:
        return _file("index.html")

    @app.get("/ui/{name}", include_in_schema=False)
    async def ui_file(name: str) -> Response:
        return _file(name)


def _file(name: str) -> Response:
    media = PAGE_FILES.get(name)
    if media is None:  # not a page file: the API's usual JSON 404
        raise PoseError("not_found", f"no page file {name!r}", status=404)
    return Response((WEB_DIR / name).read_bytes(), media_type=media, headers=_HEADERS)
