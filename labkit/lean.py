"""Deprecated: labkit.lean moved to labkit.train.lean; this alias stays for one release.

XTuner configs rendered before the move name ``labkit.lean.LeanInternVL``.
"""
import warnings

from labkit.train.lean import *  # noqa: F401,F403
from labkit.train.lean import LeanInternVL  # noqa: F401

warnings.warn("labkit.lean is deprecated: use labkit.train.lean", DeprecationWarning, stacklevel=2)
