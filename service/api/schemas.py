"""The bodies of the video and job routes, and the error codes each route documents."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from pipeline.schema import SCHEMA_VERSION, TrackSummary, VideoMeta
from service.jobs import Job


class JobProgress(BaseModel):
    frames_done: int = Field(description="frames decoded, run through the models and tracked")
    frames_total: Optional[int] = Field(default=None, description="frames in the video, once known")
    fraction: Optional[float] = Field(default=None, description="frames_done / frames_total")
    resumed_from_frame: Optional[int] = Field(
        default=None, description="where the running attempt resumed from its checkpoint (0: from the start)"
    )


class JobErrorInfo(BaseModel):
    code: str = Field(description="stable, machine-readable (e.g. video_corrupt, interrupted, cancelled)")
    message: str


class OverlayStatus(BaseModel):
    """The overlay video of a ``render=true`` job: drawn by the Renderer after the result is published."""

    state: Literal["pending", "ready", "failed"] = Field(
        description="pending: being drawn (GET overlay.mp4 answers 409 overlay_pending); ready: GET overlay.mp4; "
        "failed: it will not come, error says why (the job's result stands)"
    )
    error: Optional[JobErrorInfo] = Field(default=None, description="failed: render_failed or renderer_unavailable")


class JobStatus(BaseModel):
    """One job as a caller sees it (no server paths)."""

    id: str
    client: str = Field(description="the client whose key created the job; only it and admin keys see the job")
    kind: str
    state: Literal["queued", "running", "cancelling", "deleting", "succeeded", "failed", "cancelled"] = Field(
        description="cancelling / deleting: a running job asked to stop (POST .../cancel, DELETE), until its worker "
        "has stopped it at its next chunk; deleting lasts until the job is gone, then it answers 404"
    )
    created_at: float = Field(description="unix seconds")
    updated_at: float
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    progress: JobProgress
    timings: dict[str, float] = Field(description="seconds per stage so far: decode_s, models_s (waiting for detector and regressor), appearance_s, tracking_s, write_s, total_s")
    error: Optional[JobErrorInfo] = None
    waiting: Optional[JobErrorInfo] = Field(
        default=None,
        description="a queued job handed back because it could not go on (storage_full: the data folder's disk "
        "is full); it resumes from its checkpoint once there is room again",
    )
    options: dict[str, Any]
    idempotency_key: Optional[str] = None
    callback_url: Optional[str] = None
    attempts: int = Field(
        description="times a worker started the job: every resume counts, after a crash or a graceful hand-off "
        "(scale-down, redeploy); the running attempt's number"
    )
    crashes: int = Field(
        default=0,
        description="attempts that crashed (the worker died or hung, its lease ran out, or the job made no progress "
        "for jobs.stall_s); at jobs.max_attempts crashes the job fails interrupted. Graceful hand-offs do not count",
    )
    cancel_requested: bool
    disk_bytes: int = Field(
        default=0,
        description="bytes this job takes on the server's disk (its upload and results), or will once its expected "
        "results are written (reserved while it is queued or running); counted against jobs.max_bytes_per_client",
    )
    results: list[str] = Field(description="result formats available: json, jsonl, npz, and overlay (the MP4 of jobs with render=true, once ready)")
    overlay: Optional[OverlayStatus] = Field(
        default=None, description="render=true jobs that have or will have a result: the overlay video's own state; else null"
    )
    links: dict[str, str] = Field(description="status, result and overlay URLs")

    @classmethod
    def of(cls, job: Job) -> "JobStatus":
        links = {"self": f"/v1/jobs/{job.id}"}
        if job.state == "succeeded":
            links["result"] = f"/v1/jobs/{job.id}/result"
            if "overlay" in job.result_paths:
                links["overlay"] = f"/v1/jobs/{job.id}/overlay.mp4"
        return cls(**{**job.to_dict(), "results": result_formats(job)}, links=links)


class JobList(BaseModel):
    jobs: list[JobStatus]
    total: int = Field(description="jobs matching the filter, all pages")
    offset: int
    limit: int


class ResultSummary(BaseModel):
    """A succeeded job's result without its frames: what a page or a dashboard shows first."""

    schema_version: str = SCHEMA_VERSION
    video: VideoMeta
    tracks: list[TrackSummary]
    models: dict[str, str] = Field(default_factory=dict)


# A job's frame range, as every video route describes it (pipeline.video.frame_range).
RANGE_DESCRIPTIONS = {
    "start_frame": "process from this frame index on (0-based, inclusive); not with start_s/end_s",
    "end_frame": "stop before this frame index (exclusive; -1 or absent: to the last frame, as PHALP's video.end_frame); "
    "result frame indices stay the whole video's",
    "start_s": "process the frames whose time_s (seconds from the stream start) is at least this; not with start_frame/end_frame",
    "end_s": "stop before the first frame whose time_s is at least this (exclusive; absent: to the end)",
}


class VideoPathRequest(BaseModel):
    """The body of ``POST /pose/video`` (the call the replaced ``track.py`` wrapper received)."""

    model_config = ConfigDict(extra="forbid")

    video_path: str = Field(
        max_length=4096, json_schema_extra={"minLength": 1},  # "" is refused as path_invalid
        description="a file inside the configured media folder (relative, or absolute inside it)",
    )
    vertices: bool = Field(default=False, description="also keep the 6890 SMPL vertices per person and frame (in the NPZ result)")
    render: bool = Field(default=False, description="also render the overlay video (GET /v1/jobs/{id}/overlay.mp4)")
    callback_url: Optional[str] = Field(default=None, max_length=2048)
    start_frame: Optional[int] = Field(default=None, description=RANGE_DESCRIPTIONS["start_frame"])
    end_frame: Optional[int] = Field(default=None, description=RANGE_DESCRIPTIONS["end_frame"])
    start_s: Optional[float] = Field(default=None, description=RANGE_DESCRIPTIONS["start_s"])
    end_s: Optional[float] = Field(default=None, description=RANGE_DESCRIPTIONS["end_s"])


def result_formats(job: Job) -> list[str]:
    """The formats a succeeded job's result can be fetched in."""
    have = set(job.result_paths)
    out = []
    if {"jsonl", "meta"} <= have:
        out += ["json", "jsonl"]
    if "npz" in have:
        out.append("npz")
    if "overlay" in have:
        out.append("overlay")
    return out


# What the video routes can answer besides success (the table: pipeline.errors.CODES).
JOBS_OFF = ("videos_unavailable", "data_dir_unavailable", "job_store_unavailable")
JOB_CODES = ("unauthorized", "request_invalid", "job_not_found", *JOBS_OFF)
RESULT_CODES = (*JOB_CODES, "job_not_finished", "job_failed", "job_cancelled", "result_missing")
ACCEPT_CODES = (
    "unauthorized", "request_invalid", "video_corrupt", "video_empty", "video_unreadable", "video_unsupported_format",
    "video_no_video_stream", "video_too_large", "video_too_long", "callback_url_invalid", "callback_url_forbidden",
    "callback_url_unresolvable", "callbacks_disabled", "idempotency_key_invalid", "idempotency_key_reused",
    "too_many_jobs", "client_job_limit", "storage_full", "client_storage_limit", *JOBS_OFF,
    # a frame range (pipeline.video.frame_range); past_end and empty also as a job's failure
    "frame_range_invalid", "frame_range_mixed", "frame_range_negative", "frame_range_empty", "frame_range_past_end",
)
# the codes a job can end with, which POST /pose/video answers as its own
JOB_FAILURES = ("cancelled", "interrupted", "stage_unavailable", "stage_timeout", "overloaded", "input_missing", "internal_error")

# The operations an accepted job's id leads to (OpenAPI links: clients and fuzzers follow them).
JOB_LINKS = {
    name: {"operationId": op, "parameters": {"job_id": "$response.body#/id"}}
    for name, op in (
        ("status", "getJob"), ("result", "getJobResult"), ("summary", "getJobSummary"), ("export", "exportJob"),
        ("overlay", "getJobOverlay"), ("cancel", "cancelJob"), ("delete", "deleteJob"),
    )
}
