"""The web page: a plain HTML/CSS/JavaScript client of the public API, served by the Ingress.

The files hold no data and no key, so they are served like ``/docs`` (public unless
``public_docs`` is off); every call the page makes carries the key a person typed in, kept in
the browser's session storage. A fixed set of files is served, never a path taken from the URL.

The 3D view uses ``@google/model-viewer`` (one ES module with three.js bundled, shipped in
``web/vendor/``: version, digest and licences in its README), loaded by the page on first use.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from pipeline.errors import PoseError

WEB_DIR = Path(__file__).with_name("web")
# name -> media type: the only files the page routes answer
PAGE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
    "vendor/model-viewer.min.js": "text/javascript; charset=utf-8",
}
# The one <style> block of <model-viewer>'s shadow DOM (its layout: canvas, slots), allowed by
# its digest; tests/test_web_page.py recomputes it from the shipped module.
VIEWER_STYLE_SHA256 = "PXtZZkJMMyc18o/DN1ZEFOJ2qEGq95IQbVaJFMOXOb0="
# Scripts and styles from these files only; media from the API or from blobs the page fetched
# with the key; no framing by other sites. Three allowances for the 3D view, each no wider than
# it needs: connect-src blob: (the page fetches a track's GLB with the key and hands the viewer
# a blob: URL, which three.js's loader reads with fetch()); the viewer's own <style> block, by
# hash (no 'unsafe-inline'); 'wasm-unsafe-eval' (the bundled meshopt decoder compiles its
# WebAssembly when the module loads; JavaScript eval stays blocked).
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; "
        f"style-src 'self' 'sha256-{VIEWER_STYLE_SHA256}'; img-src 'self' blob:; media-src 'self' blob:; "
        "connect-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
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
    async def ui_index(request: Request) -> Response:
        return _file("index.html", request)

    @app.get("/ui/{name:path}", include_in_schema=False)
    async def ui_file(name: str, request: Request) -> Response:
        return _file(name, request)


def _file(name: str, request: Request) -> Response:
    """A page file, revalidated on every use (``no-cache``) by its ETag: an unchanged file is a
    304 without a body (the viewer's module is a megabyte)."""
    media = PAGE_FILES.get(name)
    if media is None:  # not a page file: the API's usual JSON 404
        raise PoseError("not_found", f"no page file {name!r}", status=404)
    data = (WEB_DIR / name).read_bytes()
    etag = f'"{hashlib.sha256(data).hexdigest()[:32]}"'
    headers = {**_HEADERS, "ETag": etag}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media, headers=headers)
