"""``Ingress``: serves the service's HTTP API (`service.api.app.build_app`) and is its model
backend: the images go to the ``Detector`` and ``MeshRegressor`` deployments (and, drawn, to the
``Renderer``), video jobs are nudged to the ``Tracker`` workers, Ray's failures become stable
error codes."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import numpy as np
import ray
from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from pipeline.errors import PoseError
from service.api.app import build_app
from service.api.backend import MeshAnswer
from service.api.context import ApiContext
from service.settings import ApiSettings, JobSettings, VideoApiSettings

from .common import alive_nodes, as_pose_error, cancelled_request, route_logs_to_serve, unwrap_error
from .metrics import IngressMetrics


class RayMetrics:
    """`service.api.backend.ApiMetrics` on Ray's metrics (the dashboard and Prometheus show them)."""

    def __init__(self) -> None:
        self.metrics = IngressMetrics()

    def request(self, route: str, status: int, seconds: float) -> None:
        self.metrics.requests.inc(tags={"route": route, "status": str(status)})
        self.metrics.latency.observe(seconds, tags={"route": route})

    def error(self, route: str, code: str) -> None:
        self.metrics.errors.inc(tags={"route": route, "code": code})

    def stage(self, name: str, seconds: float) -> None:
        self.metrics.stage.observe(name, seconds)


# Many slots: waiting requests should reach the admission check (which answers 503 at once)
# rather than queue unseen in the proxy.
@serve.deployment(name="Ingress", max_ongoing_requests=256)
@serve.ingress()
class Ingress:
    """Holds the handles of the model deployments; the routes live in `service.api`."""

    def __init__(
        self,
        detector: DeploymentHandle,
        regressor: DeploymentHandle,
        settings: ApiSettings,
        tracker: DeploymentHandle | None = None,
        jobs: JobSettings | None = None,
        video_api: VideoApiSettings | None = None,
        renderer: DeploymentHandle | None = None,
    ) -> None:
        route_logs_to_serve()
        self.detector = detector
        self.regressor = regressor
        self.tracker = tracker
        self.renderer = renderer
        self.api = ApiContext(settings, self, RayMetrics(), jobs, video_api)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_app(self.api)

    # -- service.api.backend.ModelBackend ------------------------------------------------
    async def regress(self, image: np.ndarray, boxes: np.ndarray | None, vertices: bool) -> MeshAnswer:
        # the detector's answer is passed on unresolved: no round trip through here
        people = boxes if boxes is not None else self.detector.detect.remote(image)
        return await self.regressor.regress.remote(image, people, vertices)

    async def overlay(self, image: np.ndarray, boxes: np.ndarray | None, side_view: bool = False) -> bytes:
        """The MeshRegressor's answer goes straight to the Renderer, which draws it; the image
        is put in the object store once for the three calls."""
        if self.renderer is None:
            raise PoseError("stage_unavailable", "this deployment has no Renderer to draw overlays", status=503)
        ref = ray.put(image)
        people = boxes if boxes is not None else self.detector.detect.remote(ref)
        mesh = self.regressor.regress.remote(ref, people, True)
        return await self.renderer.draw.remote(ref, mesh, side_view)

    def _stages(self) -> dict[str, DeploymentHandle]:
        stages = {"detector": self.detector, "regressor": self.regressor}
        if self.tracker is not None:
            stages["tracker"] = self.tracker
        if self.renderer is not None:
            stages["renderer"] = self.renderer
        return stages

    async def readiness(self) -> dict[str, bool]:
        stages = self._stages()
        calls = [asyncio.wait_for(h.ready.remote(), 5.0) for h in stages.values()]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        return {n: (a is True) for n, a in zip(stages, answers)}

    async def stages_info(self) -> dict[str, Any]:
        stages = self._stages()
        answers = await asyncio.gather(*(h.info.remote() for h in stages.values()), return_exceptions=True)
        out: dict[str, Any] = {}
        for name, answer in zip(stages, answers):
            out[name] = {"error": repr(unwrap_error(answer))} if isinstance(answer, BaseException) else answer
        return out

    def host_info(self) -> dict[str, Any]:
        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def cluster_nodes(self) -> int:
        return alive_nodes()

    def has_video_worker(self) -> bool:
        return self.tracker is not None

    def wake_worker(self) -> None:
        if self.tracker is not None:
            self.tracker.wake.remote()

    def map_error(self, exc: BaseException) -> PoseError | None:
        if cancelled_request(exc):
            return PoseError("client_disconnected", "the client closed the connection before the answer", status=499)
        return as_pose_error(exc)
