"""``python -m deployments.preflight serve_config.yaml``: what the application builder would
refuse, checked before ``serve run`` starts anything, so a refused start ends with one message
and a non-zero exit status.

``serve run`` of a config file builds the application inside the Serve controller: a builder
that refuses marks the application failed, and ``serve run`` itself keeps running. This reads
the same file (``http_options``, the application's ``args``) and makes the builder's own checks
(`deployments.app.check_auth`, `deployments.app.check_upload_time`) in the environment
``serve run`` is about to get.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from pipeline.errors import PoseError

logger = logging.getLogger("deployments.preflight")

BUILDER = "deployments.app:build_app"


def check_config(path: Path) -> None:
    """Raise the builder's `PoseError` for a config that it would refuse."""
    from ray.serve.config import HTTPOptions

    from .app import AppArgs, check_auth, check_upload_time

    config: dict[str, Any] = yaml.safe_load(Path(path).read_text()) or {}
    http = config.get("http_options") or {}
    host = http["host"] if "host" in http else HTTPOptions().host
    timeout = http["request_timeout_s"] if "request_timeout_s" in http else HTTPOptions().request_timeout_s
    apps = [a for a in config.get("applications") or [] if a.get("import_path") == BUILDER]
    for app in apps:
        args = AppArgs.model_validate(app.get("args") or {})
        check_upload_time(args, timeout)
        check_auth(args, host)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        logger.error("usage: python -m deployments.preflight CONFIG.yaml")
        return 2
    try:
        check_config(Path(args[0]))
    except PoseError as exc:
        logger.error("%s: %s", args[0], exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
