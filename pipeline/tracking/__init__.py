"""PHALP 3D tracking: people per frame (detector + HMR2.0 + appearance) -> stable track ids."""

from .observation import PersonObservation
from .tracker import BackfillEntry, FrameInput, FrameTracks, Tracker, TrackerModels, TrackReport, collect_outputs

__all__ = [
    "BackfillEntry",
    "FrameInput",
    "FrameTracks",
    "PersonObservation",
    "TrackReport",
    "Tracker",
    "TrackerModels",
    "collect_outputs",
]
