"""Checks of the arguments callers pass to the store: its bounds (`JobStore`), and a new job's kind,
callback URL, input and client (`JobStore.create`; the idempotency key is checked in
`service.jobs.idempotency`, the options in `service.jobs.model`)."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.errors import InputError


def check_store_args(max_active: int, max_queued: int, retention_s: float | None) -> None:
    if max_active < 1:
        raise ValueError(f"max_active must be at least 1, got {max_active}")
    if max_queued < 0:
        raise ValueError(f"max_queued must be at least 0, got {max_queued}")
    if retention_s is not None and retention_s <= 0:
        raise ValueError(f"retention_s must be positive or None, got {retention_s}")


def check_kind(kind: str) -> None:
    if not kind or not isinstance(kind, str):
        raise InputError("job_kind_invalid", f"expected a job kind such as 'video', got {kind!r}")


def check_create_args(callback_url: str | None, input_file: Path | None, move_input: bool, client: str) -> None:
    """``callback_url_invalid`` for a callback that is not an http(s) URL; ValueError for a
    ``move_input`` without a file or a missing client."""
    if callback_url is not None and not re.match(r"https?://[^\s/]+", str(callback_url)):
        raise InputError("callback_url_invalid", f"expected an http(s) URL, got {callback_url!r}")
    if move_input and input_file is None:
        raise ValueError("move_input needs an input_file")
    if not isinstance(client, str) or not client:
        raise ValueError(f"expected the id of the client creating the job, got {client!r}")
