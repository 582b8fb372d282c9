"""``python -m deployments.preflight serve_config.yaml``: what the application builder would
refuse, checked before ``serve run`` starts anything, so a refused start ends with one message
and a non-zero exit status.

``serve run`` of a config file builds the application inside the Serve controller: a builder
that refuses marks the application failed, and ``serve run`` itself keeps running. This reads
the same file (``http_options``, the application's ``args``) and makes the builder's own checks
(`deployments.app.check_auth`, `deployments.app.check_upload_time`,
`deployments.app.check_model_files`) in the environment ``serve run`` is about to get. It never
starts or joins Ray. Every refusal is reported, each as one message, and the exit status is 2.

Model files: the builder's own call, for the profile it will build (the ``profile`` argument,
else ``$POSE_SERVICE_PROFILE``, else full; the tiny profile writes its models itself and needs
none) and the models of its graph (ViTDet and HMR2.0, PHALP's files too when the graph serves
video jobs: ``tracker`` argument, else whenever tracking is installed), in the caches its
arguments name (``weights_dir``, ``weights_mirrors``, ``weights_lock``; otherwise the upstream
caches of this environment). "Required" is what the replicas cannot get on their own:

* the licensed SMPL model, which is never downloaded: missing, the start stops here;
* a file in place that fails the checks every start makes (too short to be whole, or different
  from the size and sha256 the lock file recorded): the start stops here;
* a missing public file: the replicas download it on their first start, as they always have,
  so it stops nothing here, unless no download can happen: ``download: false``,
  ``POSE_OFFLINE=1``, or a cache folder that cannot be written. When the start stops for any
  reason, the message also names the public files still to download, so it lists every file
  that is missing or unusable, where each was looked for, and how to provide it.

The files are checked when this machine's caches are the replicas': a ``weights_dir`` (shared
storage on a cluster), or a Ray instance on this machine (no ``$RAY_ADDRESS``, or ``local``).
With ``$RAY_ADDRESS`` naming another cluster, the builder checks them there (it can count its
nodes); this check leaves them alone.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from pipeline.errors import PoseError

logger = logging.getLogger("deployments.preflight")

BUILDER = "deployments.app:build_app"


def _local_caches(weights_dir: str | None) -> bool:
    """Whether this machine's caches are those the replicas will read."""
    return bool(weights_dir) or os.environ.get("RAY_ADDRESS", "") in ("", "local")


def config_errors(path: Path) -> list[PoseError]:
    """Every refusal of the builder for this config file, in the order it would meet them."""
    from ray.serve.config import HTTPOptions

    from .app import AppArgs, check_auth, check_model_files, check_upload_time, model_names, model_settings, resolve_profile, tracker_served

    config: dict[str, Any] = yaml.safe_load(Path(path).read_text()) or {}
    http = config.get("http_options") or {}
    host = http["host"] if "host" in http else HTTPOptions().host
    timeout = http["request_timeout_s"] if "request_timeout_s" in http else HTTPOptions().request_timeout_s
    apps = [a for a in config.get("applications") or [] if a.get("import_path") == BUILDER]
    errors: list[PoseError] = []
    for app in apps:
        args = AppArgs.model_validate(app.get("args") or {})
        profile = resolve_profile(args)
        models = model_settings(args, profile)
        with_tracker, _ = tracker_served(args, profile)
        checks = (
            lambda: check_upload_time(args, timeout),
            lambda: check_auth(args, host),
            lambda: check_model_files(models, model_names(with_tracker, args.detector), shared=_local_caches(args.weights_dir)),
        )
        for check in checks:
            try:
                check()
            except PoseError as exc:
                errors.append(exc)
    return errors


def check_config(path: Path) -> None:
    """Raise the builder's first `PoseError` for a config that it would refuse."""
    errors = config_errors(path)
    if errors:
        raise errors[0]


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        logger.error("usage: python -m deployments.preflight CONFIG.yaml")
        return 2
    try:
        errors = config_errors(Path(args[0]))
    except (ValueError, OSError, yaml.YAMLError) as exc:  # an unreadable file, arguments the builder rejects
        logger.error("%s: %s", args[0], exc)
        return 2
    for exc in errors:
        logger.error("%s: %s", args[0], exc)
    if errors:
        return 2
    print(f"{args[0]}: nothing the builder would refuse (keys, upload limits, model files)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
