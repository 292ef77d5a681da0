"""The main job and the base-model tools: a file where a folder belongs, a folder that is not a model.

Part of the bad-input checks (docs/checks.md), one file per stage. Every case uses real files: a
copy of the committed tiny base model, real safetensors, real JSON, real pictures, the real
command lines. Each test failed on the code before the fix.
"""
from __future__ import annotations

import re

import pytest
from helpers import current_umask, run_cli

from labkit.course import base_model
from labkit.fileio import REPO_ROOT


def test_run_dir_that_is_a_file(tmp_path):
    from labkit.course.workspace import Workspace

    run = tmp_path / "run"
    run.write_text("my notes", encoding="utf-8")
    done = run_cli("labkit", "run", "--run-dir", run, "--cache-dir", tmp_path / "cache")
    assert done.returncode == 2 and f"{run}: is a file, not a folder" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(NotADirectoryError, match=re.escape(str(run))):
        Workspace(run / "inside", tmp_path / "cache")
    assert run.read_text(encoding="utf-8") == "my notes"


def test_refresh_code_writes_only_into_a_model_folder(tmp_path, model_copy):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("precious", encoding="utf-8")
    done = run_cli("labkit", "base-model", "refresh-code", notes)
    assert done.returncode == 2 and "config.json: missing" in done.stderr and str(notes) in done.stderr
    assert sorted(p.name for p in notes.iterdir()) == ["thesis.txt"]  # no model code written
    missing = run_cli("labkit", "base-model", "refresh-code", tmp_path / "no-such-model")
    assert missing.returncode == 2 and "no-such-model: no such folder" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "no-such-model").exists()
    # a real model folder is still refreshed
    stale = model_copy / "modeling_internlm2.py"
    stale.write_text("# old code\n", encoding="utf-8")
    assert base_model.refresh_code(model_copy) == ["modeling_internlm2.py"]
    assert stale.read_bytes() == (REPO_ROOT / "labkit" / "model" / "modeling_internlm2.py").read_bytes()
    assert stale.stat().st_mode & 0o777 == 0o666 & ~current_umask()
    assert not [p.name for p in model_copy.iterdir() if p.name.startswith(".")]
