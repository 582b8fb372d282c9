"""Which part of a video to process: a range of frame indices or of seconds, never both.

PHALP's ``track.py`` takes ``video.start_frame`` / ``video.end_frame`` (start inclusive, end
exclusive, ``end_frame=-1``: to the end) and ``video.start_time`` / ``video.end_time`` (whole
seconds, each rounded to the nearest frame). Here:

* frames: ``start_frame <= index < end_frame``, indices counting decoded frames from 0 (the
  ``frame_index`` of the result); ``end_frame`` None or -1 (PHALP's spelling): to the last frame;
* seconds: ``start_s <= time_s < end_s``, ``time_s`` being a frame's presentation time from the
  stream start (the ``time_s`` of the result), any fraction of a second; no rounding to the
  nearest frame, so a range of seconds selects exactly the frames whose time stamps fall in it.

Results keep the original video's frame indices and times: a range is a window onto the
video, never a new video. Every refusal is a 422 with a stable code (`pipeline.errors.CODES`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from pipeline.errors import InputError

#: the option names a range travels under (job options, request parameters, CLI flags)
RANGE_KEYS = ("start_frame", "end_frame", "start_s", "end_s")


@dataclass(frozen=True)
class FrameRange:
    """A validated range: start inclusive, end exclusive, None for an open end; frames or seconds."""

    start_frame: int | None = None  # first frame index processed
    end_frame: int | None = None  # one past the last frame index processed
    start_s: float | None = None  # seconds: first time stamp processed
    end_s: float | None = None  # seconds: time stamps from here on are not processed

    @classmethod
    def of(
        cls,
        start_frame: Any = None,
        end_frame: Any = None,
        start_s: Any = None,
        end_s: Any = None,
    ) -> FrameRange | None:
        """The range the caller asked for, checked; None when it asked for the whole video.

        Codes: ``frame_range_invalid`` (not a whole number of frames, not a finite number of
        seconds), ``frame_range_mixed`` (frames and seconds together), ``frame_range_negative``,
        ``frame_range_empty`` (an end at or before the start)."""
        frames = (_frames("start_frame", start_frame), _frames("end_frame", end_frame))
        seconds = (_seconds("start_s", start_s), _seconds("end_s", end_s))
        if frames[1] == -1:  # PHALP's "to the end"
            frames = (frames[0], None)
        if any(v is not None for v in frames) and any(v is not None for v in seconds):
            raise InputError(
                "frame_range_mixed",
                "expected a range in frames (start_frame, end_frame) or in seconds (start_s, end_s), got both",
                status=422,
            )
        for name, value in zip(RANGE_KEYS, (*frames, *seconds)):
            if value is not None and value < 0:
                allowed = " (or end_frame=-1 for the last frame)" if name == "end_frame" else ""
                raise InputError(
                    "frame_range_negative", f"{name}: expected 0 or more{allowed}, got {value}", status=422
                )
        for (a, b), unit in ((frames, "end_frame after start_frame"), (seconds, "end_s after start_s")):
            start = a if a is not None else 0
            if b is not None and b <= start:
                raise InputError(
                    "frame_range_empty",
                    f"expected {unit} (the end is exclusive), got {start} to {b}: no frame would be processed",
                    status=422,
                )
        if all(v is None for v in (*frames, *seconds)):
            return None
        return cls(frames[0], frames[1], seconds[0], seconds[1])

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> FrameRange | None:
        """The range stored with a job (`to_options`), checked again."""
        return cls.of(*(options.get(k) for k in RANGE_KEYS))

    def to_options(self) -> dict[str, int | float]:
        """The range as job options: only the bounds given (JSON-ready)."""
        return {k: v for k, v in zip(RANGE_KEYS, (self.start_frame, self.end_frame, self.start_s, self.end_s)) if v is not None}

    @property
    def in_seconds(self) -> bool:
        return self.start_s is not None or self.end_s is not None

    def contains(self, index: int, time_s: float) -> bool:
        """Whether the frame ``index`` shown at ``time_s`` is processed."""
        if self.start_frame is not None and index < self.start_frame:
            return False
        if self.start_s is not None and time_s < self.start_s:
            return False
        return not self.past(index, time_s)

    def past(self, index: int, time_s: float) -> bool:
        """Whether this frame, and so every later one, is after the range (decoding can stop)."""
        return (self.end_frame is not None and index >= self.end_frame) or (self.end_s is not None and time_s >= self.end_s)

    def check_video(self, frame_count: int, frame_count_exact: bool, duration_s: float) -> None:
        """``frame_range_past_end`` when the video is known to end before the range starts
        (what its container says; a video that does not say is checked as it decodes)."""
        if self.start_frame is not None and frame_count_exact and self.start_frame >= frame_count:
            raise self.past_end(f"the video has {frame_count} frames (indices 0 to {frame_count - 1})")
        if self.start_s is not None and duration_s > 0 and self.start_s >= duration_s:
            raise self.past_end(f"the video lasts {duration_s:.3f} s")

    def past_end(self, what: str) -> InputError:
        start = f"start_frame {self.start_frame}" if self.start_frame is not None else f"start_s {self.start_s:g}"
        return InputError(
            "frame_range_past_end", f"expected a range starting inside the video, got {start}: {what}", status=422
        )

    def expected_frames(self, frame_count: int, frame_count_exact: bool) -> int | None:
        """Frames the range will hold, when the video's own count makes it exact (frames only)."""
        if not frame_count_exact or self.in_seconds:
            return None
        end = frame_count if self.end_frame is None else min(self.end_frame, frame_count)
        return max(0, end - (self.start_frame or 0))


def _frames(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise InputError("frame_range_invalid", f"{name}: expected a whole number of frames, got {value!r}", status=422)
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return None
        try:
            return int(value)
        except ValueError:
            raise InputError("frame_range_invalid", f"{name}: expected a whole number of frames, got {value!r}", status=422) from None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    raise InputError("frame_range_invalid", f"{name}: expected a whole number of frames, got {value!r}", status=422)


def _seconds(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return None
    if isinstance(value, bool):
        raise InputError("frame_range_invalid", f"{name}: expected a number of seconds, got {value!r}", status=422)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise InputError("frame_range_invalid", f"{name}: expected a number of seconds, got {value!r}", status=422) from None
    if not math.isfinite(seconds):
        raise InputError("frame_range_invalid", f"{name}: expected a finite number of seconds, got {value!r}", status=422)
    return seconds
