"""Errors as the API answers them: ``{"error": {"code", "message", "details"}}`` with the status
of the one table (`pipeline.errors.CODES`), whatever raised them (our own `PoseError`, FastAPI's
validation, Starlette's routing, or an unexpected exception), and that table published in the
OpenAPI document."""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from pipeline.errors import CODES, PoseError, codes_by_status

logger = logging.getLogger(__name__)

# Starlette's own refusals (no route, wrong method, a body FastAPI cannot parse) in the table's words.
_STATUS_CODES = {
    400: "request_malformed", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 406: "not_acceptable",
    413: "request_too_large", 415: "unsupported_media_type", 422: "request_invalid",
}
MAX_JSON_BODY_BYTES = 64 * 1024  # a JSON request is a path, a flag and a URL: far below this

# Maps an exception the host raised (e.g. a model replica that died) to a stable code; None: not its.
ErrorMapper = Callable[[BaseException], "PoseError | None"]


class ErrorBody(BaseModel):
    code: str = Field(description="stable, machine-readable: one of x-error-codes", json_schema_extra={"enum": list[Any](sorted(CODES))})
    message: str = Field(description="for humans")
    details: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    """Every error answer of the API: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorBody


def error_responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route that can answer ``codes``: one entry per status,
    listing its codes with their meanings from the one table (`pipeline.errors.CODES`)."""
    return {
        status: {
            "model": ErrorResponse,
            "description": "; ".join(f"`{code}`: {CODES[code].meaning}" for code in group),
        }
        for status, group in codes_by_status(dict.fromkeys(codes)).items()
    }


def error_codes_document() -> dict[str, dict[str, Any]]:
    """The table as the OpenAPI document's ``x-error-codes``: code -> status, meaning, retry."""
    return {code: {"status": e.status, "meaning": e.meaning, "retry": e.retry} for code, e in sorted(CODES.items())}


def error_response(exc: PoseError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


def add_error_handlers(
    app: FastAPI, *, on_error: Callable[[Request, PoseError], None], map_error: ErrorMapper
) -> None:
    """Every failure of ``app`` answered as a JSON error; ``on_error`` counts each one."""

    @app.exception_handler(PoseError)
    async def _pose_error(request: Request, exc: PoseError) -> JSONResponse:
        on_error(request, exc)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.status in (429, 503, 507):
            headers = {"Retry-After": str(int(exc.details.get("retry_after", 1)))}
        return error_response(exc, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        err = PoseError("request_invalid", f"{where}: {first.get('msg', 'invalid request')}", status=422)
        return await _pose_error(request, err)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, PoseError):  # raised while FastAPI read the body (JsonBodyLimit)
            return await _pose_error(request, exc.__cause__)
        code = _STATUS_CODES.get(exc.status_code, "request_malformed" if exc.status_code < 500 else "internal_error")
        err = PoseError(code, str(exc.detail), status=exc.status_code)
        response = await _pose_error(request, err)
        for name, value in (exc.headers or {}).items():
            response.headers.setdefault(name, value)
        if exc.status_code == 405:  # Starlette names the methods of the first route of the path only
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A client that hung up (Starlette's ClientDisconnect in process; the host maps its own
        # form of it, e.g. Serve cancelling the request) is not a failure of the service: the
        # answer is never sent, and the metric counts it under its own code.
        mapped = PoseError("client_disconnected", "the client closed the connection", status=499) if isinstance(exc, ClientDisconnect) else map_error(exc)
        if mapped is not None and mapped.code == "client_disconnected":
            logger.info("client disconnected during %s %s", request.method, request.url.path)
        if mapped is None:
            logger.exception("unexpected error on %s", request.url.path)
            mapped = PoseError("internal_error", "unexpected server error (logged)", status=500)
        return await _pose_error(request, mapped)


def _allowed_methods(request: Request) -> list[str]:
    """Every method the app's routes take on the request's path."""
    methods: set[str] = set()
    for route in request.app.routes:
        if getattr(route, "methods", None) and route.matches(request.scope)[0] != Match.NONE:
            methods |= set(route.methods)
    return sorted(methods)


def publish_contract(app: FastAPI, key_required: bool) -> None:
    """What FastAPI cannot say by itself in the OpenAPI document: the whole error table
    (``x-error-codes``) and, when keys are on, the bearer scheme of every route that answers 401
    (so clients, /docs and fuzzers know which calls need the key)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        doc = generate()  # FastAPI builds it once and caches it
        if "x-error-codes" in doc:
            return doc
        doc["x-error-codes"] = error_codes_document()
        if key_required:
            doc.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a client key (service.auth)"}
            }
            for item in doc["paths"].values():
                for operation in item.values():
                    if "401" in operation.get("responses", {}):
                        operation["security"] = [{"bearer": []}]
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


class JsonBodyLimit:
    """ASGI middleware: a JSON request body past ``limit`` bytes is refused (413) as it arrives,
    before anything parses it, whether or not it declared its length."""

    def __init__(self, app: Any, limit: int = MAX_JSON_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Any) -> None:
        if scope["type"] != "http" or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        received = 0

        async def limited() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _json_too_large(received, self.limit)
            return message

        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            async def refuse() -> dict[str, Any]:
                raise _json_too_large(int(declared), self.limit)

            await self.app(scope, refuse, send)
            return
        await self.app(scope, limited, send)


def _is_json(scope: dict[str, Any]) -> bool:
    ctype = dict(scope.get("headers") or []).get(b"content-type", b"")
    return ctype.split(b";")[0].strip().lower().endswith(b"json")


def _json_too_large(size: int, limit: int) -> PoseError:
    return PoseError("request_too_large", f"the JSON body is {size} bytes or more, the limit is {limit} bytes", status=413)
