"""``POST /v1/images``: one image (multipart or raw bytes) -> its people, answered at once;
several multipart ``image`` fields -> ``{"images": [...]}``, one entry per image in order.

The upload is size-limited while it is read (the whole request, however many images), decoded
and validated here (header size check before any pixel is decompressed), so the models only
ever see a valid BGR image. The images of one request go to the models concurrently, so their
person crops share the MeshRegressor's batches.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Awaitable, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from pipeline.errors import InputError, PoseError
from pipeline.imageio import decode_image
from pipeline.models.hmr2.predictor import validate_boxes
from pipeline.schema import ImageInfo, ImageResult, models_used, people_from_outputs
from service.api.context import ApiContext
from service.api.errors import ErrorBody, error_responses

RAW_IMAGE_TYPES = {
    "image/jpeg", "image/jpg", "image/png", "image/webp", "image/bmp", "image/tiff", "application/octet-stream",
}

# What the image route can answer besides 200.
IMAGE_ERRORS = (
    "request_malformed", "multipart_invalid", "image_missing", "image_empty", "image_unreadable", "image_truncated",
    "image_unsupported_format", "image_too_elongated", "boxes_invalid", "boxes_empty", "box_empty", "box_outside_image",
    "box_too_large", "too_many_boxes", "unauthorized", "request_too_large", "image_too_large", "unsupported_media_type",
    "request_invalid", "overloaded", "stage_unavailable", "stage_timeout", "too_many_images",
)


class ImageError(BaseModel):
    """An image of a several-image request that could not be processed (the others were)."""

    error: ErrorBody


class ImageBatchResult(BaseModel):
    """The answer to several ``image`` fields: one entry per image, in the request's order."""

    images: list[ImageResult | ImageError] = Field(description="the image's result, or its error (the codes of a one-image answer)")

_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                            "description": "JPEG, PNG, WebP, BMP or TIFF; repeat the field for several images "
                            "(at most limits.max_images_per_request, all within limits.max_upload_bytes): "
                            "the answer is then {\"images\": [...]}",
                        },
                        "boxes": {"type": "string", "description": "optional JSON [[x1, y1, x2, y2], ...] (one image): skips detection"},
                    },
                }
            },
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def add_image_routes(app: FastAPI, ctx: ApiContext, protected: list[Any]) -> None:
    """``POST /v1/images``."""

    @app.post(
        "/v1/images",
        response_model=ImageResult | ImageBatchResult,  # documents both answers (the route returns its own Response)
        response_model_exclude_none=False,
        tags=["images"],
        dependencies=protected,
        responses={
            **error_responses(*IMAGE_ERRORS),
            200: {
                "description": "one image: its `ImageResult`; several `image` fields: `ImageBatchResult`, "
                "an entry per image in order (an image that fails carries its error, the others their result)",
                "content": {"image/png": {"description": "format=png: the overlay image"}},
            },
        },
        openapi_extra=_IMAGE_BODY,
    )
    async def images(
        request: Request,
        vertices: bool = Query(False, description="include the 6890 SMPL vertices per person"),
        boxes: str | None = Query(None, description="raw uploads: JSON [[x1, y1, x2, y2], ...]; skips detection"),
        format: Literal["json", "png"] = Query("json", description="json: the result; png: the image with the people's meshes drawn over it"),
        side_view: bool = Query(False, description="format=png: a panel beside the image with each person turned 90 degrees (the PNG is twice as wide)"),
    ) -> Response:
        """One image (multipart field ``image``, or the raw bytes) -> people with SMPL, cameras, keypoints.

        Without boxes the detector finds the people; with boxes it is skipped and ``score`` is null.
        ``format=png`` answers the overlay instead: meshes coloured and numbered by person index,
        with ``side_view=true`` a side panel beside it.

        Several ``image`` fields (at most ``limits.max_images_per_request``, ``too_many_images``
        beyond; all of them within ``limits.max_upload_bytes``) answer ``{"images": [...]}``: per
        image, in order, its result or ``{"error": {...}}`` with the code its one-image request
        would have answered; the images are regressed together. JSON only, no boxes.
        """
        # Shed before the body is read, but count the request against the capacity only once its
        # body is in: a slow client holds no share of the models while it uploads.
        ctx.admission.check()
        uploads, form_boxes = await read_upload(ctx, request)
        async with ctx.admission.admit():
            boxes_json = form_boxes if form_boxes is not None else boxes
            if len(uploads) > 1:
                if format == "png" or (boxes_json is not None and boxes_json.strip()):
                    raise InputError(
                        "request_invalid",
                        f"several images ({len(uploads)}) are answered as JSON without boxes: format=png and boxes take one image",
                        status=422,
                    )
                return JSONResponse(await process_images(ctx, uploads, vertices))
            data = uploads[0]
            if format == "png":
                return Response(await process_image_overlay(ctx, data, boxes_json, side_view), media_type="image/png")
            result = await process_image(ctx, data, boxes_json, vertices)
            return JSONResponse(result)


async def read_upload(ctx: ApiContext, request: Request) -> tuple[list[bytes], str | None]:
    """The images' bytes, in order (a raw upload: one), and a multipart ``boxes`` field, reading
    at most ``max_upload_bytes`` in all and at most ``max_images_per_request`` image fields."""
    limit = ctx.settings.max_upload_bytes
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data" and ctype not in RAW_IMAGE_TYPES:
        raise PoseError(
            "unsupported_media_type",
            f"expected multipart/form-data or a raw image (image/jpeg, image/png, ..., application/octet-stream), got {ctype or 'no content type'!r}",
            status=415,
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(ctx, int(declared))
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise _too_large(ctx, len(body))
    if ctype != "multipart/form-data":
        return [bytes(body)], None
    return await _parse_form(ctx, request, bytes(body))


def _too_large(ctx: ApiContext, size: int) -> PoseError:
    return PoseError(
        "request_too_large",
        f"the request body is {size} bytes or more, the limit is {ctx.settings.max_upload_bytes} bytes",
        status=413,
    )


async def _parse_form(ctx: ApiContext, request: Request, body: bytes) -> tuple[list[bytes], str | None]:
    sent = False
    limit = ctx.settings.max_images_per_request

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        # one file over the limit is parsed, so that a request with too many is told so
        form = await Request(request.scope, replay).form(max_files=limit + 1, max_fields=4)
    except Exception as exc:  # multipart parser errors have no common base class
        if "too many files" in str(exc).lower():
            raise _too_many(limit, None) from None
        raise InputError("multipart_invalid", f"the multipart body cannot be parsed: {exc}") from exc
    fields = form.getlist("image")
    files = [f for f in fields if not isinstance(f, str)]
    if not files or len(files) != len(fields):
        raise InputError("image_missing", "expected the image as a file in the multipart field 'image'")
    if len(files) > limit:
        raise _too_many(limit, len(files))
    data = [await f.read() for f in files]
    boxes = form.get("boxes")
    return data, boxes if isinstance(boxes, str) else None


def _too_many(limit: int, count: int | None) -> PoseError:
    got = "more" if count is None else str(count)
    return PoseError("too_many_images", f"at most {limit} images per request (limits.max_images_per_request), got {got}", status=413)


async def _image_and_boxes(ctx: ApiContext, data: bytes, boxes_json: str | None) -> tuple[np.ndarray, np.ndarray | None, dict[str, str]]:
    """The decoded image, the client's boxes (None: the detector finds the people) and the
    models that will have produced the result."""
    started = time.perf_counter()
    image = await asyncio.to_thread(decode_image, data, max_pixels=ctx.settings.max_pixels)
    ctx.metrics.stage("decode", time.perf_counter() - started)
    if boxes_json is not None and boxes_json.strip():
        return image, _parse_boxes(ctx, boxes_json, image.shape[:2]), models_used("mesh")
    return image, None, models_used("detector", "mesh", detector=ctx.settings.detector)


async def _stage(ctx: ApiContext, call: Awaitable[Any]) -> Any:
    started = time.perf_counter()
    try:
        answer = await asyncio.wait_for(call, ctx.settings.stage_timeout_s)
    except Exception as exc:
        mapped = ctx.backend.map_error(exc)
        if mapped is None:
            raise
        raise mapped from None
    ctx.metrics.stage("image", time.perf_counter() - started)
    return answer


async def process_image_overlay(ctx: ApiContext, data: bytes, boxes_json: str | None, side_view: bool = False) -> bytes:
    """The PNG of the image with its people's meshes (``side_view``: and the side panel): the
    regressor's answer, drawn by the host's renderer."""
    image, boxes, _ = await _image_and_boxes(ctx, data, boxes_json)
    return await _stage(ctx, ctx.backend.overlay(image, boxes, side_view))


async def process_image(ctx: ApiContext, data: bytes, boxes_json: str | None, vertices: bool) -> dict[str, Any]:
    image, boxes, models = await _image_and_boxes(ctx, data, boxes_json)
    mesh = await _stage(ctx, ctx.backend.regress(image, boxes, vertices))
    result = ImageResult(
        image=ImageInfo(width=image.shape[1], height=image.shape[0]),
        people=people_from_outputs(mesh.output, scores=mesh.scores, vertices=vertices),
        models=models,
    )
    return result.model_dump(mode="json")


async def process_images(ctx: ApiContext, uploads: list[bytes], vertices: bool) -> dict[str, Any]:
    """``{"images": [...]}``: every image at once (their crops reach the MeshRegressor together
    and share its batches); an image refused for its own content (a 4xx) gets its error entry,
    a failure of the service (a stage gone, a timeout) answers the whole request."""

    async def one(data: bytes) -> dict[str, Any]:
        try:
            return await process_image(ctx, data, None, vertices)
        except PoseError as exc:
            if exc.status >= 500:
                raise
            ctx.metrics.error("/v1/images", exc.code)  # as the route's own errors are counted
            return exc.to_dict()

    return {"images": list(await asyncio.gather(*(one(d) for d in uploads)))}


def _parse_boxes(ctx: ApiContext, text: str, image_hw: tuple[int, int]) -> np.ndarray:
    # Four numbers a box, at most max_people boxes: anything much longer is not boxes, and
    # deep nesting must not reach the JSON parser's recursion.
    limit = 256 * ctx.settings.max_people
    if len(text) > limit:
        raise InputError("boxes_invalid", f"boxes must be JSON [[x1, y1, x2, y2], ...] of at most {limit} characters, got {len(text)}")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InputError("boxes_invalid", f"boxes must be JSON [[x1, y1, x2, y2], ...]: {type(exc).__name__}") from exc
    if isinstance(value, list) and len(value) > ctx.settings.max_people:
        raise InputError("too_many_boxes", f"at most {ctx.settings.max_people} boxes per image, got {len(value)}")
    return validate_boxes(value, image_hw, allow_empty=False)
