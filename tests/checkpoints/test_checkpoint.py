"""Checkpoint folders: a good one passes, every broken one is named precisely.

Each case copies the CLI-written tiny checkpoint, breaks one thing, and expects
``check_model_folder`` / ``load_checkpoint`` to raise ``CheckpointError`` naming the file or
key that is wrong - the message a student reads before anything heavier fails obscurely.
"""
from __future__ import annotations

import json
import re
import shutil

import pytest

from helpers import run_python
from labkit.checkpoints.folder import CheckpointError, check_model_folder, load_checkpoint, write_checkpoint


@pytest.fixture
def folder(tiny_checkpoint, tmp_path):
    """A private copy of the tiny checkpoint to break."""
    return shutil.copytree(tiny_checkpoint, tmp_path / "model")


def edit_json(path, change):
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def test_the_tiny_checkpoint_passes_and_loads(folder):
    config = check_model_folder(folder)
    assert config["llm_config"]["architectures"] == ["InternLM2ForCausalLM"]
    model, tokenizer = load_checkpoint(folder)
    assert model.img_context_token_id == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert type(model).__name__ == "InternVLChatModel" and not model.training


def test_missing_config(folder):
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match=re.escape(str(folder / "config.json")) + ": missing"):
        check_model_folder(folder)


@pytest.mark.parametrize("text", ['{"vision_config": {', "", "[1, 2]"], ids=["cut-off", "empty", "not-an-object"])
def test_corrupt_config(folder, text):
    (folder / "config.json").write_text(text, encoding="utf-8")
    with pytest.raises(CheckpointError, match=re.escape(str(folder / "config.json"))):
        check_model_folder(folder)


def test_config_without_llm_config(folder):
    edit_json(folder / "config.json", lambda c: c.pop("llm_config"))
    with pytest.raises(CheckpointError, match="config.json: key 'llm_config' is missing"):
        check_model_folder(folder)


def test_missing_weights(folder):
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=re.escape(f"{folder}: no model.safetensors")):
        check_model_folder(folder)


@pytest.mark.parametrize("keep", [4, 200, 0.6], ids=["shorter-than-header-size", "header-cut", "data-cut"])
def test_truncated_weights(folder, keep):
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + r".*(truncated|too short)"):
        check_model_folder(folder)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_checkpoint(folder)  # checks before transformers reads anything


def test_weights_with_bytes_after_the_tensors_are_refused(folder):
    """safetensors wants the tensors to cover the file exactly; a longer file is not the one written."""
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes() + b"\0" * 16)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ": not a readable safetensors file .*not fully covered"):
        check_model_folder(folder)


def test_shard_listed_in_the_index_is_missing(folder):
    index = {"metadata": {}, "weight_map": {"mlp1.0.weight": "model-00001-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    shard = folder / "model-00001-of-00002.safetensors"
    with pytest.raises(CheckpointError, match=re.escape(str(shard)) + ": missing"):
        check_model_folder(folder)


def test_index_without_weight_map(folder):
    (folder / "model.safetensors.index.json").write_text('{"metadata": {}}', encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json.*weight_map"):
        check_model_folder(folder)


def test_auto_map_points_at_a_missing_file(folder):
    (folder / "modeling_internvl_chat.py").unlink()
    with pytest.raises(CheckpointError, match=re.escape(str(folder / "modeling_internvl_chat.py")) + ".*auto_map"):
        check_model_folder(folder)


def test_unsupported_language_model(folder):
    edit_json(folder / "config.json", lambda c: c["llm_config"].update(architectures=["GPT2LMHeadModel"]))
    with pytest.raises(CheckpointError, match=r"llm_config\.architectures\[0\] is 'GPT2LMHeadModel'"):
        check_model_folder(folder)
    with pytest.raises(CheckpointError, match="GPT2LMHeadModel"):
        load_checkpoint(folder)


def test_missing_tokenizer(folder):
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(CheckpointError, match=re.escape(str(folder / "tokenizer_config.json")) + ": missing"):
        check_model_folder(folder)


def test_tokenizer_without_img_context(folder):
    """Remove <IMG_CONTEXT> from every tokenizer file, as a hand-edited tokenizer might."""
    gone = "<IMG_CONTEXT>"
    edit_json(folder / "tokenizer.json",
              lambda t: t.update(added_tokens=[a for a in t["added_tokens"] if a["content"] != gone]))

    def drop_from_config(config):
        decoder = config["added_tokens_decoder"]
        config["added_tokens_decoder"] = {k: v for k, v in decoder.items() if v["content"] != gone}
        for key in ("additional_special_tokens", "extra_special_tokens"):
            if isinstance(config.get(key), list):
                config[key] = [t for t in config[key] if t != gone]

    edit_json(folder / "tokenizer_config.json", drop_from_config)
    edit_json(folder / "special_tokens_map.json", lambda m: m.update(
        additional_special_tokens=[t for t in m["additional_special_tokens"] if t != gone]))
    with pytest.raises(CheckpointError, match=r"tokenizer_config\.json.*<IMG_CONTEXT>"):
        load_checkpoint(folder)


def test_not_a_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such model folder.*--tiny"):
        check_model_folder(tmp_path / "nowhere")


# --- writing -----------------------------------------------------------------------------------

def snapshot(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_write_refuses_a_non_empty_folder_and_leaves_it_untouched(tmp_path, tiny_tokenizer):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("my own work", encoding="utf-8")
    (target / "sub").mkdir()
    (target / "sub" / "model.safetensors").write_bytes(b"not a model")
    before = snapshot(target)
    with pytest.raises(FileExistsError, match=re.escape(str(target)) + ".*overwrite"):
        write_checkpoint(target, tokenizer=tiny_tokenizer)
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no half-written temp folder


def test_write_with_overwrite_replaces_the_folder(tmp_path, tiny_tokenizer):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "config.json").write_text("{}", encoding="utf-8")  # a model folder (overwrite spares others)
    (target / "old.txt").write_text("old", encoding="utf-8")
    write_checkpoint(target, tokenizer=tiny_tokenizer, overwrite=True)
    assert not (target / "old.txt").exists()
    assert check_model_folder(target)["model_type"] == "internvl_chat"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_write_refuses_a_tokenizer_larger_than_the_vocabulary(tmp_path, tiny_tokenizer):
    from labkit.checkpoints.folder import tiny_config

    config = tiny_config(vocab_size=len(tiny_tokenizer) - 1)
    with pytest.raises(CheckpointError, match=f"{len(tiny_tokenizer)} tokens but llm_config.vocab_size is"):
        write_checkpoint(tmp_path / "new", config=config, tokenizer=tiny_tokenizer)
    assert not (tmp_path / "new").exists()


def test_cli_check(folder):
    done = run_python(["-m", "labkit", "checkpoint", "--check", folder])
    assert "looks like a complete InternVL2 checkpoint" in done.stdout
