"""MOTChallenge text: one line per detection of a confirmed track.

``frame,id,bb_left,bb_top,bb_width,bb_height,conf,-1,-1,-1`` with 1-based frames (video frame
index + 1) and, as MOTChallenge counts pixels, 1-based box corners: ``bb_left = x1 + 1`` for the
result's 0-based ``x1`` (motmetrics' loader subtracts the 1 again). ``conf`` is the detection
score (1 where the result has none). Lines
are in frame order, ids ascending within a frame. Unconfirmed detections, when asked for, get
negative ids (-1, -2, ... in order of appearance).
"""

from __future__ import annotations

from typing import Iterator

from .source import ResultReader, tracked_people


def mot_lines(
    reader: ResultReader, *, track: int | None = None, include_unconfirmed: bool = False, seen: set[int] | None = None
) -> Iterator[str]:
    """The MOT lines of a result, streamed frame by frame; ``seen`` collects the ids written."""
    rows: list[tuple] = []
    current = None
    for frame, person, key in tracked_people(reader, track=track, include_unconfirmed=include_unconfirmed):
        if current is not None and frame["frame_index"] != current:
            yield from _lines(current, rows)
            rows = []
        current = frame["frame_index"]
        x1, y1, x2, y2 = (float(v) for v in person["bbox"])
        score = person.get("score")
        if seen is not None:
            seen.add(key)
        rows.append((key, x1 + 1, y1 + 1, x2 - x1, y2 - y1, 1.0 if score is None else float(score)))
    if current is not None:
        yield from _lines(current, rows)


def _lines(frame_index: int, rows: list[tuple]) -> Iterator[str]:
    for key, left, top, width, height, conf in sorted(rows):
        yield f"{int(frame_index) + 1},{key},{left:.3f},{top:.3f},{width:.3f},{height:.3f},{conf:.5f},-1,-1,-1\n"
