"""What every model replica shares: where its weights are and which device it runs on."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import CODES, PoseError, codes_by_status
from pipeline.weights import CacheRoots, WeightFile, locate, sha256_of

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class ModelSettings(BaseModel):
    """Resolved by the application builder; sent to each model replica's constructor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: Literal["full", "tiny"]
    weights_dir: str | None = None  # one folder holding the three caches side by side; None: upstream defaults
    weights_mirrors: tuple[str, ...] = ()  # base URLs in the cache layout, tried before the published addresses
    weights_lock: str | None = None  # the lock file of digests; None: beside weights_dir, else ~/.cache/pose-service
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
        roots = CacheRoots.under(self.weights_dir) if self.weights_dir else CacheRoots.from_env()
        return dataclasses.replace(
            roots,
            mirrors=self.weights_mirrors,
            lock=Path(self.weights_lock).expanduser() if self.weights_lock else roots.lock,
        )

    @property
    def effective_dtype(self) -> str:
        """Half precision is a GPU feature; a CPU replica falls back to float32."""
        return self.dtype if self.device == "cuda" else "float32"


class ErrorBody(BaseModel):
    code: str = Field(description="stable, machine-readable: one of x-error-codes", json_schema_extra={"enum": sorted(CODES)})
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


def process_age_s() -> float | None:
    """Seconds since this process started (Linux ``/proc``; None elsewhere).

    A replica's age when its constructor returns is what a scale-up waits for: process start,
    imports, model load."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_ticks = int(fields[19])  # field 22 of stat(5), after pid and comm
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime_s - started_ticks / os.sysconf("SC_CLK_TCK"))


def start_info(load_s: float) -> dict[str, float | None]:
    """What `info()` of each replica reports of its start: seconds loading models, and from
    process start to ready."""
    age = process_age_s()
    return {"load_s": round(load_s, 3), "start_to_ready_s": None if age is None else round(age, 3)}


def unwrap_error(exc: BaseException) -> BaseException:
    """The original exception inside Ray's ``RayTaskError`` wrappers."""
    return _chain(exc)[-1]


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it wraps: Ray's ``cause`` (not its non-exception contexts),
    else the ``raise ... from`` cause (Serve's "upstream actor died" error wraps the actor's)."""
    out = [exc]
    while len(out) < 8:
        inner = getattr(out[-1], "cause", None)
        if not isinstance(inner, BaseException):
            inner = out[-1].__cause__
        if inner is None or inner in out:
            break
        out.append(inner)
    return out


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
    from ray.exceptions import ActorDiedError, ActorUnavailableError, ObjectLostError, RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException

    chain = _chain(exc)
    for link in reversed(chain):  # the innermost error says most
        if isinstance(link, PoseError):
            return link
    for link in chain:
        if isinstance(link, BackPressureError):
            return PoseError("overloaded", "the service is at capacity; retry shortly", status=503)
        # ObjectLostError: an answer held on a node that died (object reconstruction fails)
        if isinstance(link, (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError, ObjectLostError)):
            return PoseError("stage_unavailable", "a model replica is restarting; retry shortly", status=503)
        if isinstance(link, (asyncio.TimeoutError, TimeoutError)):
            return PoseError("stage_timeout", "a model stage took too long to answer; retry shortly", status=503)
    # Serve's own failure of a call into a stage (e.g. the replica died while queued there): the
    # serving layer, not the request, so a retry is the answer
    if any(isinstance(link, RayServeException) for link in chain):
        return PoseError("stage_unavailable", "a model replica is restarting; retry shortly", status=503)
    return None
