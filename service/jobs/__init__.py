"""The job system: jobs and their files, the store (SQLite or PostgreSQL), leases, retention."""

from service.jobs.db import Connection, Row, open_database, redact
from service.jobs.idempotency import check_replay
from service.jobs.listing import MAX_OFFSET
from service.jobs.model import Job
from service.jobs.store import JobStore

__all__ = ["MAX_OFFSET", "Connection", "Job", "JobStore", "Row", "check_replay", "open_database", "redact"]
