"""Deprecated: labkit.xtuner_dataset moved to labkit.train.dataset; this alias stays for one release.

XTuner configs rendered before the move name ``labkit.xtuner_dataset.FolderPromptDataset``.
"""
import warnings

from labkit.train.dataset import *  # noqa: F401,F403
from labkit.train.dataset import FolderPromptDataset  # noqa: F401

warnings.warn("labkit.xtuner_dataset is deprecated: use labkit.train.dataset", DeprecationWarning, stacklevel=2)
