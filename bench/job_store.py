"""Milliseconds per job-store call, on SQLite and on PostgreSQL, with a table already holding many
jobs: what admission costs now that every new job is checked against the client's jobs and bytes
and the disk room left after all accepted jobs' reservations (`service.jobs.usage`).

    python bench/job_store.py [--jobs 0 5000] [--backends sqlite postgresql]
                              [--postgres URL]

Rows: ``create`` (a job with no disk bounds: the baseline), ``create+reserve`` (the same with a
reservation, the client's byte limit and the disk room checked in its transaction), ``usage``
(the figures an upload reads before it streams), ``get``, ``heartbeat`` of a running job.
``x create`` is the time per call over ``create``'s at the same size. The jobs already there are
spread over 50 clients, a quarter queued or running.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

from _common import print_table, time_call  # noqa: E402
from pg_helpers import isolated_schema, server_url  # noqa: E402

from service.jobs import JobStore  # noqa: E402
from service.jobs.usage import Reservation  # noqa: E402

CLIENTS = 50


def _fill(store: JobStore, jobs: int) -> None:
    """``jobs`` jobs of ``CLIENTS`` clients; every fourth left queued, the rest finished."""
    for i in range(jobs):
        job = store.create(client=f"c{i % CLIENTS}", reservation=Reservation(result_bytes=1000 + i))
        if i % 4:
            store.cancel(job.id)


def bench(backend: str, jobs: int, server: str, seconds: float) -> list[list[object]]:
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        url = None if backend == "sqlite" else stack.enter_context(isolated_schema(server, "pose_bench"))[0]
        store = stack.enter_context(JobStore(Path(tmp) / "data", url=url, max_active=1, max_queued=10**9, retention_s=None))
        _fill(store, jobs)
        store.create(client="c0")
        running = store.claim_next(30.0)  # the oldest queued job
        assert running is not None
        reserve = Reservation(result_bytes=5000, client_max_bytes=2**40, room=lambda: 2**40)
        timed = {
            "create": lambda: store.create(client="c1"),
            "create+reserve": lambda: store.create(client="c1", reservation=reserve),
            "usage": lambda: store.usage("c1"),
            "get": lambda: store.get(running.id),
            "heartbeat": lambda: store.heartbeat(running.id, running.attempts, 30.0),
        }
        ms = {name: 1000 * time_call(fn, min_seconds=seconds, min_runs=20) for name, fn in timed.items()}
    return [[backend, jobs, name, v, v / ms["create"]] for name, v in ms.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, nargs="+", default=[0, 5000], help="jobs in the table before timing")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--postgres", default=server_url(), help="a PostgreSQL server (default: $POSE_TEST_POSTGRES_URL or the local one)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed work per row")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = [row for backend in args.backends for jobs in args.jobs for row in bench(backend, jobs, args.postgres, args.seconds)]
    print_table("job store calls (ms per call)", ["store", "jobs", "call", "ms", "x create"], rows)


if __name__ == "__main__":
    main()
