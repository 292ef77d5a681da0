"""Shared pytest set-up: labkit importable from the checkout, GPU tests skipped without CUDA.

Markers (declared in pyproject.toml): ``slow`` trains or runs notebooks, ``browser`` drives a
real browser in JupyterLab, ``gpu`` needs CUDA. Pick with ``-m``, e.g.
``./lab test -m "not slow"`` for the quick tests only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """Skip every ``@pytest.mark.gpu`` test when this machine has no usable CUDA device."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items or _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")
    for item in gpu_items:
        item.add_marker(skip)
