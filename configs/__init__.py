"""Serving profiles (``full``, ``tiny``) and their parameters; no Ray import here."""

from .profiles import PROFILES, BatchSettings, Fractions, Limits, Profile, full, get_profile, tiny

__all__ = ["PROFILES", "BatchSettings", "Fractions", "Limits", "Profile", "full", "get_profile", "tiny"]
