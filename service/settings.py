"""Settings of the service's parts, validated once by the application builder and handed to
each replica: the model caches and device (`ModelSettings`), the job system (`JobSettings`),
the HTTP API (`ApiSettings`, `VideoApiSettings`). Plain pydantic models, no Ray."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from configs.profiles import DetectorName
from pipeline.errors import PoseError
from pipeline.tiny.cache import tiny_roots
from pipeline.video.decode import VideoLimits
from pipeline.weights import CacheRoots
from service.auth import AuthMode, KeySources
from service.callbacks import CallbackPolicy, SecretSources
from service.jobs import JobStore
from service.jobs.store import API_RETRY_S

DATA_DIR_ENV = "POSE_SERVICE_DATA_DIR"


def default_data_dir() -> str:
    """Where jobs live when no data_dir is configured: ``$POSE_SERVICE_DATA_DIR``, else a
    per-user cache folder (read when called, on the node that calls)."""
    env = os.environ.get(DATA_DIR_ENV)
    return str(Path(env).expanduser() if env else Path.home() / ".cache" / "pose-service" / "data")


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
    detector: DetectorName = "vitdet"  # which person detector the Detector replicas hold

    def roots(self) -> CacheRoots:
        """The cache roots on this node (the tiny profile writes its models on first use)."""
        if self.profile == "tiny":
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


class VideoLimitArgs(BaseModel):
    """`pipeline.video.decode.VideoLimits` as settings (what one video may cost; over a limit is refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(default=2 * 1024**3, ge=1024)
    max_frames: int = Field(default=18_000, ge=1)
    max_duration_s: float = Field(default=600.0, gt=0)
    max_pixels: int = Field(default=4096 * 2304, ge=1)

    def limits(self) -> VideoLimits:
        return VideoLimits(**self.model_dump())


class JobSettings(BaseModel):
    """Where jobs live and how many run; shared by the Ingress (accepts jobs) and Tracker (runs them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: str  # one folder per job (+ the SQLite database when no job_store is set); shared storage on a cluster
    job_store: str | None = None  # postgresql://... for a cluster; None: $<job_store_env>, else SQLite in data_dir
    job_store_env: str = "POSE_JOB_STORE_URL"  # read on each replica's node (a Secret in Kubernetes)
    max_active: int = Field(default=2, ge=1)  # jobs processed at once
    max_queued: int = Field(default=32, ge=0)  # accepted jobs waiting beyond those; then 429
    # jobs one (non-admin) client may have queued or running; then 429 client_job_limit. None: no bound of its own
    max_jobs_per_client: int | None = Field(default=16, ge=1)
    # disk bytes one (non-admin) client's jobs may take (inputs, results, overlays); then 507
    # client_storage_limit. None: no bound of its own
    max_bytes_per_client: int | None = Field(default=64 * 2**30, ge=0)
    reserve_people_per_frame: int = Field(default=4, ge=0)  # the people a frame's results are reserved for at admission
    retention_s: float | None = Field(default=7 * 24 * 3600.0, gt=0)  # finished jobs kept this long; None: forever
    max_attempts: int = Field(default=3, ge=1)  # crashed attempts of one job before it fails (hand-offs not counted)
    chunk_size: int = Field(default=8, ge=1, le=256)  # frames decoded and submitted together
    video_limits: VideoLimitArgs = Field(default_factory=VideoLimitArgs)
    max_disk_bytes: int | None = Field(default=None, ge=0)  # uploads, checkpoints, results, artifacts; None: no budget
    min_free_disk_bytes: int = Field(default=512 * 2**20, ge=0)  # kept free on the data folder's file system
    poll_interval_s: float = Field(default=1.0, gt=0)  # queue check when no one wakes the worker
    callback_timeout_s: float = Field(default=5.0, gt=0)
    callback_tries: int = Field(default=3, ge=1, le=10)  # tries per callback, with back-off (4xx answers end them)
    callback_allow_http: bool = False  # plain http callback URLs (https only by default)
    callback_allow_hosts: tuple[str, ...] = ()  # hosts / addresses / CIDR ranges callbacks may reach although internal
    callback_secret_env: str = "POSE_CALLBACK_SECRET"  # shared HMAC key of X-Pose-Signature, for clients without their own
    # client_id:secret entries (also from the file in $POSE_CALLBACK_SECRETS_FILE), read at each callback on its node
    callback_secrets_env: str = "POSE_CALLBACK_SECRETS"
    lease_s: float = Field(default=30.0, gt=0)  # a running job whose attempt stops renewing this long is taken over
    max_stage_wait_s: float = Field(default=120.0, gt=0)  # stage failures in a row retried this long, then the job fails
    # One chunk's detector and regressor answers are awaited this long, then its calls are
    # cancelled and the chunk is retried (a call can wait forever on a replica lost with its node).
    stage_timeout_s: float = Field(default=600.0, gt=0)
    # A running job whose frames done and checkpoint have not moved this long (while its lease is
    # renewed) is taken back and retried elsewhere, as a crash. None: never. Above stage_timeout_s
    # plus max_stage_wait_s, the longest one chunk may legitimately take.
    stall_s: float | None = Field(default=1800.0, gt=0)

    @model_validator(mode="after")
    def _stall_after_a_chunk(self) -> "JobSettings":
        if self.stall_s is not None and self.stall_s <= self.stage_timeout_s + self.max_stage_wait_s:
            raise ValueError(
                f"expected stall_s above stage_timeout_s + max_stage_wait_s ({self.stage_timeout_s:g} + "
                f"{self.max_stage_wait_s:g} s, the longest one chunk may take), got {self.stall_s:g}"
            )
        return self

    def callback_policy(self, client: str | None = None) -> CallbackPolicy:
        """Which callback URLs are allowed and how they are called (see `service.callbacks`):
        signed with ``client``'s own secret, so no other client can forge it, else the shared one.
        Without ``client`` (the Ingress checking a URL at upload) per-client secrets are not read.

        Raises `PoseError` ``callback_secrets_invalid`` when the secrets that should sign do not parse."""
        sources = SecretSources(secrets_env=self.callback_secrets_env, secret_env=self.callback_secret_env)
        return CallbackPolicy(
            allow_http=self.callback_allow_http,
            allow_hosts=tuple(self.callback_allow_hosts),
            secret=sources.secret_for(client),
            timeout_s=self.callback_timeout_s,
            tries=self.callback_tries,
        )

    def store_url(self) -> str | None:
        return self.job_store or os.environ.get(self.job_store_env) or None

    def open_store(self, nodes: int = 1, *, retry_s: float = API_RETRY_S) -> JobStore:
        """The job store, checked against where it is used: a node-local store (SQLite) on a
        cluster of several nodes fails here, loudly, rather than split the jobs per node.

        A data folder that cannot be used (read-only, not a folder, gone) is `data_dir_unavailable`
        (503): the replicas start anyway, video jobs answer that code, images keep working, and
        the store is opened again once the folder is usable.

        ``retry_s``: how long each store call retries a transient database fault (the API: a
        few seconds; a worker: a lease)."""
        try:
            return self._open_store(nodes, retry_s)
        except (OSError, sqlite3.Error) as exc:
            raise PoseError(
                "data_dir_unavailable",
                f"video jobs are disabled: the data folder {self.data_dir} cannot be used "
                f"({type(exc).__name__}: {exc}); images keep working",
                status=503,
            ) from exc

    def _open_store(self, nodes: int, retry_s: float) -> JobStore:
        store = JobStore(
            Path(self.data_dir).expanduser(),
            retention_s=self.retention_s,
            max_active=self.max_active,
            max_queued=self.max_queued,
            url=self.store_url(),
            retry_s=retry_s,
        )
        if store.node_local and nodes > 1:
            store.close()
            raise PoseError(
                "job_store_node_local",
                f"job store is node-local; configure job_store for a cluster (the Ray cluster has {nodes} nodes: "
                f"set jobs.job_store or ${self.job_store_env} to a postgresql:// URL and data_dir to shared storage)",
                status=500,
            )
        return store


class ApiSettings(BaseModel):
    """The HTTP API's limits, keys and documentation (one Ingress replica's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: str
    detector: DetectorName = "vitdet"  # the Detector's model, named in image results
    max_upload_bytes: int = 32 * 2**20
    max_pixels: int = 40_000_000
    max_people: int = 64
    # image fields one POST /v1/images may carry (413 too_many_images beyond); their bytes together
    # stay within max_upload_bytes
    max_images_per_request: int = Field(default=16, ge=1)
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
    # once with 503 overloaded + Retry-After (see service/api/admission.py).
    max_image_wait_s: float = 30.0
    # A request body must arrive at this rate after body_grace_s, else 408 upload_too_slow
    # (service/api/pacing.py): jobs.min_upload_mbit_s, the rate the upload limits are sized for.
    min_body_bytes_per_s: float = Field(default=10e6 / 8, gt=0)
    body_grace_s: float = Field(default=10.0, gt=0)
    app_info: dict[str, Any] = Field(default_factory=dict)  # resources chosen by the builder, for /v1/info

    def key_sources(self) -> KeySources:
        """Where this replica reads the client keys (its own node's environment)."""
        return KeySources(
            file=self.auth_keys_file,
            file_env=self.auth_keys_file_env,
            keys_env=self.auth_keys_env,
            token_env=self.auth_token_env,
        )


class VideoApiSettings(BaseModel):
    """What the Ingress needs for video jobs (the worker's settings live in `JobSettings`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    media_dir: Optional[str] = None  # POST /pose/video reads files from here only; None: route disabled
    sync_timeout_s: float = 300.0  # POST /pose/video waits this long, then answers 202 with the job
    allow_callbacks: bool = True  # accept callback_url (the worker POSTs to it when a job ends)
    # Where exports (BVH, GLB, AMASS) find the SMPL model: the model replicas' own cache settings,
    # read on the Ingress's node (the tiny profile writes its tiny SMPL there). None: those exports off.
    models: Optional[ModelSettings] = None
