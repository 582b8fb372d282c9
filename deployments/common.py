"""What every model replica shares: where its weights are and which device it runs on."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar

from pydantic import BaseModel, ConfigDict

from pipeline.errors import PoseError
from pipeline.weights import CacheRoots, WeightFile, locate, sha256_of

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class ModelSettings(BaseModel):
    """Resolved by the application builder; sent to each model replica's constructor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: Literal["full", "tiny"]
    weights_dir: str | None = None  # one folder holding the three caches side by side; None: upstream defaults
    tiny_dir: str | None = None  # tiny profile: where the factory writes; None: $POSE_TINY_DIR or ~/.cache
    seed: int = 0
    download: bool = True
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"

    def roots(self) -> CacheRoots:
        """The cache roots on this node (the tiny profile writes its models on first use)."""
        if self.profile == "tiny":
            from configs.tiny import tiny_roots

            return tiny_roots(self.tiny_dir, seed=self.seed)
        if self.weights_dir:
            return CacheRoots.under(self.weights_dir)
        return CacheRoots.from_env()

    @property
    def effective_dtype(self) -> str:
        """Half precision is a GPU feature; a CPU replica falls back to float32."""
        return self.dtype if self.device == "cuda" else "float32"


def unwrap_error(exc: BaseException) -> BaseException:
    """The original exception inside Ray's ``RayTaskError`` wrappers."""
    seen = 0
    while getattr(exc, "cause", None) is not None and seen < 8:
        exc = exc.cause  # type: ignore[assignment]
        seen += 1
    return exc


def checksums(files: tuple[WeightFile, ...] | list[WeightFile], roots: CacheRoots) -> dict[str, dict[str, str | None]]:
    """sha256 and path of each model file found (hashing the 2.6 GB ViTDet takes seconds: cache it)."""
    out: dict[str, dict[str, str | None]] = {}
    for f in files:
        st = locate(f, roots)
        path: Path | None = st.found
        out[f.key] = {"path": str(path) if path else None, "sha256": sha256_of(path) if path else None}
    return out


def as_pose_error(exc: BaseException) -> PoseError | None:
    """Ray and Serve failures a client can retry, as stable codes; None for anything else."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    exc = unwrap_error(exc)
    if isinstance(exc, PoseError):
        return exc
    if isinstance(exc, BackPressureError):
        return PoseError("overloaded", "the service is at capacity; retry shortly", status=503)
    if isinstance(exc, (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError)):
        return PoseError("stage_unavailable", "a model replica is restarting; retry shortly", status=503)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return PoseError("stage_timeout", "the image took too long to process", status=503)
    return None
