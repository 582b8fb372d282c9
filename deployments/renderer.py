"""``Renderer``: the overlays, apart from the models and the video workers. It holds the
rasterizer (`pipeline.render.overlay`) and the SMPL model it rebuilds meshes with, and draws

* a video job's overlay MP4, from the input video and the job's finalized result files on the
  shared data folder (paths passed in), written atomically at the path it is given; the Tracker
  asks for it after the job has succeeded, so a failure here never touches the job's result;
* the PNG of ``POST /v1/images?format=png``, from the MeshRegressor's HMR2 outputs (with
  vertices), exactly as the regressor drew it before the Renderer existed.

Its own share of the GPU and its own replicas: a long render never holds up the models."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from pipeline.video.decode import VideoLimits
from service.settings import ModelSettings

from .common import start_info
from .regressor import MeshResult

logger = logging.getLogger(__name__)


@serve.deployment(name="Renderer", num_replicas=1, max_ongoing_requests=8, health_check_period_s=10)
class Renderer:
    """Loads the SMPL model once per replica; `render_video` for video jobs, `draw` for images."""

    def __init__(self, settings: ModelSettings) -> None:
        from pipeline.render.overlay import OverlayRenderer

        started = time.perf_counter()
        self.settings = settings
        self.overlay = OverlayRenderer.from_cache(settings.roots(), device=settings.device, download=settings.download)
        self._image_renderers: dict[bool, Any] = {}  # by side view, each built at its first use
        # what this replica was asked for (``/v1/info``): render=false jobs never show up here
        self.counts = {"videos_requested": 0, "videos_rendered": 0, "videos_failed": 0, "images_drawn": 0}
        self.rendering = 0
        self.start = start_info(time.perf_counter() - started)
        logger.info("Renderer ready on %s in %.1f s", self.overlay.meshes.device, time.perf_counter() - started)

    async def render_video(
        self, clip: str, jsonl: str, meta: str, out: str, limits: VideoLimits, chunk_size: int = 8
    ) -> dict[str, Any]:
        """The overlay of a video result (``jsonl`` + ``meta``, `pipeline.export.source.ResultFiles`)
        over ``clip``, written atomically at ``out``; what was drawn (`RenderSummary.to_dict`).
        Raises what `pipeline.render.overlay.render_video` raises (an unreadable clip, a result
        of another video)."""
        from pipeline.export.source import ResultFiles
        from pipeline.render.overlay import render_video

        self.counts["videos_requested"] += 1
        self.rendering += 1
        started = time.perf_counter()
        try:
            summary = await asyncio.to_thread(
                render_video, clip, ResultFiles(Path(jsonl), Path(meta)), out, self.overlay, limits=limits, chunk_size=chunk_size
            )
        except BaseException:
            self.counts["videos_failed"] += 1
            raise
        finally:
            self.rendering -= 1
        self.counts["videos_rendered"] += 1
        logger.info("overlay %s: %d frames in %.1f s", out, summary.frames, time.perf_counter() - started)
        return summary.to_dict()

    async def draw(self, image: np.ndarray, mesh: MeshResult, side_view: bool = False) -> bytes:
        """The PNG of one BGR image with the people of the MeshRegressor's answer (HMR2 outputs
        with vertices) drawn over it, coloured and numbered by person index; ``side_view``: with
        the side panel beside it, as ``python -m pipeline render --side-view``."""
        png = await asyncio.to_thread(self._draw, image, mesh.output, side_view)
        self.counts["images_drawn"] += 1
        return png

    def _draw(self, image: np.ndarray, output: Any, side_view: bool) -> bytes:
        from pipeline.render.overlay import MeshRenderer, RenderConfig, encode_image, overlay_from_output

        renderer = self._image_renderers.get(side_view)
        if renderer is None:
            meshes = self.overlay.meshes
            renderer = MeshRenderer(meshes.faces, RenderConfig(side_view=side_view), device=meshes.device)
            self._image_renderers[side_view] = renderer
        return encode_image(overlay_from_output(image, output, renderer), ".png")

    async def ready(self) -> bool:
        return True

    async def info(self) -> dict[str, Any]:
        return {
            "device": str(self.overlay.meshes.device),
            **self.counts,
            "rendering": self.rendering,
            "replica": serve.get_replica_context().replica_id.unique_id,
            "pid": os.getpid(),
            "start": self.start,
        }
