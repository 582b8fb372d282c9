"""The tiny profile's model caches: written once by the project's factory, then reused.

Several replicas (on one node, or tests started twice) may ask at the same moment, so each
writer fills a private temporary folder and renames it into place; a rename onto an existing
folder fails, and the loser keeps the winner's copy. The folder name carries a fingerprint of
the factory's source, so changing a tiny model never serves stale files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipeline.weights import CacheRoots

logger = logging.getLogger(__name__)

_COMPLETE = "COMPLETE"


def default_tiny_dir() -> Path:
    """``$POSE_TINY_DIR``, else ``~/.cache/pose-service/tiny``."""
    env = os.environ.get("POSE_TINY_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pose-service" / "tiny"


def factory_fingerprint() -> str:
    """Hash of the tiny factory's source files (changes whenever a tiny model changes)."""
    spec = importlib.util.find_spec("pipeline.tiny")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pipeline.tiny is not installed")
    h = hashlib.sha256()
    for folder in spec.submodule_search_locations:
        for path in sorted(Path(folder).glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def tiny_roots(base: str | os.PathLike[str] | None = None, *, seed: int = 0) -> CacheRoots:
    """Cache roots holding every tiny model, writing them first if this is the first start."""
    from pipeline.tiny import write_tiny_caches

    base = Path(base).expanduser() if base is not None else default_tiny_dir()
    final = base / f"seed{seed}-{factory_fingerprint()}"
    if (final / _COMPLETE).is_file():
        return CacheRoots.under(final)
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=base))
    try:
        written = write_tiny_caches(CacheRoots.under(tmp), seed=seed)
        (tmp / _COMPLETE).write_text("\n".join(str(p.relative_to(tmp)) for p in written) + "\n")
        try:
            os.rename(tmp, final)
            logger.info("tiny models written to %s (%d files)", final, len(written))
        except OSError:
            if not (final / _COMPLETE).is_file():
                raise
            logger.info("tiny models already written to %s by another process", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return CacheRoots.under(final)


def runner_settings() -> dict[str, Any]:
    """Keyword arguments for `VideoRunner.from_cache` that match the served ``tiny`` profile
    (detector options, chunk size, people per frame), so in-process and served results can be
    compared."""
    from configs.profiles import tiny

    return tiny().runner_options()
