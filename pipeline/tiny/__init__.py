"""Tiny models: the real architectures at small sizes with random weights, written by our own
factory in exactly the official file layouts, so every loader runs its real code path.

They prove the plumbing (tests, the ``tiny`` serving profile, laptops), never accuracy, and are
never a default.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..weights import CacheRoots

# Said wherever a run on the tiny models finds no one (the CLI's log, the web page).
TINY_NOTE = "tiny test models: untrained, they only find the drawn test figures (python -m pipeline demo-media)"

# (module, function) pairs; each writes one model's files into ``roots`` and returns the paths.
_WRITERS: tuple[tuple[str, str], ...] = (
    ("pipeline.tiny.hmr2", "write_tiny_hmr2"),
    ("pipeline.tiny.vitdet", "write_tiny_vitdet"),
    ("pipeline.tiny.regnety", "write_tiny_regnety"),
    ("pipeline.tiny.phalp", "write_tiny_phalp"),
)


def write_tiny_caches(roots: CacheRoots, seed: int = 0) -> list[Path]:
    """Write every tiny model that this installation knows how to write."""
    written: list[Path] = []
    for module_name, func in _WRITERS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        written.extend(getattr(module, func)(roots, seed=seed))
    return written


def is_tiny_detector(detector: object) -> bool:
    """Whether a detector predictor (`VitDetPredictor`, `RegNetYPredictor`) holds a tiny
    factory's model (its architecture, whatever the seed or the folder it was read from)."""
    from ..models.regnety.config import regnety_tiny
    from ..models.vitdet.config import vitdet_tiny

    model = getattr(detector, "model", None)
    return getattr(model, "cfg", None) in (vitdet_tiny(), regnety_tiny())
