"""Fixtures shared by the course tests."""
import pytest

from labkit.course.workspace import Workspace


@pytest.fixture
def ws(tmp_path):
    """A fresh run folder and cache, as a notebook's Workspace sees them."""
    return Workspace(tmp_path / "run", tmp_path / "cache")
