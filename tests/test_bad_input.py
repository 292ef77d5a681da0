"""Bad input is refused early, by name, and never costs the user a file (issue 11).

Every case uses real files: a copy of the committed tiny base model, real safetensors, real
JSON, real pictures, the real command lines. Each test failed on the code before the fix.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import base_model
from labkit.checkpoint import CheckpointError, check_model_folder, load_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=120):
    """``python -m ARGS`` in a fresh interpreter with this checkout first on the path."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def model_copy(tmp_path):
    """A private copy of the committed tiny base model, to break."""
    return Path(shutil.copytree(base_model.ASSET_DIR, tmp_path / "model"))


def rewrite_weights(folder, change):
    """Load model.safetensors, let ``change(tensors)`` edit the dict, save it back (real safetensors)."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


# == silent wrong results: a checkpoint missing tensors ======================================
def test_missing_tensor_is_named_with_its_file(model_copy):
    name = "language_model.model.layers.1.feed_forward.w2.weight"
    weights = rewrite_weights(model_copy, lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=re.escape(str(weights)) + ".*lacks 1 of the .*" + re.escape(name)):
        check_model_folder(model_copy)
    with pytest.raises(CheckpointError, match=re.escape(name)):
        load_checkpoint(model_copy)  # never random weights with only a warning
    done = run_cli("labkit.checkpoint", "--check", model_copy)
    assert done.returncode == 2, done.stdout
    assert name in done.stderr and "complete" not in done.stdout


def test_unexpected_tensor_is_named(model_copy):
    import torch

    weights = rewrite_weights(model_copy, lambda t: t.update({"language_model.extra.lora_A.weight": torch.zeros(2, 2)}))
    with pytest.raises(CheckpointError, match=re.escape(str(weights)) + ".*language_model.extra.lora_A.weight"):
        check_model_folder(model_copy)


def test_wrong_shape_is_named_before_torch_sees_it(model_copy):
    import torch

    name = "mlp1.1.weight"
    weights = rewrite_weights(model_copy, lambda t: t.update({name: torch.zeros(t[name].shape[0], 7)}))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model_copy)
    assert str(weights) in str(err.value) and name in str(err.value) and "wrong shape" in str(err.value)


def test_sharded_index_pointing_at_the_wrong_shard(model_copy):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(model_copy / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    save_file({n: tensors[n] for n in names[:half]}, str(model_copy / "a.safetensors"), metadata={"format": "pt"})
    save_file({n: tensors[n] for n in names[half:]}, str(model_copy / "b.safetensors"), metadata={"format": "pt"})
    (model_copy / "model.safetensors").unlink()
    weight_map = {n: "a.safetensors" for n in names}  # the second half is really in b
    index = model_copy / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {**weight_map, names[-1]: "b.safetensors"}}), encoding="utf-8")
    with pytest.raises(CheckpointError, match=re.escape(str(index)) + ".*shard that does not hold them"):
        check_model_folder(model_copy)
