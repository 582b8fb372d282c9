#!/usr/bin/env bash
# Create .venv (if missing), install the project, start the whole Ray Serve graph on
# http://127.0.0.1:8000 (docs at /docs). POSE_SERVICE_PROFILE=tiny runs the tiny models.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
# the builder's refusals (e.g. a network address without client keys) as one message, before Ray starts
.venv/bin/python -m deployments.preflight serve_config.yaml
# `serve run` joins the Ray instance recorded on this machine; after a crash that record can name
# one that is gone, and joining would wait forever: start a new local instance instead.
if [ -z "${RAY_ADDRESS:-}" ] && [ -f /tmp/ray/ray_current_cluster ] \
    && ! timeout 30 .venv/bin/ray status >/dev/null 2>&1; then
  echo "the Ray instance recorded in /tmp/ray/ray_current_cluster does not answer: starting a new one" >&2
  export RAY_ADDRESS=local
fi
exec .venv/bin/serve run serve_config.yaml "$@"
