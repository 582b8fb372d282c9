"""The errors the job store answers with for a job that is not there (or not the caller's) or is not
in the state an operation needs."""

from __future__ import annotations

from pipeline.errors import PoseError


def not_found(job_id: object) -> PoseError:
    return PoseError("job_not_found", f"expected an existing job id, got {job_id!r}", status=404)


def conflict(job_id: str, state: str, expected: str) -> PoseError:
    return PoseError(
        "job_state_conflict",
        f"expected job {job_id} to be {expected}, got {state}",
        status=409,
        details={"state": state},
    )
