#!/usr/bin/env bash
# Create .venv (if missing), install the project with its test extras, run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k hmr2`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# the versions the suite passed with (constraints.txt); pyproject.toml keeps the ranges
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
# the project is installed from this pyproject.toml and constraints.txt: scripts/serve.sh need not install it again
.venv/bin/python -c 'import hashlib; print(hashlib.sha256(b"".join(open(f, "rb").read() for f in ("pyproject.toml", "constraints.txt"))).hexdigest())' > .venv/.pose-service-installed
exec .venv/bin/python -m pytest -q "$@"
