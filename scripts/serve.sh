#!/usr/bin/env bash
# Create .venv (if missing), install the project, start the whole Ray Serve graph on
# http://127.0.0.1:8000 (docs at /docs). POSE_SERVICE_PROFILE=tiny runs the tiny models.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Installing takes seconds even when nothing changed: skip it while .venv holds the project as
# installed from this very pyproject.toml and constraints.txt (their sha256, written after a
# successful install).
STAMP=.venv/.pose-service-installed
WANT="$(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(b"".join(open(f, "rb").read() for f in ("pyproject.toml", "constraints.txt"))).hexdigest())')"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -c constraints.txt -e .  # the tested versions (constraints.txt)
  echo "$WANT" > "$STAMP"
fi
# the builder's refusals as one message each, before Ray starts: a network address without client
# keys, model files the replicas cannot get (the licensed SMPL model; offline, any missing file)
.venv/bin/python -m deployments.preflight serve_config.yaml
# `serve run` joins the Ray instance recorded on this machine; after a crash that record can name
# one that is gone, and joining would wait forever: start a new local instance instead.
if [ -z "${RAY_ADDRESS:-}" ] && [ -f /tmp/ray/ray_current_cluster ] \
    && ! timeout 30 .venv/bin/ray status >/dev/null 2>&1; then
  echo "the Ray instance recorded in /tmp/ray/ray_current_cluster does not answer: starting a new one" >&2
  export RAY_ADDRESS=local
fi
exec .venv/bin/serve run serve_config.yaml "$@"
