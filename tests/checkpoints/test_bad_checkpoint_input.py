"""A model folder that is broken or is not one: named with its file, never loaded with random weights.

Part of the bad-input checks (docs/checks.md), one file per stage. Every case uses real files: a
copy of the committed tiny base model, real safetensors, real JSON, real pictures, the real
command lines. Each test failed on the code before the fix.
"""
from __future__ import annotations

import json
import re

import pytest
from helpers import run_cli

from labkit.checkpoints.folder import CheckpointError, check_model_folder, load_checkpoint


def rewrite_weights(folder, change):
    """Load model.safetensors, let ``change(tensors)`` edit the dict, save it back (real safetensors)."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def test_missing_tensor_is_named_with_its_file(model_copy):
    name = "language_model.model.layers.1.feed_forward.w2.weight"
    weights = rewrite_weights(model_copy, lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=re.escape(str(weights)) + ".*lacks 1 of the .*" + re.escape(name)):
        check_model_folder(model_copy)
    with pytest.raises(CheckpointError, match=re.escape(name)):
        load_checkpoint(model_copy)  # never random weights with only a warning
    done = run_cli("labkit", "checkpoint", "--check", model_copy)
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


def test_a_safetensors_header_whose_sizes_disagree_is_named(model_copy):
    import struct

    path = model_copy / "model.safetensors"
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + length])
    name = "mlp1.1.weight"
    rows, cols = header[name]["shape"]
    header[name]["shape"] = [rows // 2, cols]  # a half-sized tensor on the same bytes
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= length
    text += b" " * (length - len(text))  # same header length: the file's size stays right
    path.write_bytes(raw[:8] + text + raw[8 + length:])
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ": not a readable safetensors file .*"
                       "invalid shape, data type, or offset .*truncated or corrupt"):
        check_model_folder(model_copy)


def test_checkpoint_output_that_is_a_file(tmp_path):
    out = tmp_path / "model"
    out.write_text("my notes", encoding="utf-8")
    done = run_cli("labkit", "checkpoint", "--tiny", out)
    assert done.returncode == 2 and f"{out}: is a file, not a folder" in done.stderr and "Traceback" not in done.stderr
    assert out.read_text(encoding="utf-8") == "my notes"
    check = run_cli("labkit", "checkpoint", "--check", out)
    assert check.returncode == 2 and f"{out}: is a file, not a model folder" in check.stderr


def test_overwrite_never_replaces_a_folder_that_is_not_a_model(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("precious", encoding="utf-8")
    done = run_cli("labkit", "checkpoint", "--tiny", notes, "--overwrite")
    assert done.returncode == 2 and "holds no config.json, so it is not a model folder" in done.stderr
    assert sorted(p.name for p in notes.iterdir()) == ["thesis.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]  # no temporary folder left


@pytest.mark.parametrize("text", ["[1, 2]", '"InternVL2"', "null"], ids=["list", "string", "null"])
def test_a_config_json_that_is_not_an_object_is_named(tmp_path, text):
    from labkit.train import plan
    from labkit.tiling import tiling_from_config

    config = tmp_path / "config.json"
    config.write_text(text, encoding="utf-8")
    done = run_cli("labkit", "checkpoint", "--config", config, tmp_path / "out")
    assert done.returncode == 2 and f"{config} holds a JSON" in done.stderr and "not an object" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=re.escape(str(config)) + " holds a JSON .*not an object"):
        plan.estimate(config)
    with pytest.raises(ValueError, match=re.escape(str(config)) + " holds a JSON .*not an object"):
        tiling_from_config(config)
