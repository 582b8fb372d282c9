"""What every route of one API replica shares: its settings, the client keys it checks, the
model backend, image admission and the video jobs (opened on first use)."""

from __future__ import annotations

import logging
import time

from fastapi import Request

from pipeline.errors import PoseError
from service.api.admission import Admission
from service.api.backend import ApiMetrics, ModelBackend
from service.api.video_jobs import VideoJobs
from service.auth import ANONYMOUS, Client, LiveKeys
from service.settings import ApiSettings, JobSettings, VideoApiSettings

logger = logging.getLogger(__name__)


def replica_keys(settings: ApiSettings) -> LiveKeys | None:
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


class ApiContext:
    """One API replica's shared state; the routes reach everything through it."""

    def __init__(
        self,
        settings: ApiSettings,
        backend: ModelBackend,
        metrics: ApiMetrics,
        jobs: JobSettings | None = None,
        video_api: VideoApiSettings | None = None,
    ) -> None:
        self.settings = settings
        self.keys = replica_keys(settings)  # first: a replica that must not serve without keys stops here
        self.backend = backend
        self.metrics = metrics
        self.admission = Admission(settings.max_image_wait_s)
        # Video jobs need a worker and the store; a graph without PHALP tracking has neither.
        self.videos: VideoJobs | None = None
        self.videos_error: PoseError | None = None  # data_dir_unavailable: tried again on use
        self._video_args = (jobs, video_api or VideoApiSettings()) if jobs is not None and backend.has_video_worker() else None
        self._videos_retry_at = 0.0
        self.open_videos()

    def open_videos(self) -> VideoJobs | None:
        """The video jobs' store, opened on first use; an unusable data folder disables video jobs
        (`data_dir_unavailable`, 503), and so does a database that cannot be reached
        (`job_store_unavailable`), without taking images down; either is tried again at most
        every 10 s, so fixing it brings videos back without a restart."""
        if self.videos is not None or self._video_args is None or time.monotonic() < self._videos_retry_at:
            return self.videos
        jobs, api = self._video_args
        try:
            self.videos = VideoJobs(self.backend, jobs, api, nodes=self.backend.cluster_nodes())
            self.videos_error = None
        except PoseError as exc:
            if exc.code not in ("data_dir_unavailable", "job_store_unavailable"):
                raise
            if self.videos_error is None:
                logger.error("%s", exc.message)
            self.videos_error = exc
            self._videos_retry_at = time.monotonic() + 10.0
        return self.videos

    def video_jobs(self) -> VideoJobs:
        """The video jobs, or the 503 that says why there are none."""
        videos = self.open_videos()
        if videos is None and self.videos_error is not None:
            raise self.videos_error
        if videos is None:
            raise PoseError(
                "videos_unavailable", "video jobs are not enabled in this deployment (no tracker or no data folder)",
                status=503,
            )
        return videos

    @property
    def key_required(self) -> bool:
        return auth_mode(self.keys) == "keys"

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
        self.metrics.error(getattr(route, "path", "unmatched"), exc.code)
