"""The service's command line: ``python -m service keys new CLIENT`` makes a client key;
``python -m service cleanup --dry-run`` reports which job folders orphan cleanup would remove.

The pipeline's own commands (images, videos, exports, weights) are ``python -m pipeline``."""

from __future__ import annotations

import argparse
import logging
from typing import Any, Sequence

from pipeline.cli import run
from service.auth import check_client_id, key_line, new_key
from service.jobs import redact
from service.jobs.cleanup import log_scan, remove_paths

log = logging.getLogger(__name__)


def cmd_keys_new(args: argparse.Namespace) -> dict[str, Any]:
    client = check_client_id(args.client)
    key = new_key()  # shown this once: only its digest is kept, in the line below
    return {
        "client": client,
        "admin": args.admin,
        "key": key,
        "line": key_line(client, key, args.admin),
        "next": "give the key to the client; add the line to the keys file ($POSE_SERVICE_KEYS_FILE) on every node",
    }


def cmd_cleanup(args: argparse.Namespace) -> dict[str, Any]:
    """Orphan cleanup as the video workers run it at start, on demand: with ``--dry-run`` only the
    report of what it would remove and what it keeps, and why."""
    from service.settings import JobSettings, default_data_dir

    settings = JobSettings(data_dir=args.data_dir or default_data_dir(), job_store=args.job_store)
    with settings.open_store() as store:
        scan = store.scan_orphans(orphan_grace_s=args.grace_s)
        log_scan(scan)
        removed = [] if args.dry_run else remove_paths(scan.remove)
        if removed:
            log.info("removed %d orphaned job folders and uploads", len(removed))
        return {
            "data_dir": str(store.data_dir),
            "job_store": redact(store.url),
            "dry_run": args.dry_run,
            **scan.to_dict(),
            "removed": sorted(removed),
        }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service", description="pose-service administration: client keys, job folder cleanup."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("keys", help="client keys for the service")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("new", help="a fresh random key for CLIENT, printed once, and the keys-file line that accepts it")
    k.add_argument("client", help="client id (letters, digits, '.', '_', '-'): the owner of the jobs made with the key")
    k.add_argument("--admin", action="store_true", help="the key sees and manages every client's jobs")
    k.set_defaults(func=cmd_keys_new)
    c = sub.add_parser(
        "cleanup",
        help="remove job folders of this job store whose job is gone, and stale uploads (what each video worker does "
        "at start); folders of other stores, folders without a store id, and anything while the store is empty are kept",
    )
    c.add_argument("--dry-run", action="store_true", help="only report what would be removed and what is kept, and why")
    c.add_argument("--data-dir", help="the service's data_dir (default: $POSE_SERVICE_DATA_DIR, else ~/.cache/pose-service/data)")
    c.add_argument("--job-store", help="the job store URL (default: $POSE_JOB_STORE_URL, else SQLite in the data folder)")
    c.add_argument("--grace-s", type=float, default=3600.0, help="leave folders and uploads younger than this (seconds)")
    c.set_defaults(func=cmd_cleanup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)
