"""The service's command line: ``python -m service keys new CLIENT`` makes a client key.

The pipeline's own commands (images, videos, exports, weights) are ``python -m pipeline``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

from pipeline.errors import PoseError
from service.auth import check_client_id, key_line, new_key

logger = logging.getLogger(__name__)


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
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        result = args.func(args)
    except PoseError as exc:
        json.dump(exc.to_dict(), sys.stdout, indent=1)
        sys.stdout.write("\n")
        logger.error("%s", exc)
        return 2
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0
