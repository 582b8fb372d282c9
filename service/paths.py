"""Confinement of caller-supplied file paths to one media folder.

The drop-in route (``POST /pose/video {"video_path": ...}``) lets a caller name a file the
service can already see. Only regular files inside the configured media folder qualify, after
every symlink is resolved; the decoder is then given the resolved path, so a link swapped
afterwards cannot redirect it. Messages quote what the caller sent, never the server's paths.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pipeline.errors import InputError


def resolve_media_path(user_path: str, media_root: Path) -> Path:
    """The real path of a regular file inside ``media_root`` named by ``user_path``.

    Relative paths are taken from ``media_root``; absolute ones must lie inside it. Refuses
    ``..`` escapes, symlinks leading out, directories and devices.
    """
    if not isinstance(user_path, str) or not user_path.strip():
        raise InputError("path_invalid", f"expected a non-empty file path, got {user_path!r}")
    if "\x00" in user_path:
        raise InputError("path_invalid", "expected a file path, got one containing a NUL byte")
    root = Path(media_root).resolve(strict=True)
    # First without touching the file system: a path that leaves the folder by its spelling is
    # refused whether or not it exists, so answers never reveal what exists outside.
    lexical = Path(os.path.normpath(root / user_path))
    if not lexical.is_relative_to(root):
        raise _outside(user_path)
    try:
        real = lexical.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(
            "path_not_found", f"expected an existing file in the media folder, got {user_path!r}", status=404
        ) from None
    except (OSError, RuntimeError) as exc:  # symlink loops, permissions
        raise InputError("path_not_found", f"cannot resolve {user_path!r}: {exc}", status=404) from None
    if not real.is_relative_to(root):
        raise _outside(user_path)
    try:
        mode = real.stat().st_mode
    except OSError as exc:
        raise InputError("path_not_found", f"cannot read {user_path!r}: {exc.strerror or exc}", status=404) from None
    if not stat.S_ISREG(mode):
        raise InputError("path_not_a_file", f"expected a regular file, got a directory or special file: {user_path!r}")
    return real


def _outside(user_path: str) -> InputError:
    return InputError(
        "path_outside_media_root",
        f"expected a path inside the media folder, got {user_path!r}",
        status=403,
    )
