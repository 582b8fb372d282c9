"""What the deployments share: Ray's failures as stable error codes, the cluster's size, whether
tracking is installed, and what each replica reports of its start and its model files."""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.util
import logging
import os
from pathlib import Path

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, ObjectLostError, RayActorError, TaskCancelledError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException, RequestCancelledError

from pipeline.errors import PoseError
from pipeline.weights import CacheRoots, WeightFile, locate, sha256_of

logger = logging.getLogger(__name__)


def tracker_available(*, tiny: bool = False) -> bool:
    """Whether this installation has the PHALP tracker (and, for the tiny profile, its tiny
    factory); the graph leaves video jobs out otherwise. The modules are looked for, not run
    (nor their packages: ``pipeline.tracking`` loads torch), so the check stays cheap."""
    modules = ["pipeline.tracking.tracker", "pipeline.tracking.loading"]
    if tiny:
        modules.append("pipeline.tiny.phalp")
    return all(_module_present(m) for m in modules)


def _module_present(name: str) -> bool:
    """Whether module ``name`` is installed, found without running its package's ``__init__``."""
    package, _, leaf = name.rpartition(".")
    try:
        spec = importlib.util.find_spec(package.partition(".")[0])
        for part in [*package.split(".")[1:], leaf]:
            if spec is None or spec.submodule_search_locations is None:
                return False
            spec = importlib.machinery.PathFinder.find_spec(part, list(spec.submodule_search_locations))
    except (ImportError, ValueError):
        return False
    return spec is not None


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


PROJECT_LOGGERS = ("pipeline", "service", "deployments")


def route_logs_to_serve() -> None:
    """Send this project's logs where the replica's own go: Serve's handlers (the replica's log
    file under the session's ``logs/serve/`` and its console) at Serve's level (``logging_config``
    in serve_config.yaml). Without this they reach only the root logger, whose level in a Ray
    worker is WARNING: a job claimed, a client that hung up, a lease handed back would never be
    seen. Idempotent: a replica restarted in the same worker adds no second handler."""
    serve_logger = logging.getLogger("ray.serve")
    for name in PROJECT_LOGGERS:
        ours = logging.getLogger(name)
        ours.setLevel(serve_logger.getEffectiveLevel())
        for handler in serve_logger.handlers:
            if handler not in ours.handlers:
                ours.addHandler(handler)
        ours.propagate = not serve_logger.handlers  # Serve's console handler already prints them


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


def alive_nodes() -> int:
    """Alive nodes of the connected Ray cluster (1 without one)."""
    if not ray.is_initialized():
        return 1
    return sum(1 for n in ray.nodes() if n.get("Alive"))


def cancelled_request(exc: BaseException) -> bool:
    """Serve cancelled the request this failure belongs to: its client hung up (or the proxy's
    ``request_timeout_s`` ran out), and every call made for it, the proxy's body stream
    included, is cancelled with it. Nobody is left to answer."""
    return any(isinstance(link, (TaskCancelledError, RequestCancelledError)) for link in _chain(exc))


def as_pose_error(exc: BaseException) -> PoseError | None:
    """Ray and Serve failures a client can retry, as stable codes; None for anything else."""
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
