"""Listing jobs: the paging bounds `JobStore.list` accepts and its filter by state and client."""

from __future__ import annotations

from typing import Any

from pipeline.errors import InputError
from service.jobs.model import JOB_STATES

MAX_OFFSET = 10**9  # paging offsets past this are refused (SQL integers are 64-bit, clients' are not)


def check_paging(offset: int, limit: int, state: str | None) -> None:
    """``paging_invalid`` or ``state_invalid`` (422) unless the page and state can be listed."""
    if not (isinstance(offset, int) and 0 <= offset <= MAX_OFFSET):
        raise InputError("paging_invalid", f"expected 0 <= offset <= {MAX_OFFSET}, got {offset!r}")
    if not (isinstance(limit, int) and 1 <= limit <= 1000):
        raise InputError("paging_invalid", f"expected 1 <= limit <= 1000, got {limit!r}")
    if state is not None and state not in JOB_STATES:
        raise InputError("state_invalid", f"expected one of {', '.join(JOB_STATES)}, got {state!r}")


def list_filter(state: str | None, client: str | None) -> tuple[str, dict[str, Any]]:
    """The WHERE clause (or '') and its arguments for jobs of ``state`` and ``client`` (None: any)."""
    conditions: list[str] = []
    args: dict[str, Any] = {}
    if state:
        conditions.append("state = :state")
        args["state"] = state
    if client is not None:
        conditions.append("client = :client")
        args["client"] = client
    where = "WHERE " + " AND ".join(conditions) if conditions else ""
    return where, args
