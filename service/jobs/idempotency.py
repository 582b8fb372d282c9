"""Idempotency keys: a retried create returns the job the first request made.

Keys are one client's: the same key from two clients makes two jobs. A job keeps a digest of the
request that created it (the ``request_sha256`` option); a replay with another payload under the
same key is refused (422 ``idempotency_key_reused``), as the IETF Idempotency-Key draft asks, and
the upload a replay brought along is dropped.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Mapping

from pipeline.errors import InputError
from service.jobs.model import Job

FINGERPRINT_OPTION = "request_sha256"  # job option: digest of the request that created the job


def check_key(idempotency_key: str | None) -> None:
    """``idempotency_key_invalid`` unless the key is None or 1 to 255 characters."""
    if idempotency_key is not None and not (isinstance(idempotency_key, str) and 0 < len(idempotency_key) <= 255):
        raise InputError("idempotency_key_invalid", f"expected 1 to 255 characters, got {idempotency_key!r}")


def with_fingerprint(options: Mapping[str, Any] | None, fingerprint: str | None) -> Mapping[str, Any] | None:
    """``options`` with the request's ``fingerprint`` kept among them (as they are without one)."""
    if fingerprint is not None:
        options = {**(options or {}), FINGERPRINT_OPTION: str(fingerprint)}
    return options


def check_replay(job: Job, fingerprint: str | None) -> Job:
    """``job``, found by a request's idempotency key, if the request is the one that made it."""
    kept = job.options.get(FINGERPRINT_OPTION)
    if fingerprint is not None and kept is not None and kept != fingerprint:
        raise InputError(
            "idempotency_key_reused",
            f"the Idempotency-Key was used for another request (job {job.id}); use a new key for a new request",
            status=422,
            details={"job_id": job.id},
        )
    return job


def discard(input_file: Path | None, moved: bool) -> None:
    """Drop an upload that a replayed request made redundant (never a referenced file)."""
    if moved and input_file is not None:
        with contextlib.suppress(FileNotFoundError):
            Path(input_file).unlink()
