"""Cache layout: where each upstream project keeps its files (`CacheRoots`), the folder of each
root in a ``--cache-dir`` folder, and the environment variables that move them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

RootName = Literal["hmr2", "phalp", "detectron2"]

# The folder of each root inside one ``--cache-dir`` folder (`CacheRoots.under`). A mirror
# serves the same layout: ``<base>/<folder>/<path in the root>``.
ROOT_FOLDERS: dict[str, str] = {"hmr2": "4DHumans", "phalp": "phalp", "detectron2": "iopath_cache"}

MIRRORS_ENV = "POSE_WEIGHTS_MIRRORS"  # comma-separated base URLs, tried after the configured ones
LOCK_ENV = "POSE_WEIGHTS_LOCK"  # where the lock file of digests lives (upstream cache layout)
LOCK_NAME = "weights.lock.json"


@dataclass(frozen=True)
class CacheRoots:
    """Where each upstream project keeps its files, and where else they may be obtained."""

    hmr2: Path  # 4D-Humans' CACHE_DIR_4DHUMANS
    phalp: Path  # PHALP's cache (weights/, 3D/)
    detectron2: Path  # iopath's download cache, as detectron2's checkpointer uses it
    # Base URLs tried, in order, before a file's published addresses; each serves the layout of
    # a ``--cache-dir`` folder (``<base>/phalp/weights/hmar_v2_weights.pth``). $POSE_WEIGHTS_MIRRORS
    # adds more after these.
    mirrors: tuple[str, ...] = ()
    # The lock file of recorded sizes and digests (`DigestLock`); None: nothing recorded or enforced.
    lock: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "CacheRoots":
        """Defaults of the upstream projects, overridden by ``POSE_*_CACHE`` variables; the lock
        file in ``~/.cache/pose-service`` unless ``$POSE_WEIGHTS_LOCK`` names another."""
        env = os.environ if environ is None else environ
        home = Path(env.get("HOME") or Path.home())
        iopath_default = Path(env["FVCORE_CACHE"]) if env.get("FVCORE_CACHE") else home / ".torch" / "iopath_cache"
        lock = Path(env[LOCK_ENV]) if env.get(LOCK_ENV) else home / ".cache" / "pose-service" / LOCK_NAME
        return cls(
            hmr2=Path(env.get("POSE_4DHUMANS_CACHE") or home / ".cache" / "4DHumans").expanduser(),
            phalp=Path(env.get("POSE_PHALP_CACHE") or home / ".cache" / "phalp").expanduser(),
            detectron2=Path(env.get("POSE_DETECTRON2_CACHE") or iopath_default).expanduser(),
            lock=lock.expanduser(),
        )

    @classmethod
    def under(cls, base: str | os.PathLike[str]) -> "CacheRoots":
        """All three roots side by side in one folder (tiny profile, tests), the lock file beside them."""
        base = Path(base)
        return cls(
            hmr2=base / ROOT_FOLDERS["hmr2"],
            phalp=base / ROOT_FOLDERS["phalp"],
            detectron2=base / ROOT_FOLDERS["detectron2"],
            lock=base / LOCK_NAME,
        )

    def root(self, name: RootName) -> Path:
        return getattr(self, name)

    def to_dict(self) -> dict[str, str]:
        return {name: str(self.root(name)) for name in ROOT_FOLDERS}  # type: ignore[arg-type]
