"""What a run folder holds, read for the write-up and the class table: its JSON files, its
figures (real PNGs only), the executed notebooks' cells, the student's 心得 reflection and the
code they wrote into the exercise cells.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

REFLECTION_TAG = "reflection"
NOTES_FILE = "notes.md"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class RunFolder:
    """A run folder read leniently: a missing or broken file is remembered, never raised."""

    def __init__(self, run_dir):
        self.root = Path(run_dir)
        self.errors = {}  # {relative name: why it could not be read}
        self._cache = {}
        course = self.json("course.json", quiet=True) or {}
        recorded = course.get("parameters", {}).get("run_dir")
        self.recorded_root = Path(recorded) if recorded else None

    def json(self, name, quiet=False):
        if name in self._cache:
            return self._cache[name]
        path = self.root / name
        value = None
        if path.is_file():
            try:
                value = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as err:
                self.errors[name] = f"not valid JSON ({err})"
        elif not quiet:
            self.errors.setdefault(name, "missing")
        self._cache[name] = value
        return value

    def local(self, recorded, default):
        """A path a notebook recorded (absolute, on the machine that ran it), as it lies in this folder.

        A path under the recorded run folder is moved under this one; otherwise the recorded path
        is used if it exists; else ``default`` inside this folder. Returns None when none exists.
        """
        candidates = []
        if recorded:
            recorded = Path(recorded)
            if self.recorded_root is not None and recorded.is_relative_to(self.recorded_root):
                candidates.append(self.root / recorded.relative_to(self.recorded_root))
            candidates.append(recorded)
        candidates.append(self.root / default)
        return next((c for c in candidates if c.exists()), None)

    def notebook(self, prefix):
        """The executed notebook whose name starts with ``prefix`` ("01"), or None."""
        found = sorted((self.root / "notebooks").glob(f"{prefix}_*.ipynb"))
        return found[0] if found else None


def is_png(path):
    with open(path, "rb") as handle:
        return handle.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE


def notebook_cells(path):
    """The cells of a notebook file, or [] when it cannot be read."""
    import nbformat

    try:
        return nbformat.read(str(path), as_version=4).cells
    except Exception:  # a broken notebook must not stop a write-up or a grade
        return []


def reflection(run_dir):
    """The student's own notes: ``reflection``-tagged Markdown cells of the executed notebooks, then notes.md."""
    run_dir = Path(run_dir)
    parts = []
    for path in sorted((run_dir / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for cell in notebook_cells(path):
            if cell.cell_type == "markdown" and REFLECTION_TAG in cell.metadata.get("tags", []):
                parts.append(cell.source)
    notes = run_dir / NOTES_FILE
    if notes.is_file():
        parts.append(notes.read_text(encoding="utf-8", errors="replace"))
    body = []
    for part in parts:
        lines = part.strip().splitlines()
        # The cell's own heading ("## 心得 reflection") would repeat the section's heading.
        if lines and lines[0].startswith("#") and re.search(r"心得|reflection", lines[0], re.IGNORECASE):
            lines = lines[1:]
        if "\n".join(lines).strip():
            body.append("\n".join(lines).strip())
    return "\n\n".join(body) or None


def exercise_answers(notebook, exercises):
    """``{exercise id: the source of its `exercise`-tagged cell}`` (the k-th cell is the k-th exercise)."""
    from labkit.course.exercises import EXERCISE_TAG

    cells = [c for c in notebook_cells(notebook) if EXERCISE_TAG in c.metadata.get("tags", [])] if notebook else []
    return {exercise.id: cell.source for exercise, cell in zip(exercises, cells)}
