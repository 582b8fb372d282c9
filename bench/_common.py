"""Helpers shared by the benchmarks: timing and the printed table."""

from __future__ import annotations

import time
from typing import Callable, Sequence


def time_call(fn: Callable[[], object], *, warmup: int = 1, min_seconds: float = 2.0, min_runs: int = 3) -> float:
    """Seconds per call: mean over at least ``min_runs`` calls and ``min_seconds`` of work."""
    for _ in range(warmup):
        fn()
    runs, start = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < min_seconds:
        fn()
        runs += 1
    return (time.perf_counter() - start) / runs


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in header]] + [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print(title)
    print(line)
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if i == 0:
            print(line)
    print(line)
