"""``Ingress``: the HTTP API (FastAPI) in front of the model deployments.

Uploads are size-limited while they are read, decoded and validated here (header size check
before any pixel is decompressed), so a model replica only ever sees a valid BGR image. Every
error leaves as ``{"error": {"code", "message"}}`` with a stable code and a 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any, Awaitable, Callable, Literal

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.auth import ANONYMOUS, AuthMode, Client, KeySources, LiveKeys
from pipeline.errors import InputError, PoseError
from pipeline.imageio import decode_image
from pipeline.models.hmr2.predictor import validate_boxes
from pipeline.schema import SCHEMA_VERSION, ImageInfo, ImageResult, models_used, people_from_outputs

from .common import as_pose_error, error_codes_document, error_responses, unwrap_error
from .metrics import IngressMetrics
from .video import JobSettings
from .admission import Admission
from .video_api import VideoApiSettings, VideoJobs, add_video_routes
from .webpage import add_page_routes

logger = logging.getLogger(__name__)

RAW_IMAGE_TYPES = {
    "image/jpeg", "image/jpg", "image/png", "image/webp", "image/bmp", "image/tiff", "application/octet-stream",
}
# Starlette's own refusals (no route, wrong method, a body FastAPI cannot parse) in the table's words.
_STATUS_CODES = {
    400: "request_malformed", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 406: "not_acceptable",
    413: "request_too_large", 415: "unsupported_media_type", 422: "request_invalid",
}
MAX_JSON_BODY_BYTES = 64 * 1024  # a JSON request is a path, a flag and a URL: far below this


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


class IngressSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: str
    max_upload_bytes: int = 32 * 2**20
    max_pixels: int = 40_000_000
    max_people: int = 64
    auth: AuthMode = "keys"  # keys: a key is needed once any is configured; none: no authentication at all
    auth_keys_file: str | None = None  # keys file (client_id:sha256[:admin] lines); None: $auth_keys_file_env
    auth_keys_file_env: str = "POSE_SERVICE_KEYS_FILE"
    auth_keys_env: str = "POSE_SERVICE_KEYS"  # keys file entries in the variable itself
    auth_token_env: str = "POSE_SERVICE_TOKEN"  # the single bearer token of earlier releases (client "default", admin)
    # Set by the builder when the HTTP proxy listens beyond loopback: a replica that finds no key
    # on its node then refuses to start instead of serving everyone.
    require_keys: bool = False
    public_docs: bool = True  # /docs, /openapi.json and the web page /ui without the token (they hold no data)
    stage_timeout_s: float = 120.0  # one image through detector + regressor
    # An image request whose expected wait (in flight / recent rate) is past this is answered at
    # once with 503 overloaded + Retry-After (see deployments/admission.py).
    max_image_wait_s: float = 30.0
    app_info: dict[str, Any] = Field(default_factory=dict)  # resources chosen by the builder, for /v1/info

    def key_sources(self) -> KeySources:
        """Where this replica reads the client keys (its own node's environment)."""
        return KeySources(
            file=self.auth_keys_file,
            file_env=self.auth_keys_file_env,
            keys_env=self.auth_keys_env,
            token_env=self.auth_token_env,
        )


class Health(BaseModel):
    status: str
    key_required: bool = Field(description="calls other than these health checks, /docs and /ui need a client key")


# What the image route can answer besides 200.
IMAGE_ERRORS = (
    "request_malformed", "multipart_invalid", "image_missing", "image_empty", "image_unreadable", "image_truncated",
    "image_unsupported_format", "image_too_elongated", "boxes_invalid", "boxes_empty", "box_empty", "box_outside_image",
    "box_too_large", "too_many_boxes", "unauthorized", "request_too_large", "image_too_large", "unsupported_media_type",
    "request_invalid", "overloaded", "stage_unavailable", "stage_timeout",
)

_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "JPEG, PNG, WebP, BMP or TIFF"},
                        "boxes": {"type": "string", "description": "optional JSON [[x1, y1, x2, y2], ...]: skips detection"},
                    },
                }
            },
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def error_response(exc: PoseError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


def build_api(service: "Ingress") -> FastAPI:
    """The FastAPI app of one ingress replica (built at replica start, with its settings)."""
    settings = service.settings
    protected = [Depends(service.authenticate)]
    app = FastAPI(
        title="pose-service",
        version=SCHEMA_VERSION,
        description="4D-Humans (ViTDet -> HMR2.0 -> PHALP) over HTTP: people, SMPL, cameras and keypoints as JSON.",
        docs_url="/docs" if settings.public_docs else None,
        redoc_url=None,
        dependencies=[] if settings.public_docs else protected,
    )

    @app.exception_handler(PoseError)
    async def _pose_error(request: Request, exc: PoseError) -> JSONResponse:
        service.count_error(request, exc)
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

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        mapped = as_pose_error(exc)
        if mapped is None:
            logger.exception("unexpected error on %s", request.url.path)
            mapped = PoseError("internal_error", "unexpected server error (logged)", status=500)
        return await _pose_error(request, mapped)

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """The ingress is alive (no auth, no call to the models); whether other calls need a key."""
        return Health(status="ok", key_required=auth_mode(service.keys) == "keys")

    @app.get("/readyz", tags=["health"], dependencies=protected, responses=error_responses("unauthorized", "not_ready"))
    async def readyz() -> dict[str, Any]:
        """Every deployment answers (each replica has loaded its model before it answers)."""
        return await service.readiness()

    @app.get("/v1/info", tags=["info"], dependencies=protected, responses=error_responses("unauthorized"))
    async def info(caller: Client = Depends(service.authenticate)) -> dict[str, Any]:
        """Profile, models, weight checksums, devices and batch settings (and batch statistics)."""
        return await service.info(caller)

    @app.post(
        "/v1/images",
        response_model=ImageResult,
        response_model_exclude_none=False,
        tags=["images"],
        dependencies=protected,
        responses={**error_responses(*IMAGE_ERRORS), 200: {"content": {"image/png": {"description": "format=png: the overlay image"}}}},
        openapi_extra=_IMAGE_BODY,
    )
    async def images(
        request: Request,
        vertices: bool = Query(False, description="include the 6890 SMPL vertices per person"),
        boxes: str | None = Query(None, description="raw uploads: JSON [[x1, y1, x2, y2], ...]; skips detection"),
        format: Literal["json", "png"] = Query("json", description="json: the result; png: the image with the people's meshes drawn over it"),
    ) -> Response:
        """One image (multipart field ``image``, or the raw bytes) -> people with SMPL, cameras, keypoints.

        Without boxes the detector finds the people; with boxes it is skipped and ``score`` is null.
        ``format=png`` answers the overlay instead: meshes coloured and numbered by person index.
        """
        async with service.admission.admit():  # shed before the body is read
            data, form_boxes = await service.read_upload(request)
            boxes_json = form_boxes if form_boxes is not None else boxes
            if format == "png":
                return Response(await service.process_image_overlay(data, boxes_json), media_type="image/png")
            result = await service.process_image(data, boxes_json, vertices)
            return JSONResponse(result)

    add_video_routes(app, service, protected)
    if settings.public_docs:
        add_page_routes(app)
    publish_contract(app, key_required=auth_mode(service.keys) == "keys")
    return app


def _allowed_methods(request: Request) -> list[str]:
    """Every method the app's routes take on the request's path."""
    from starlette.routing import Match

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
                "bearer": {"type": "http", "scheme": "bearer", "description": "a client key (pipeline.auth)"}
            }
            for item in doc["paths"].values():
                for operation in item.values():
                    if "401" in operation.get("responses", {}):
                        operation["security"] = [{"bearer": []}]
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def replica_keys(settings: IngressSettings) -> LiveKeys | None:
    """The keys this replica checks (read from its node), None with ``auth: none``. Raises
    ``auth_required`` when the builder saw the proxy listen beyond loopback and this node has no
    key, rather than serve everyone."""
    keys = LiveKeys(settings.key_sources()) if settings.auth == "keys" else None
    if settings.require_keys and not (keys and keys.current()):
        raise PoseError(
            "auth_required",
            f"the HTTP proxy listens beyond loopback and this node has no client key: set {settings.auth_keys_file_env}, "
            f"{settings.auth_keys_env} or {settings.auth_token_env} here too",
            status=500,
        )
    if keys is None:
        logger.warning("Ingress up (profile %s): auth: none, no authentication, every caller is an admin", settings.profile)
    else:
        logger.info("Ingress up (profile %s, auth %s)", settings.profile, auth_mode(keys))
    return keys


def auth_mode(keys: LiveKeys | None) -> str:
    """For /v1/info: keys (callers need a key), loopback_only (no key configured; the builder kept
    the proxy on loopback), none (authentication turned off by the operator)."""
    if keys is None:
        return "none"
    return "keys" if keys.current() else "loopback_only"


# Many slots: waiting requests should reach the admission check (which answers 503 at once)
# rather than queue unseen in the proxy.
@serve.deployment(name="Ingress", max_ongoing_requests=256)
@serve.ingress()
class Ingress:
    """Holds the handles of the model deployments; the routes live in `build_api`."""

    def __init__(
        self,
        detector: DeploymentHandle,
        regressor: DeploymentHandle,
        settings: IngressSettings,
        video: DeploymentHandle | None = None,
        jobs: JobSettings | None = None,
        video_api: VideoApiSettings | None = None,
    ) -> None:
        self.settings = settings
        self.keys = replica_keys(settings)  # first: a replica that must not serve without keys stops here
        self.detector = detector
        self.regressor = regressor
        self.video = video
        # Video jobs need the worker and the store; without PHALP tracking the graph has neither.
        self.videos: VideoJobs | None = None
        self.videos_error: PoseError | None = None  # data_dir_unavailable: tried again on use
        self._video_args = (video, jobs, video_api or VideoApiSettings()) if video is not None and jobs is not None else None
        self._videos_retry_at = 0.0
        self.open_videos()
        self.metrics = IngressMetrics()
        self.admission = Admission(settings.max_image_wait_s)

    def open_videos(self) -> VideoJobs | None:
        """The video jobs' store, opened on first use; an unusable data folder disables video jobs
        (`data_dir_unavailable`, 503) without taking images down, and is tried again at most every
        10 s, so fixing the folder brings videos back without a restart."""
        if self.videos is not None or self._video_args is None or time.monotonic() < self._videos_retry_at:
            return self.videos
        try:
            self.videos = VideoJobs(*self._video_args)
            self.videos_error = None
        except PoseError as exc:
            if exc.code != "data_dir_unavailable":
                raise
            if self.videos_error is None:
                logger.error("%s", exc.message)
            self.videos_error = exc
            self._videos_retry_at = time.monotonic() + 10.0
        return self.videos

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = build_api(self)
        app.add_middleware(JsonBodyLimit)

        @app.middleware("http")
        async def _count(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
            started = time.perf_counter()
            response = await call_next(request)
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.inc(tags={"route": path, "status": str(response.status_code)})
            self.metrics.latency.observe(time.perf_counter() - started, tags={"route": path})
            return response

        return app

    # -- helpers used by the routes ------------------------------------------------------
    async def authenticate(self, request: Request) -> Client:
        """The client whose key the request carries (``Authorization: Bearer <key>``); 401 without one."""
        ring = self.keys.current() if self.keys is not None else None
        if not ring:
            return ANONYMOUS
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        client = ring.authenticate(value.strip()) if scheme.lower() == "bearer" and value.strip() else None
        if client is None:
            raise PoseError("unauthorized", "missing or unknown client key (Authorization: Bearer <key>)", status=401)
        return client

    def count_error(self, request: Request, exc: PoseError) -> None:
        route = request.scope.get("route")
        self.metrics.errors.inc(tags={"route": getattr(route, "path", "unmatched"), "code": exc.code})

    async def read_upload(self, request: Request) -> tuple[bytes, str | None]:
        """The image bytes (and a multipart ``boxes`` field), reading at most ``max_upload_bytes``."""
        limit = self.settings.max_upload_bytes
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "multipart/form-data" and ctype not in RAW_IMAGE_TYPES:
            raise PoseError(
                "unsupported_media_type",
                f"expected multipart/form-data or a raw image (image/jpeg, image/png, ..., application/octet-stream), got {ctype or 'no content type'!r}",
                status=415,
            )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise self._too_large(int(declared))
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise self._too_large(len(body))
        if ctype != "multipart/form-data":
            return bytes(body), None
        return await self._parse_form(request, bytes(body))

    def _too_large(self, size: int) -> PoseError:
        return PoseError(
            "request_too_large",
            f"the request body is {size} bytes or more, the limit is {self.settings.max_upload_bytes} bytes",
            status=413,
        )

    async def _parse_form(self, request: Request, body: bytes) -> tuple[bytes, str | None]:
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=4)
        except Exception as exc:  # multipart parser errors have no common base class
            raise InputError("multipart_invalid", f"the multipart body cannot be parsed: {exc}") from exc
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise InputError("image_missing", "expected the image as a file in the multipart field 'image'")
        data = await upload.read()
        boxes = form.get("boxes")
        return data, boxes if isinstance(boxes, str) else None

    async def _image_and_people(self, data: bytes, boxes_json: str | None) -> tuple[np.ndarray, Any, dict[str, str]]:
        """The decoded image, its people (client boxes, or the detector's answer still in flight)
        and the models that will have produced the result."""
        started = time.perf_counter()
        image = await asyncio.to_thread(decode_image, data, max_pixels=self.settings.max_pixels)
        self.metrics.stage.observe("decode", time.perf_counter() - started)
        if boxes_json is not None and boxes_json.strip():
            return image, self._parse_boxes(boxes_json, image.shape[:2]), models_used("mesh")
        # passed on unresolved: no round trip here
        return image, self.detector.detect.remote(image), models_used("detector", "mesh")

    async def _stage(self, call: Any) -> Any:
        started = time.perf_counter()
        try:
            answer = await asyncio.wait_for(call, self.settings.stage_timeout_s)
        except Exception as exc:
            mapped = as_pose_error(exc)
            if mapped is None:
                raise
            raise mapped from None
        self.metrics.stage.observe("image", time.perf_counter() - started)
        return answer

    async def process_image_overlay(self, data: bytes, boxes_json: str | None) -> bytes:
        """The PNG of the image with its people's meshes, drawn by the regressor replica (it
        holds the meshes and the faces)."""
        image, people, _ = await self._image_and_people(data, boxes_json)
        return await self._stage(self.regressor.overlay.remote(image, people))

    async def process_image(self, data: bytes, boxes_json: str | None, vertices: bool) -> dict[str, Any]:
        image, people, models = await self._image_and_people(data, boxes_json)
        mesh = await self._stage(self.regressor.regress.remote(image, people, vertices))
        result = ImageResult(
            image=ImageInfo(width=image.shape[1], height=image.shape[0]),
            people=people_from_outputs(mesh.output, scores=mesh.scores, vertices=vertices),
            models=models,
        )
        return result.model_dump(mode="json")

    def _parse_boxes(self, text: str, image_hw: tuple[int, int]) -> np.ndarray:
        # Four numbers a box, at most max_people boxes: anything much longer is not boxes, and
        # deep nesting must not reach the JSON parser's recursion.
        limit = 256 * self.settings.max_people
        if len(text) > limit:
            raise InputError("boxes_invalid", f"boxes must be JSON [[x1, y1, x2, y2], ...] of at most {limit} characters, got {len(text)}")
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InputError("boxes_invalid", f"boxes must be JSON [[x1, y1, x2, y2], ...]: {type(exc).__name__}") from exc
        if isinstance(value, list) and len(value) > self.settings.max_people:
            raise InputError("too_many_boxes", f"at most {self.settings.max_people} boxes per image, got {len(value)}")
        return validate_boxes(value, image_hw, allow_empty=False)

    def _stages(self) -> dict[str, DeploymentHandle]:
        stages = {"detector": self.detector, "regressor": self.regressor}
        if self.video is not None:
            stages["video"] = self.video
        return stages

    async def readiness(self) -> dict[str, Any]:
        names = list(self._stages())
        calls = [asyncio.wait_for(h.ready.remote(), 5.0) for h in self._stages().values()]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        status = {n: (a is True) for n, a in zip(names, answers)}
        if not all(status.values()):
            raise PoseError("not_ready", "some deployments are not ready", status=503, details={"deployments": status})
        return {"status": "ready", "deployments": status}

    async def info(self, caller: Client) -> dict[str, Any]:
        stages = self._stages()
        answers = await asyncio.gather(*(h.info.remote() for h in stages.values()), return_exceptions=True)
        deployments: dict[str, Any] = {}
        for name, answer in zip(stages, answers):
            deployments[name] = {"error": repr(unwrap_error(answer))} if isinstance(answer, BaseException) else answer
        info = {
            "schema_version": SCHEMA_VERSION,
            "profile": self.settings.profile,
            "limits": {
                "max_upload_bytes": self.settings.max_upload_bytes,
                "max_pixels": self.settings.max_pixels,
                "max_people": self.settings.max_people,
            },
            "load": {"images": self.admission.stats()},  # this Ingress replica's
            "auth": auth_mode(self.keys),
            "caller": {"client": caller.id, "admin": caller.admin},
            "videos": ({"error": self.videos_error.to_dict()["error"]} if self.videos_error is not None else None)
            if self.videos is None
            else {
                "max_active": self.videos.jobs.max_active,
                "max_queued": self.videos.jobs.max_queued,
                "retention_s": self.videos.jobs.retention_s,
                "video_limits": self.videos.jobs.video_limits.model_dump(),
                "pose_video_route": self.videos.media_root is not None,
                # the data folder's budget (pipeline.disk): the figures of the server's disk, for admins
                "disk": await asyncio.to_thread(self.videos.disk.report) if caller.admin else None,
            },
            "resources": self.settings.app_info,
            "ingress": {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()},
            "deployments": deployments,
        }
        return json.loads(json.dumps(info, default=str))  # devices, dtypes and paths as text
