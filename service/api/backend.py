"""What the HTTP API needs from whoever hosts the models: a small protocol, so the service
never imports its host (Ray Serve's ``Ingress`` implements it with deployment handles; a test
or another host can implement it in process)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from pipeline.errors import PoseError


class MeshAnswer(Protocol):
    """The regressor's answer for one image: HMR2's outputs and the detection scores."""

    output: Any  # pipeline.models.hmr2.predictor.HMR2Output
    scores: np.ndarray | None


class ModelBackend(Protocol):
    """The models and the video workers, as the API calls them."""

    async def regress(self, image: np.ndarray, boxes: np.ndarray | None, vertices: bool) -> MeshAnswer:
        """People in ``image``: the detector's (``boxes`` None) or the client's boxes, through HMR2."""
        ...

    async def overlay(self, image: np.ndarray, boxes: np.ndarray | None, side_view: bool = False) -> bytes:
        """The PNG of ``image`` with its people's meshes drawn over it (``side_view``: and a panel
        beside it with each person turned 90 degrees, `pipeline.render.overlay.RenderConfig`)."""
        ...

    async def readiness(self) -> dict[str, bool]:
        """Stage name -> whether it answers (each stage loads its model before it does)."""
        ...

    async def stages_info(self) -> dict[str, Any]:
        """Stage name -> what it reports of itself (models, checksums, devices, batching)."""
        ...

    def host_info(self) -> dict[str, Any]:
        """Where this API replica runs (node, process), for ``/v1/info``."""
        ...

    def cluster_nodes(self) -> int:
        """Alive nodes of the cluster the service runs on (1 on one machine)."""
        ...

    def has_video_worker(self) -> bool:
        """Whether video jobs have workers (the job routes answer 503 without)."""
        ...

    def wake_worker(self) -> None:
        """A job was queued: a worker may claim it now (best effort; workers also poll)."""
        ...

    def map_error(self, exc: BaseException) -> PoseError | None:
        """A failure of the host (a replica gone, a queue full, a timeout) as a stable code."""
        ...


class ApiMetrics(Protocol):
    """Where the API reports what it sees (Ray's metrics under Serve)."""

    def request(self, route: str, status: int, seconds: float) -> None: ...

    def error(self, route: str, code: str) -> None: ...

    def stage(self, name: str, seconds: float) -> None: ...


class NoMetrics:
    """An `ApiMetrics` that keeps nothing (a host without a metrics system)."""

    def request(self, route: str, status: int, seconds: float) -> None:
        pass

    def error(self, route: str, code: str) -> None:
        pass

    def stage(self, name: str, seconds: float) -> None:
        pass
