"""Every documented command that talks to the service or to the command line runs as written.

The fenced ``bash`` blocks of README.md and docs/*.md are read in order; each line that calls
``python -m pipeline``, ``python -m service``, ``python -m deployments.preflight`` or ``curl`` on
the service (and the shell lines that keep a job id or wait for a job) runs in a fresh folder
holding the sample media, with the tiny models in the default cache folders of a temporary
home, against the tiny service. A command fails the test when it exits non-zero or prints
nothing (for ``> file``, ``-o``, ``--out``, ``--out-dir`` and ``-OJ``: when the file it writes
is missing or empty). The only rewrite is the service's address: ``localhost:8000`` becomes the
port this test serves on.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO

pytest.importorskip("ray.serve")

from serve_helpers import serve_tiny  # noqa: E402

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# The lines this test runs: the CLI, the service's address, and the shell lines around them.
RUNS = re.compile(r"^(python -m (pipeline|service|deployments\.preflight)\b|curl\b.*localhost:8000|[A-Z_]+=\$\(curl\b|until curl\b)")
# Documented lines this machine cannot run, and why (each must still be found in the docs).
NOT_RUN = {
    "callback_url=https://hooks.example.com/pose": "a callback host must resolve when the job is accepted; the test machine has no DNS",
}
ASSIGNMENT = re.compile(r"^([A-Z_]+)=\$\((.*)\)$")


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str


def documented_commands() -> list[Command]:
    """The runnable lines of every bash block, in document order, continuations joined and
    trailing comments kept (the shell ignores them)."""
    found: list[Command] = []
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        inside = False
        pending, start = "", 0
        for number, raw in enumerate(lines, 1):
            fence = raw.strip()
            if fence.startswith("```"):
                inside = not inside and fence[3:].strip().split(" ")[0] == "bash"
                continue
            if not inside:
                continue
            if not pending:
                start = number
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1] + " "
                continue
            text = (pending + raw).strip()
            pending = ""
            if RUNS.match(text):
                found.append(Command(doc.relative_to(REPO).as_posix(), start, text))
    return found


def _written_target(argv: list[str], text: str) -> str | None:
    """The file or folder a command writes instead of printing, when it names one."""
    for flag in ("--out", "--out-dir", "-o"):
        if flag in argv[:-1]:
            return argv[argv.index(flag) + 1]
    match = re.search(r"(?<!\S)>\s*(\S+)", text.split(" #")[0])
    return match.group(1) if match else None


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_roots) -> Path:
    """A home whose default model caches (4D-Humans, PHALP, detectron2's iopath) hold the tiny models."""
    home = tmp_path_factory.mktemp("home")
    for src, dest in (
        (tiny_roots.hmr2, home / ".cache" / "4DHumans"),
        (tiny_roots.phalp, home / ".cache" / "phalp"),
        (tiny_roots.detectron2, home / ".torch" / "iopath_cache"),
    ):
        shutil.copytree(src, dest)
    return home


def test_every_documented_command_runs_as_written(tmp_path: Path, home: Path, tiny_roots) -> None:
    from pipeline.tiny.media import write_demo_media

    commands = documented_commands()
    assert len(commands) >= 40, f"found only {len(commands)} documented commands: is the scan broken?"
    skipped = {needle: [c for c in commands if needle in c.text] for needle in NOT_RUN}
    assert all(skipped.values()), f"documented lines the test skips are gone from the docs: {skipped}"
    work = tmp_path / "work"
    work.mkdir()
    (work / "serve_config.yaml").symlink_to(REPO / "serve_config.yaml")  # the docs run in the checkout
    media = tmp_path / "media"
    write_demo_media(media / "uploads" / "2024")  # the drop-in route's example path
    env = {
        **os.environ,
        "HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # the project's environment
        "OMP_NUM_THREADS": "1",
        "POSE_KEY": "",
    }
    for name in ("POSE_4DHUMANS_CACHE", "POSE_PHALP_CACHE", "POSE_DETECTRON2_CACHE", "FVCORE_CACHE", "POSE_WEIGHTS_LOCK",
                 "POSE_SERVICE_KEYS", "POSE_SERVICE_KEYS_FILE", "POSE_SERVICE_TOKEN", "POSE_OFFLINE"):
        env.pop(name, None)
    ran: list[str] = []
    with serve_tiny(tiny_roots.hmr2.parent, media_dir=str(media)) as url:
        address = url.removeprefix("http://")
        for command in commands:
            where = f"{command.doc}:{command.line}: {command.text}"
            if any(needle in command.text for needle in NOT_RUN):
                continue
            text = command.text.replace("localhost:8000", address)
            assignment = ASSIGNMENT.match(text.split(" #")[0].strip())
            script = f'{assignment.group(1)}="$({assignment.group(2)})"; printf %s "${assignment.group(1)}"' if assignment else text
            before = set(work.iterdir())
            started = time.monotonic()
            done = subprocess.run(["bash", "-c", f"set -euo pipefail; {script}"], cwd=work, env=env,
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, (
                f"{where}\nexit {done.returncode} after {time.monotonic() - started:.1f} s\n"
                f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-3000:]}"
            )
            if assignment:
                assert done.stdout.strip(), f"{where}: set {assignment.group(1)} to nothing"
                env[assignment.group(1)] = done.stdout.strip()
            elif not text.startswith("until "):
                argv = shlex.split(text, comments=True)
                target = _written_target(argv, text)
                if "-OJ" in argv:
                    new = [p for p in set(work.iterdir()) - before if p.is_file() and p.stat().st_size > 0]
                    assert new, f"{where}: wrote no file"
                elif target is not None:
                    path = work / os.path.expanduser(target)
                    assert path.exists(), f"{where}: {target} was not written"
                    assert path.is_dir() and any(path.iterdir()) or path.is_file() and path.stat().st_size > 0, (
                        f"{where}: {target} is empty"
                    )
                else:
                    assert done.stdout.strip(), f"{where}: printed nothing (stderr: {done.stderr[-2000:]})"
            ran.append(where)
    assert len(ran) == len(commands) - sum(len(v) for v in skipped.values())
