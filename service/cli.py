"""The service's command line: ``python -m service keys new CLIENT`` makes a client key.

The pipeline's own commands (images, videos, exports, weights) are ``python -m pipeline``."""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from pipeline.cli import run
from service.auth import check_client_id, key_line, new_key


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description="pose-service administration: client keys.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("keys", help="client keys for the service")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("new", help="a fresh random key for CLIENT, printed once, and the keys-file line that accepts it")
    k.add_argument("client", help="client id (letters, digits, '.', '_', '-'): the owner of the jobs made with the key")
    k.add_argument("--admin", action="store_true", help="the key sees and manages every client's jobs")
    k.set_defaults(func=cmd_keys_new)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)
