"""The job model: a job's states, the `Job` record as stored and as callers see it (`Job.to_dict`),
why a job failed (`JobError`), and its options as stored JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from pipeline.errors import InputError
from service.auth import DEFAULT_CLIENT

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
# What callers see of a running job whose stop was asked (`Job.shown_state`); not stored states.
STOPPING_STATES: tuple[str, ...] = ("cancelling", "deleting")
# The ``cancel_requested`` column: 0 nothing asked; CANCEL: stop and end cancelled; DELETE: stop,
# then delete the job and its folder.
CANCEL, DELETE = 1, 2
# The overlay video of a ``render=true`` job, an artifact drawn after the result is published:
# pending (until drawn), ready (a result file ``overlay``) or failed (with its own error).
OverlayState = Literal["pending", "ready", "failed"]
OVERLAY_STATES: tuple[str, ...] = ("pending", "ready", "failed")


@dataclass(frozen=True)
class JobError:
    """Why a job failed: a stable code and a message for humans."""

    code: str  # stable, e.g. "video_corrupt", "interrupted", "cancelled"
    message: str  # human-readable reason


@dataclass(frozen=True)
class Job:
    """One job as stored. Paths are absolute; `to_dict` leaves them out of what callers see."""

    id: str  # uuid4 hex, 32 characters
    kind: str  # what the job does, e.g. "video"
    state: str  # one of JOB_STATES
    created_at: float  # unix seconds
    updated_at: float  # unix seconds of the last change (progress doubles as a heartbeat)
    started_at: float | None  # unix seconds of the latest claim
    finished_at: float | None  # unix seconds it reached a terminal state
    frames_done: int  # frames processed so far
    frames_total: int | None  # frames expected, once known
    timings: dict[str, float]  # seconds per stage, as last reported by the worker
    error: JobError | None  # set for failed and cancelled jobs
    input_path: Path | None  # the input file (inside the job folder, or a referenced media file)
    options: dict[str, Any]  # the caller's processing options, as JSON
    idempotency_key: str | None  # the caller's key: a retried create returns this job
    callback_url: str | None  # where the caller wants to be told about completion
    attempts: int  # how many times a worker has started it (hand-offs included); the running attempt's fencing token
    cancel_requested: bool  # cancel was asked while it ran; the worker stops at the next chunk
    client: str = DEFAULT_CLIENT  # the client that created it: only it (and admins) may see it
    result_paths: dict[str, Path] = field(default_factory=dict)  # result name -> file
    checkpoint: dict[str, Any] | None = None  # the last committed checkpoint (small; see `save_checkpoint`)
    lease_until: float | None = None  # unix seconds of the database's clock; a running job past it may be taken over
    crashes: int = 0  # attempts that crashed (lease ran out, worker restarted, no progress); max_attempts counts these
    delete_requested: bool = False  # delete was asked while it ran; it is deleted once stopped
    overlay_state: str | None = None  # one of OVERLAY_STATES for render=true jobs, else None
    overlay_error: JobError | None = None  # why the overlay failed (the job's result stands)
    disk_bytes: int = 0  # what its folder takes, or will with its expected results (`service.jobs.usage`)

    @property
    def shown_state(self) -> str:
        """The state callers see: a running job asked to stop shows ``cancelling`` or
        ``deleting`` until its worker has stopped it (the stored state stays ``running``); one
        asked to be deleted shows ``deleting`` until it is gone (its worker ends it, then deletes it)."""
        if self.delete_requested:
            return "deleting"
        if self.state == "running" and self.cancel_requested:
            return "cancelling"
        return self.state

    @property
    def overlay(self) -> dict[str, Any] | None:
        """The overlay as a caller sees it: ``{state, error}`` for a render job that has or will
        have a result; None otherwise (no overlay asked for, or the job failed or was cancelled)."""
        if not self.options.get("render") or self.state in ("failed", "cancelled"):
            return None
        state = self.overlay_state
        if state is None:  # a job accepted before overlays had their own state
            state = "ready" if "overlay" in self.result_paths else "pending"
        error = self.overlay_error if state == "failed" else None
        return {"state": state, "error": None if error is None else {"code": error.code, "message": error.message}}

    @property
    def progress(self) -> float | None:
        """Fraction done in [0, 1], or None before the frame count is known."""
        if not self.frames_total:
            return None
        return min(1.0, self.frames_done / self.frames_total)

    def to_dict(self) -> dict[str, Any]:
        """What a caller may see: no server paths, results by name only."""
        return {
            "id": self.id,
            "client": self.client,
            "kind": self.kind,
            "state": self.shown_state,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "progress": {
                "frames_done": self.frames_done,
                "frames_total": self.frames_total,
                "fraction": self.progress,
                "resumed_from_frame": None if not self.checkpoint else self.checkpoint.get("resumed_from"),
            },
            "timings": dict(self.timings),
            # a queued job's error is why it waits (`JobStore.release`), not a failure
            "error": None if self.error is None or self.state == "queued" else {"code": self.error.code, "message": self.error.message},
            "waiting": None if self.error is None or self.state != "queued" else {"code": self.error.code, "message": self.error.message},
            "options": dict(self.options),
            "idempotency_key": self.idempotency_key,
            "callback_url": self.callback_url,
            "attempts": self.attempts,
            "crashes": self.crashes,
            "cancel_requested": self.cancel_requested,
            "disk_bytes": self.disk_bytes,
            "results": sorted(self.result_paths),
            "overlay": self.overlay,
        }


def options_json(options: Mapping[str, Any] | None) -> str:
    """A job's options as stored: JSON, or ``job_options_invalid`` (422) for what JSON cannot hold."""
    try:
        return json.dumps(dict(options or {}), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError("job_options_invalid", f"expected JSON-serialisable options, got {exc}") from exc
