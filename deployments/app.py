"""The application builder: ``serve run deployments.app:build_app`` or ``serve_config.yaml``.

Resources are decided here, at build time, where the cluster can be asked: GPU fractions are
applied only when the Ray cluster has GPUs (a replica asking for ``num_gpus`` never schedules on
a cluster without them), otherwise every model runs on CPU with small CPU shares. That is why the
fractions are application arguments and not deployment options in ``serve_config.yaml``: options
in the config file override the code's, so ``num_gpus`` written there would apply even on a
CPU-only machine and the graph would wait for resources forever.

Exposure is decided here too: the HTTP proxy's listen address is asked of the running Serve
instance, and an address other than loopback without a client key (or an explicit
``auth: none``) refuses the deploy with one message (`service.auth.check_exposure`).
"""

# No ``from __future__ import annotations`` here: Serve reads ``build_app``'s annotation at
# runtime to validate the ``args:`` of serve_config.yaml into `AppArgs`.
import logging
import os
from math import ceil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.serve import Application

from configs.profiles import STAGE_DEPLOYMENTS, BatchSettings, DetectorName, Fractions, Limits, Profile, get_profile
from pipeline.errors import PoseError
from service.auth import KeySources, check_exposure, is_loopback
from service.settings import (
    ApiSettings,
    JobSettings,
    ModelSettings,
    VideoApiSettings,
    VideoLimitArgs,
    default_data_dir,
)

# The deployments' own modules (models, torch) are imported by `build_app`: the checks here stay
# light for `deployments.preflight`, run before ``serve run``.
from .common import alive_nodes, tracker_available

logger = logging.getLogger(__name__)

PROFILE_ENV = "POSE_SERVICE_PROFILE"
VIDEO_POLICY = "deployments.autoscaling:video_queue_policy"


class BatchArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(ge=1, le=1024)
    batch_wait_timeout_s: float = Field(ge=0.0, le=10.0)


class LimitArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_upload_bytes: int | None = Field(default=None, ge=1024)
    max_pixels: int | None = Field(default=None, ge=1)
    max_people: int | None = Field(default=None, ge=1)
    max_images_per_request: int = Field(
        default=16, ge=1, le=256,
        description="image fields one POST /v1/images may carry (413 too_many_images beyond), all within max_upload_bytes",
    )
    max_image_wait_s: float = Field(
        default=30.0, gt=0,
        description="an image request expected to take longer (in flight / recent rate) is answered 503 overloaded at once",
    )
    body_grace_s: float = Field(
        default=10.0, gt=0,
        description="a request body may lag this long behind jobs.min_upload_mbit_s (a connection's start, a short "
        "stall); further behind it is dropped with 408 upload_too_slow",
    )


# Keys of earlier releases, refused with the name to use instead (a renamed key must not be
# dropped in silence: its value would no longer size anything).
RENAMED_STAGE_KEYS = {"video": "tracker"}


class StageArgs(BaseModel):
    """One key per deployment (`configs.profiles.STAGE_DEPLOYMENTS`); any other key is refused."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _refuse_renamed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in RENAMED_STAGE_KEYS.items():
                if old in data:
                    raise ValueError(
                        f"`{old}` was renamed `{new}` (the {STAGE_DEPLOYMENTS[new]} deployment, the video workers): "
                        f"write `{new}:` instead of `{old}:`"
                    )
        return data


class FractionArgs(StageArgs):
    """Share of one device per replica, per deployment; unset: the profile's."""

    detector: float | None = Field(default=None, ge=0.0, description="Detector")
    regressor: float | None = Field(default=None, ge=0.0, description="MeshRegressor")
    tracker: float | None = Field(
        default=None, ge=0.0, description="Tracker: each video worker (decoding, PHALP's appearance step and tracker)"
    )
    renderer: float | None = Field(
        default=None, ge=0.0, description="Renderer: the overlays (video jobs' MP4, POST /v1/images?format=png)"
    )
    ingress: float | None = Field(default=None, ge=0.0, description="Ingress (as a GPU share only when set above 0)")


class PlacementArgs(StageArgs):
    """Custom Ray resources a stage's replicas ask for, to pin them to nodes that offer them
    (``ray start --resources '{"video_node": 1}'``): e.g. the Ingress on the nodes that take
    traffic, the video workers on others."""

    detector: dict[str, float] = Field(default_factory=dict)
    regressor: dict[str, float] = Field(default_factory=dict)
    tracker: dict[str, float] = Field(default_factory=dict)
    renderer: dict[str, float] = Field(default_factory=dict)
    ingress: dict[str, float] = Field(default_factory=dict)


class JobArgs(BaseModel):
    """Video jobs: how many run and wait, how long results are kept, how a video is cut up."""

    model_config = ConfigDict(extra="forbid")

    max_active: int = Field(default=2, ge=1, description="jobs processed at once")
    max_queued: int = Field(default=32, ge=0, description="accepted jobs waiting beyond those; then 429 + Retry-After")
    max_jobs_per_client: int | None = Field(
        default=16, ge=1,
        description="jobs one client may have queued or running at once, so no client fills the shared queue; "
        "then 429 client_job_limit + Retry-After. Admin keys are bounded by the queue only. None: no bound of its own",
    )
    max_bytes_per_client: int | None = Field(
        default=64 * 2**30, ge=0,
        description="disk bytes one client's jobs may take (inputs, results, overlays; a job's expected results are "
        "counted from its admission); then 507 client_storage_limit. Admin keys are bounded by the disk only. None: "
        "no bound of its own",
    )
    reserve_people_per_frame: int = Field(
        default=4, ge=0,
        description="people per frame a job's results are reserved for on disk at admission, so accepted jobs "
        "cannot together write past the disk budget",
    )
    retention_s: float | None = Field(default=7 * 24 * 3600.0, gt=0, description="finished jobs kept; None: forever")
    max_attempts: int = Field(
        default=3, ge=1,
        description="crashed attempts of one job (lease ran out, worker restarted, no progress for stall_s) before it "
        "fails interrupted; graceful hand-offs (scale-down, redeploy) do not count; also the tries of a render job's "
        "overlay before it fails renderer_unavailable",
    )
    chunk_size: int | None = Field(default=None, ge=1, le=256, description="frames per chunk; None: the profile's")
    sync_timeout_s: float = Field(default=300.0, gt=0, description="POST /pose/video waits this long, then 202")
    allow_callbacks: bool = Field(default=True, description="accept callback_url on uploads (public https addresses only, see below)")
    callback_allow_http: bool = Field(default=False, description="also accept plain http callback URLs")
    callback_allow_hosts: list[str] = Field(
        default_factory=list,
        description="host names, addresses or CIDR ranges callbacks may reach although internal (loopback, private, link-local)",
    )
    callback_secret_env: str = Field(
        default="POSE_CALLBACK_SECRET",
        description="variable holding the HMAC key that signs callbacks (X-Pose-Signature) of clients without their own",
    )
    callback_secrets_env: str = Field(
        default="POSE_CALLBACK_SECRETS",
        description="variable holding client_id:secret entries, each client's callbacks signed with its own "
        "(also read from the file named in POSE_CALLBACK_SECRETS_FILE)",
    )
    callback_tries: int = Field(default=3, ge=1, le=10, description="tries per callback, with back-off")
    workers: int | None = Field(
        default=None, ge=1, description="video worker replicas; None: the deployment's own (serve_config.yaml autoscales them)"
    )
    autoscaling: dict[str, Any] | None = Field(
        default=None,
        description="autoscaling_config of the video workers (min/max_replicas, target_ongoing_requests = jobs per "
        "worker, delays); their queue policy is filled in. None: the deployment's own",
    )
    max_disk_bytes: int | None = Field(
        default=None, ge=0,
        description="what uploads, checkpoints, results and artifacts in data_dir may take together; past it new "
        "uploads are answered 507 storage_full. None: no budget of its own (the free-space floor still holds)",
    )
    min_free_disk_bytes: int = Field(
        default=512 * 2**20, ge=0,
        description="kept free on data_dir's file system for accepted jobs' results: uploads that would eat into it get 507",
    )
    min_upload_mbit_s: float = Field(
        default=10.0, gt=0,
        description="the slowest client the limits are for: video_limits.max_bytes at this rate must arrive within "
        "http_options.request_timeout_s, else the deploy is refused (upload_timeout_too_short)",
    )
    lease_s: float = Field(default=30.0, gt=0, description="a running job not heard of this long is taken over by another attempt")
    job_store: str | None = Field(
        default=None, description="postgresql://user@host/db for a cluster; None: $job_store_env, else SQLite in data_dir"
    )
    job_store_env: str = Field(default="POSE_JOB_STORE_URL", description="variable holding the job store URL on each node")
    max_stage_wait_s: float = Field(default=120.0, gt=0, description="stage failures in a row retried this long, then the job fails")
    stage_timeout_s: float = Field(
        default=600.0, gt=0,
        description="a chunk's detector and regressor answers awaited this long, then its calls are cancelled and the chunk retried",
    )
    stall_s: float | None = Field(
        default=1800.0, gt=0,
        description="a running job whose frames and checkpoint have not moved this long, although its worker renews "
        "its lease, is taken back and resumed by another attempt (counted as a crash); above stage_timeout_s + "
        "max_stage_wait_s. None: never",
    )


class AppArgs(BaseModel):
    """Typed application arguments (``args:`` in serve_config.yaml). Unset values come from the profile."""

    model_config = ConfigDict(extra="forbid")

    profile: Literal["full", "tiny"] | None = Field(default=None, description=f"None: ${PROFILE_ENV}, else full")
    weights_dir: str | None = Field(
        default=None, description="folder holding the 4DHumans/, phalp/ and iopath_cache/ caches; None: upstream defaults"
    )
    weights_mirrors: list[str] = Field(
        default_factory=list,
        description="base URLs serving the weights_dir layout (<base>/phalp/weights/hmar_v2_weights.pth), tried in "
        "order before the published addresses; $POSE_WEIGHTS_MIRRORS on a node adds more after these",
    )
    weights_lock: str | None = Field(
        default=None,
        description="lock file of the sizes and sha256 recorded on first download or import, enforced at every start; "
        "None: weights.lock.json in weights_dir, else $POSE_WEIGHTS_LOCK, else ~/.cache/pose-service",
    )
    tiny_dir: str | None = Field(default=None, description="tiny profile: where models are written on first start")
    download: bool = Field(default=True, description="fetch missing public checkpoints on replica start")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: GPU when the cluster has one")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    detector: DetectorName = Field(
        default="vitdet",
        description="vitdet: ViTDet-H Cascade Mask R-CNN (4D-Humans' default); regnety: RegNetY-4GF Mask R-CNN, "
        "several times lighter (demo.py --detector regnety)",
    )
    score_thresh: float | None = Field(default=None, ge=0.0, le=1.0)
    stage_score_thresh: float | None = Field(default=None, ge=0.0, le=1.0, description="ViTDet's cascade stages only")
    detector_batch: BatchArgs | None = Field(default=None, description="initial user_config of Detector")
    regressor_batch: BatchArgs | None = Field(default=None, description="initial user_config of MeshRegressor (crops)")
    limits: LimitArgs = Field(default_factory=LimitArgs)
    gpu_fractions: FractionArgs = Field(default_factory=FractionArgs)
    cpu_fractions: FractionArgs = Field(default_factory=FractionArgs)
    placement: PlacementArgs = Field(default_factory=PlacementArgs)
    tracker: bool | None = Field(default=None, description="video jobs (PHALP tracking in the video workers); None: when installed")
    auth: Literal["keys", "none"] = Field(
        default="keys",
        description="keys: callers need a client key once any is configured, and without keys the HTTP proxy must "
        "listen on loopback; none: no authentication at all (the start-up log and /v1/info say so)",
    )
    auth_keys_file: str | None = Field(
        default=None, description="client keys file (client_id:sha256-hex[:admin] lines); None: $POSE_SERVICE_KEYS_FILE"
    )
    auth_keys_env: str = Field(default="POSE_SERVICE_KEYS", description="variable holding key entries itself (comma-separated)")
    auth_token_env: str = Field(
        default="POSE_SERVICE_TOKEN", description="variable holding the single bearer token of earlier releases (client default, admin)"
    )
    data_dir: str | None = Field(
        default=None,
        description="video jobs and results (SQLite + files); None: $POSE_SERVICE_DATA_DIR, else ~/.cache/pose-service/data",
    )
    media_dir: str | None = Field(default=None, description="POST /pose/video reads videos from here only; None: route off")
    jobs: JobArgs = Field(default_factory=JobArgs)
    video_limits: VideoLimitArgs = Field(default_factory=VideoLimitArgs)
    public_docs: bool = Field(default=True, description="/docs, /openapi.json and the web page /ui without a key (none holds data)")

    def key_sources(self) -> KeySources:
        return KeySources(file=self.auth_keys_file, keys_env=self.auth_keys_env, token_env=self.auth_token_env)


def _cluster_connected() -> bool:
    import ray

    return ray.is_initialized()


def _serve_http_options() -> Any:
    """The running Serve instance's HTTP options (``serve run serve_config.yaml`` starts it with
    the file's ``http_options`` before building), else Serve's defaults, which ``serve.run``
    starts it with."""
    from ray.serve.config import HTTPOptions
    from ray.serve.context import _get_global_client  # no public call reports the running HTTP options

    client = _get_global_client(raise_if_no_controller_running=False)
    return client.http_config if client is not None else HTTPOptions()


def check_upload_time(args: AppArgs, request_timeout_s: float | None) -> None:
    """Refuse limits a client at ``jobs.min_upload_mbit_s`` cannot meet: the largest video
    (``video_limits.max_bytes``) must arrive within the proxy's ``request_timeout_s``, or every
    slower client's upload is cut off at the timeout after it sent most of its bytes."""
    if request_timeout_s is None:  # Serve's default: no timeout
        return
    mbit_s = args.jobs.min_upload_mbit_s
    needed_s = args.video_limits.max_bytes * 8 / (mbit_s * 1e6)
    if needed_s > request_timeout_s:
        raise PoseError(
            "upload_timeout_too_short",
            f"an upload of video_limits.max_bytes ({args.video_limits.max_bytes} bytes) at jobs.min_upload_mbit_s "
            f"({mbit_s:g} Mbit/s) takes {needed_s:.0f} s, longer than http_options.request_timeout_s "
            f"({request_timeout_s:g} s): raise request_timeout_s to {ceil(needed_s)} or more, lower max_bytes to "
            f"{int(request_timeout_s * mbit_s * 1e6 / 8)} or less, or raise min_upload_mbit_s",
        )


def check_auth(args: AppArgs, host: str | None) -> bool:
    """Refuse to serve a network without keys (`check_exposure`); whether the replicas must find
    keys too. Keys are read from this process's environment, the same variables and file each
    Ingress replica reads on its node."""
    keys = len(args.key_sources().load())  # a named keys file that does not parse fails here
    check_exposure(host, args.auth, keys)
    if args.auth == "none":
        logger.warning("auth: none: no authentication; anyone who reaches %s can use and read every job", host)
    elif keys == 0:
        logger.info("no client key configured: serving loopback (%s) only, every caller is the admin 'default'", host)
    return args.auth == "keys" and not is_loopback(host)


def _cluster_gpus() -> float:
    """GPUs in the running Ray cluster (0 when no cluster is connected, e.g. under ``serve build``)."""
    import ray

    if not ray.is_initialized():
        return 0.0
    return float(ray.cluster_resources().get("GPU", 0.0))


def _merged(base: Fractions, over: FractionArgs) -> Fractions:
    values = {k: v for k, v in over.model_dump().items() if v is not None}
    return Fractions(**{**base.__dict__, **values})


def _batch(base: BatchSettings, over: BatchArgs | None) -> dict[str, Any]:
    return over.model_dump() if over is not None else {"max_batch_size": base.max_batch_size, "batch_wait_timeout_s": base.batch_wait_timeout_s}


def resolve_data_dir(args: AppArgs) -> str:
    """Where jobs live: the argument, else the environment, else a per-user cache folder."""
    if args.data_dir:
        return str(Path(args.data_dir).expanduser())
    return default_data_dir()


def resolve_profile(args: AppArgs) -> Profile:
    name = args.profile or os.environ.get(PROFILE_ENV) or "full"
    try:
        return get_profile(name)
    except ValueError as exc:
        raise ValueError(f"{PROFILE_ENV} / profile: {exc}") from None


def _video_replicas(jobs: JobArgs) -> dict[str, Any]:
    """Deployment options for how many video workers run: fixed, or following the job queue."""
    if jobs.workers is not None and jobs.autoscaling is not None:
        raise ValueError("jobs.workers and jobs.autoscaling exclude each other: a fixed count or autoscaling")
    if jobs.workers is not None:
        return {"num_replicas": jobs.workers}
    if jobs.autoscaling is not None:
        config = {"policy": {"policy_function": VIDEO_POLICY}, **jobs.autoscaling}
        return {"autoscaling_config": config}
    return {}


def _check_store_placement(jobs: JobSettings) -> None:
    """Fail at start, loudly, when jobs would be kept per node: SQLite on a multi-node cluster."""
    url = jobs.store_url()
    nodes = alive_nodes() if _cluster_connected() else 1
    if (url is None or url.startswith("sqlite:")) and nodes > 1:
        raise ValueError(
            f"job store is node-local; configure job_store for a cluster: the Ray cluster has {nodes} nodes, and a "
            f"SQLite store in {jobs.data_dir} would keep jobs per node. Set jobs.job_store (or ${jobs.job_store_env} on "
            "every node) to a postgresql:// URL and data_dir to storage every node mounts."
        )


def model_settings(args: AppArgs, profile: Profile, device: Literal["cpu", "cuda"] = "cpu") -> ModelSettings:
    """Where the model replicas find their files, and on which device they run."""
    return ModelSettings(
        profile=profile.name,
        weights_dir=args.weights_dir,
        weights_mirrors=tuple(args.weights_mirrors),
        weights_lock=args.weights_lock,
        tiny_dir=args.tiny_dir,
        seed=profile.seed,
        download=args.download,
        device=device,
        dtype=args.dtype,
        detector=args.detector,
    )


def model_names(with_tracker: bool, detector: str = "vitdet") -> list[str]:
    """The catalog's models (`pipeline.weights.catalog`) a graph loads: the detector and HMR2,
    PHALP's too when it serves video jobs."""
    return [detector, "hmr2"] + (["phalp"] if with_tracker else [])


def tracker_served(args: AppArgs, profile: Profile) -> tuple[bool, bool]:
    """Whether the graph serves video jobs (PHALP tracking), and whether tracking is installed."""
    installed = tracker_available(tiny=profile.tiny_models)
    return (args.tracker if args.tracker is not None else installed), installed


def check_model_files(models: ModelSettings, names: list[str], *, shared: bool = True) -> None:
    """The full profile's files that no replica could fetch or would refuse, checked where the app
    is built (and, with the same call, by `deployments.preflight` before ``serve run``).

    `pipeline.weights.check_available`: missing public files a replica would download are left to
    it (with ``download``); a licensed file (SMPL) or, offline, any file, missing here fails the
    deploy at once with one message naming every missing file instead of replicas failing in a
    loop, and so does a file in place that differs from its lock file entry (or is too short to be
    whole). ``shared``: the builder sees the replicas' caches (one node, or a ``weights_dir`` on
    shared storage); otherwise each node's replicas check their own."""
    if models.profile != "full" or not shared:
        return
    from pipeline.weights import catalog, check_available

    check_available(catalog(names), models.roots(), download=models.download)


def build_app(args: AppArgs) -> Application:
    """Detector + MeshRegressor + Renderer (+ Tracker) behind the FastAPI ingress, sized for this cluster."""
    from .detector import Detector, DetectorSettings
    from .ingress import Ingress
    from .regressor import MeshRegressor, RegressorSettings
    from .renderer import Renderer
    from .tracker import Tracker

    if not isinstance(args, AppArgs):
        args = AppArgs.model_validate(args)
    profile = resolve_profile(args)
    gpus = _cluster_gpus()
    use_gpu = args.device == "cuda" or (args.device == "auto" and gpus > 0)
    cpu = _merged(profile.cpu_fractions, args.cpu_fractions)
    gpu = _merged(profile.gpu_fractions, args.gpu_fractions)
    if use_gpu:
        logger.info("serving on GPU (%g in the cluster): fractions %s", gpus, gpu)
    elif not _cluster_connected():
        logger.info("no Ray cluster connected (e.g. serve build): CPU shares only, %s", cpu)
    else:
        logger.warning(
            "no GPU in the Ray cluster: serving on CPU (device=%s); CPU shares %s", args.device, cpu
        )

    def actor_options(stage: str) -> dict[str, Any]:
        """The Ray resources of one deployment's replicas, from its key (`STAGE_DEPLOYMENTS`)."""
        options: dict[str, Any] = {"num_cpus": getattr(cpu, stage)}
        if stage == "tracker":
            # A video worker runs each job's chunks on pool threads; with glibc's default of up
            # to 8 malloc arenas per core, every new thread's arena keeps a chunk's worth of freed
            # memory, and the worker's memory steps up with each. Two arenas keep it level.
            options["runtime_env"] = {"env_vars": {"MALLOC_ARENA_MAX": "2"}}
        if getattr(args.placement, stage, None):
            options["resources"] = dict(getattr(args.placement, stage))
        share = getattr(gpu, stage)
        if use_gpu and (share > 0 or stage != "ingress"):  # the Ingress asks for a GPU only when given a share
            options["num_gpus"] = share
        return options

    common = model_settings(args, profile, device="cuda" if use_gpu else "cpu").model_dump()
    limits = Limits(**{**profile.limits.__dict__, **{k: v for k, v in args.limits.model_dump(exclude={"max_image_wait_s", "max_images_per_request", "body_grace_s"}).items() if v is not None}})

    if args.detector != "vitdet" and args.stage_score_thresh is not None:
        raise ValueError(f"stage_score_thresh applies to ViTDet's cascade only; detector {args.detector!r} has one stage (set score_thresh)")
    thresholds = {k: v for k, v in (("score_thresh", args.score_thresh), ("stage_score_thresh", args.stage_score_thresh)) if v is not None}
    detector = Detector.options(
        ray_actor_options=actor_options("detector"), user_config=_batch(profile.detector_batch, args.detector_batch)
    ).bind(
        # the profile's detector settings (as `python -m pipeline --profile` applies them), then
        # the thresholds the application's arguments set
        DetectorSettings(**common, **{**profile.detector_settings(args.detector), **thresholds})
    )
    with_tracker, installed = tracker_served(args, profile)
    if _cluster_connected():  # a real deploy (not `serve build`): refuse it now rather than crash-loop replicas
        check_model_files(ModelSettings(**common), model_names(with_tracker, args.detector), shared=bool(args.weights_dir) or alive_nodes() == 1)
    if with_tracker and not installed:
        raise ValueError("tracker: true, but PHALP tracking (or, for the tiny profile, its tiny factory) is not installed")
    regressor = MeshRegressor.options(
        ray_actor_options=actor_options("regressor"), user_config=_batch(profile.regressor_batch, args.regressor_batch)
    ).bind(RegressorSettings(**common, max_people=limits.max_people))
    # The overlays: video jobs' (asked by the Tracker once a job has succeeded) and the images' PNG.
    renderer = Renderer.options(ray_actor_options=actor_options("renderer")).bind(ModelSettings(**common))
    if not with_tracker:
        logger.info("video jobs left out of the graph (tracker=%s, PHALP tracking installed: %s)", args.tracker, installed)
    resources = {
        "device": "cuda" if use_gpu else "cpu",
        "cluster_gpus": gpus,
        "num_cpus": cpu.__dict__,
        "num_gpus": gpu.__dict__ if use_gpu else None,
        "tracker": bool(with_tracker),
    }
    settings = ApiSettings(
        profile=profile.name,
        detector=args.detector,
        max_upload_bytes=limits.max_upload_bytes,
        max_pixels=limits.max_pixels,
        max_people=limits.max_people,
        max_images_per_request=args.limits.max_images_per_request,
        max_image_wait_s=args.limits.max_image_wait_s,
        min_body_bytes_per_s=args.jobs.min_upload_mbit_s * 1e6 / 8,
        body_grace_s=args.limits.body_grace_s,
        auth=args.auth,
        auth_keys_file=args.auth_keys_file,
        auth_keys_env=args.auth_keys_env,
        auth_token_env=args.auth_token_env,
        public_docs=args.public_docs,
        app_info=resources,
    )
    # Without a connected cluster (``serve build``) the listen address is unknown here: the check
    # waits for the deploy, which builds again.
    if _cluster_connected():
        http = _serve_http_options()
        check_upload_time(args, http.request_timeout_s)
        if check_auth(args, http.host):
            settings = settings.model_copy(update={"require_keys": True})
    jobs = JobSettings(
        data_dir=resolve_data_dir(args),
        max_active=args.jobs.max_active,
        max_queued=args.jobs.max_queued,
        max_jobs_per_client=args.jobs.max_jobs_per_client,
        max_bytes_per_client=args.jobs.max_bytes_per_client,
        reserve_people_per_frame=args.jobs.reserve_people_per_frame,
        retention_s=args.jobs.retention_s,
        max_attempts=args.jobs.max_attempts,
        chunk_size=args.jobs.chunk_size or profile.video_chunk_size,
        video_limits=args.video_limits,
        max_disk_bytes=args.jobs.max_disk_bytes,
        min_free_disk_bytes=args.jobs.min_free_disk_bytes,
        lease_s=args.jobs.lease_s,
        max_stage_wait_s=args.jobs.max_stage_wait_s,
        stage_timeout_s=args.jobs.stage_timeout_s,
        stall_s=args.jobs.stall_s,
        job_store=args.jobs.job_store,
        job_store_env=args.jobs.job_store_env,
        callback_allow_http=args.jobs.callback_allow_http,
        callback_allow_hosts=tuple(args.jobs.callback_allow_hosts),
        callback_secret_env=args.jobs.callback_secret_env,
        callback_secrets_env=args.jobs.callback_secrets_env,
        callback_tries=args.jobs.callback_tries,
    )
    _check_store_placement(jobs)
    # Video jobs need tracking: without it the video routes answer 503 videos_unavailable.
    tracker = (
        Tracker.options(ray_actor_options=actor_options("tracker"), **_video_replicas(args.jobs)).bind(
            detector, regressor, jobs, ModelSettings(**common), renderer
        )
        if with_tracker
        else None
    )
    video_api = VideoApiSettings(
        media_dir=args.media_dir,
        sync_timeout_s=args.jobs.sync_timeout_s,
        allow_callbacks=args.jobs.allow_callbacks,
        models=ModelSettings(**common),  # exports read the SMPL model from the same caches
    )
    return Ingress.options(ray_actor_options=actor_options("ingress")).bind(
        detector, regressor, settings, tracker, jobs if tracker is not None else None, video_api, renderer
    )
