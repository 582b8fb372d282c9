"""How a model file is described as data: where it lives (`WeightFile`), where it is published
(`Download`), and whether it was found (`FileStatus`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .cache import CacheRoots, RootName
from .lockfile import lock_name


@dataclass(frozen=True)
class Download:
    """One published file; an archive is unpacked into its root after download."""

    name: str
    root: RootName
    target: str  # where the downloaded file itself is kept, relative to the root
    urls: tuple[str, ...]  # official location first, then mirrors
    sha256: str | None = None
    size: int | None = None
    extract: bool = False


@dataclass(frozen=True)
class WeightFile:
    """A file a model needs, at its place in the official cache layout."""

    key: str  # stable id, e.g. "hmr2.checkpoint"
    root: RootName
    path: str  # relative to the root
    description: str
    download: Download | None = None  # None: never downloaded (licensed or user-provided)
    # Other accepted locations, as (root, relative path), in order of preference.
    alternatives: tuple[tuple[RootName, str], ...] = ()
    sha256: str | None = None
    min_bytes: int = 1
    how_to_get: str = ""  # shown when the file is missing and cannot be downloaded
    # Raises if the file cannot be used (wrong format, truncated); run after download.
    check: Callable[[Path], None] | None = field(default=None, compare=False)

    def placements(self) -> list[tuple[RootName, str]]:
        """Every accepted (root, relative path), the official one first."""
        return [(self.root, self.path), *self.alternatives]

    def candidates(self, roots: CacheRoots) -> list[Path]:
        return [roots.root(r) / p for r, p in self.placements()]


@dataclass(frozen=True)
class FileStatus:
    file: WeightFile
    found: Path | None
    looked_in: tuple[Path, ...]

    @property
    def present(self) -> bool:
        return self.found is not None

    @property
    def lock_name(self) -> str:
        """The lock file's name for the place the file was found (the official one if absent)."""
        index = self.looked_in.index(self.found) if self.found is not None else 0
        return lock_name(*self.file.placements()[index])
