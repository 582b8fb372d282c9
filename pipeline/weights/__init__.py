"""Find, download and verify model files in the caches 4D-Humans, PHALP and detectron2 already use.

A machine that ran 4D-Humans before has every file where we look first:

* 4D-Humans: ``~/.cache/4DHumans`` (its ``CACHE_DIR_4DHUMANS``): HMR2 checkpoint, SMPL data;
* PHALP: ``~/.cache/phalp``: appearance encoder, pose predictor, UV atlas;
* detectron2: iopath's cache ``~/.torch/iopath_cache`` (``$FVCORE_CACHE`` when set): ViTDet.

Each root can be moved with an environment variable or a setting (`CacheRoots`). Files are
described as data (`WeightFile`, `Download`): where they live in the official layout, where
they are published (official location first, then known mirrors), and how to check them.
Missing public files are downloaded with a progress bar, resumed when a partial file is there,
extracted without letting an archive write outside its folder, then verified. Licensed files
(the SMPL body model) are never downloaded; the error says how to get them.

Three ways keep the files obtainable and trustworthy when a host goes away or serves
something else:

* mirrors (`CacheRoots.mirrors`, ``$POSE_WEIGHTS_MIRRORS``): base URLs laid out like a
  ``--cache-dir`` folder, tried before the published addresses;
* `import_weights`: adopt the files of a cache folder or archive a user already holds;
* the lock file (`DigestLock`): size and sha256 of every file first obtained without a known
  checksum, recorded on that first verified download or import and enforced afterwards.

The modules, lowest first: `cache` (roots, layout, environment), `digest` (sha256),
`flock` (inter-process file locks), `lockfile` (`DigestLock`), `spec` (`WeightFile`,
`Download`, `FileStatus`), `archive` (safe extraction), `download` (mirrors, resumable
fetch), `catalog` (`catalog`, `locate`, `check_available`, `ensure`, `verify`), `importer` (`import_weights`).
"""

from __future__ import annotations

from .archive import safe_extract
from .cache import MIRRORS_ENV, CacheRoots
from .catalog import catalog, check_available, check_file, ensure, locate, missing_message, offline, report
from .digest import sha256_of
from .download import fetch
from .importer import import_weights
from .lockfile import DigestLock
from .spec import Download, FileStatus, WeightFile

__all__ = [
    "MIRRORS_ENV",
    "CacheRoots",
    "DigestLock",
    "Download",
    "FileStatus",
    "WeightFile",
    "catalog",
    "check_available",
    "check_file",
    "ensure",
    "fetch",
    "import_weights",
    "locate",
    "missing_message",
    "offline",
    "report",
    "safe_extract",
    "sha256_of",
]
