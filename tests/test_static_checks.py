"""The layering and the code checks the project keeps green, run as part of the suite so the one
test command (and CI) enforces them: import-linter's contracts (pyproject.toml
``[tool.importlinter]``: deployments -> service -> pipeline -> configs, Ray only in deployments,
no import cycles), ruff, and mypy on the pipeline and the service."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def _tool(name: str) -> str:
    """The tool installed beside this interpreter (the test extras); missing: skip, in CI fail."""
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        msg = f"{name} is not installed (pip install -e '.[test]' installs it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return found


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_import_contracts_are_kept() -> None:
    done = _run(_tool("lint-imports"), "--no-cache")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_ruff_finds_nothing() -> None:
    done = _run(_tool("ruff"), "check", "--no-cache", "pipeline", "service", "deployments", "configs", "tests", "bench", "scripts")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_mypy_finds_nothing_in_the_pipeline_and_the_service() -> None:
    done = _run(_tool("mypy"), "--no-incremental")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert done.stdout.startswith("Success"), done.stdout[-2000:]
