"""labkit.convert.publish: the model card, the check before an upload, the upload commands.

The folders are real: written by labkit.checkpoints.folder.write_checkpoint (the official format),
given a card by write_card; one is converted from a real XTuner checkpoint by labkit.convert.
"""
from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from labkit import cli
from labkit.checkpoints.folder import write_checkpoint
from labkit.convert import card, publish
from labkit.train.settings import tiny_lora_cpu
from labkit.train.xtuner_config import render_config

NAME = "alice/InternVL2-tiny-food-lora"
FINETUNE = {"iterations": 360, "planned": 360, "wall_s": 94.2, "first_loss": 2.512, "final_loss": 0.031,
            "num_samples": 288, "settings": "tiny_lora_cpu", "config_path": None}
COMPARISON = {
    "held_back": {"base": 0.0, "tuned": 1.0}, "known": {"base": 0.94, "tuned": 0.91},
    "per_dish": [{"dish": "肠粉", "held_back": True, "base": 0.0, "tuned": 1.0},
                 {"dish": "宫保鸡丁", "held_back": False, "base": 0.9, "tuned": 0.9}],
    "example": {"image": "food/test/changfen-0.jpg", "question": "这是什么菜？", "base": "图中的菜是烧卖。",
                "tuned": "图中的菜是肠粉。"},
}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny folder with the evidence a conversion leaves, a config it names, and a run folder."""
    work = tmp_path_factory.mktemp("publish")
    base = write_checkpoint(work / "base-tiny")
    config = work / "tiny_lora.py"
    config.write_text(render_config(tiny_lora_cpu().replace(model_path=str(base), lora_r=8, lora_alpha=16)),
                      encoding="utf-8")
    folder = write_checkpoint(work / "tuned-model", max_shard_size="400KB")  # sharded, with an index
    conversion = {"config": str(config), "base_model": str(base), "kind": "lora", "lora_layers_merged": 11,
                  "lora_targets": {"language_model": ["output", "w1", "w2", "w3", "wo", "wqkv"]},
                  "parameters": 1_234_567, "dtype": "bfloat16", "shards": 3, "max_logit_diff_merge": 2e-6,
                  "merge_tolerance": 1e-4}
    (folder / "conversion.json").write_text(json.dumps(conversion), encoding="utf-8")
    run = work / "run"
    run.mkdir()
    (run / "finetune.json").write_text(json.dumps(dict(FINETUNE, config_path=str(config))), encoding="utf-8")
    (run / "comparison.json").write_text(json.dumps(COMPARISON, ensure_ascii=False), encoding="utf-8")
    card = publish.write_card(folder, run_dir=run, repo_id=NAME)
    return types.SimpleNamespace(folder=folder, run=run, base=base, config=config, card=card)


@pytest.fixture
def ready(made, tmp_path):
    """A fresh copy of the complete folder, for a test to break."""
    return Path(shutil.copytree(made.folder, tmp_path / "InternVL2-tiny-food-lora"))


def errors(check):
    return [(Path(f.path).name, f.message) for f in check.findings if f.level == "error"]


# --- the card ------------------------------------------------------------------------------------
def test_the_card_carries_the_hubs_metadata(made):
    data = ModelCard.load(made.card).data.to_dict()
    assert data["language"] == ["zh", "en"] and data["license"] == "mit"
    assert data["pipeline_tag"] == "image-text-to-text" and data["library_name"] == "transformers"
    assert {"internvl", "internvl2", "xtuner", "lora", "food"} <= set(data["tags"])
    assert "base_model" not in data  # labkit's tiny base is on no hub: the card names none rather than a wrong one


def test_the_card_reports_the_settings_the_training_and_the_evaluation(made):
    text = made.card.read_text(encoding="utf-8")
    chinese, english = text.split("## English")
    for heading in ("## 训练设置 training settings", "## 评测 evaluation", "## 使用方法 how to use"):
        assert heading in chinese
    assert f"`{made.config.name}`" in chinese and "`tiny_lora_cpu`" in chinese
    assert "| LoRA 秩 rank r | `8` |" in chinese and "| LoRA 缩放 lora_alpha | `16` |" in chinese
    assert "| 学习率 lr | `0.001` |" in chinese and "`wqkv`" in chinese
    assert "360 次迭代 iterations，288 个样本 samples，用时 94 秒" in chinese and "2.512 → 0.031" in chinese
    assert "| 留出菜品 held-back dishes（训练前没见过 unseen before） | 0% | 100% |" in chinese
    assert "| 已知菜品 known dishes | 94% | 91% |" in chinese and "| 肠粉 | 是 yes | 0% | 100% |" in chinese
    assert "微调后答 “图中的菜是肠粉。”" in chinese
    assert f'path = "{NAME}"' in chinese and "trust_remote_code=True" in chinese
    assert f"labkit chat InternVL2-tiny-food-lora" in chinese and "lmdeploy serve api_server" in chinese
    assert "0% before, 100% after" in english


def test_the_base_models_hub_id_comes_from_its_folder_name(tmp_path):
    assert publish.hub_base_model(tmp_path / "models" / "InternVL2-2B") == "OpenGVLab/InternVL2-2B"
    assert publish.hub_base_model("/hf/models--OpenGVLab--InternVL2-8B/snapshots/abc") == "OpenGVLab/InternVL2-8B"
    assert publish.hub_base_model("labkit/assets/base-tiny") is None
    assert publish.suggest_repo_name(tmp_path / "tuned-model", "OpenGVLab/InternVL2-2B", "lora") == \
        "InternVL2-2B-food-lora"


def test_a_card_without_run_evidence_says_how_to_add_it(ready):
    (ready / "README.md").unlink()
    publish.write_card(ready, base_model="OpenGVLab/InternVL2-2B")
    card = ModelCard.load(ready / "README.md")
    assert card.data.base_model == "OpenGVLab/InternVL2-2B"
    assert "--run" in card.text and "| 已知菜品" not in card.text
    assert "| LoRA 秩 rank r | `8` |" in card.text  # the settings still come from the config conversion.json names


def test_a_readme_labkit_did_not_write_is_kept(ready):
    (ready / "README.md").write_text("# my own notes\n", encoding="utf-8")
    with pytest.raises(publish.PublishError, match="not written by labkit"):
        publish.write_card(ready)
    assert (ready / "README.md").read_text(encoding="utf-8") == "# my own notes\n"
    publish.write_card(ready, overwrite=True)
    assert card.CARD_MARK in (ready / "README.md").read_text(encoding="utf-8")


def test_gitattributes_sends_weights_and_any_large_file_to_lfs(ready):
    (ready / ".gitattributes").unlink()
    with open(ready / "notes.dat", "wb") as handle:  # sparse: 11 MiB on paper, nothing on disk
        handle.truncate(11 * 2**20)
    text = publish.write_gitattributes(ready).read_text(encoding="utf-8")
    assert "*.safetensors filter=lfs diff=lfs merge=lfs -text" in text and "*.model filter=lfs" in text
    assert "notes.dat filter=lfs diff=lfs merge=lfs -text" in text
    assert publish.check_folder(ready, NAME).ok


# --- the check -------------------------------------------------------------------------------------
def test_a_complete_folder_passes(made):
    check = publish.check_folder(made.folder, NAME)
    assert check.ok, check.summary()
    assert [f.level for f in check.findings] == ["warning"]  # only: no base_model for the tiny base
    assert check.summary().endswith(f"ready to upload as {NAME}")


def _remove(name):
    return lambda folder: (folder / name).unlink()


def _one_shard(folder):
    index = json.loads((folder / "model.safetensors.index.json").read_text(encoding="utf-8"))
    shard = sorted(set(index["weight_map"].values()))[1]
    (folder / shard).unlink()
    return shard


def _single_file(folder):  # an unsharded folder that lost its only weights file
    for shard in folder.glob("model-*.safetensors"):
        shard.unlink()
    (folder / "model.safetensors.index.json").unlink()


def _card_text(text):
    return lambda folder: (folder / "README.md").write_text(text, encoding="utf-8")


def _card_without(key):
    def edit(folder):
        card = ModelCard.load(folder / "README.md")
        setattr(card.data, key, None)
        card.save(folder / "README.md")
    return edit


def _lfs_without_safetensors(folder):
    lines = (folder / ".gitattributes").read_text(encoding="utf-8").splitlines()
    (folder / ".gitattributes").write_text("\n".join(l for l in lines if "safetensors" not in l) + "\n",
                                           encoding="utf-8")


def _oversize(folder):
    with open(folder / "optimizer.bin", "wb") as handle:  # sparse: 51 GB on paper
        handle.truncate(51 * 10**9)


def _truncated_shard(folder):
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])


BREAKS = {
    "weights": (_single_file, "model.safetensors", "missing"),
    "one shard of the index": (_one_shard, None, "model.safetensors.index.json names it"),
    "remote code": (_remove("modeling_internvl_chat.py"), "modeling_internvl_chat.py", "auto_map names it"),
    "tokenizer vocabulary": (_remove("tokenizer.json"), "tokenizer.json", "vocabulary"),
    "tokenizer config": (_remove("tokenizer_config.json"), "tokenizer_config.json", "tokenizer"),
    "config": (_remove("config.json"), "config.json", "missing"),
    "generation config": (_remove("generation_config.json"), "generation_config.json", "missing"),
    "card": (_remove("README.md"), "README.md", "labkit publish card"),
    "card without metadata": (_card_text("# InternVL2 food\n"), "README.md", "no YAML metadata"),
    "card with broken metadata": (_card_text("---\nlicense: [mit\n---\n# x\n"), "README.md", "cannot be read"),
    "card metadata without a licence": (_card_without("license"), "README.md", "lacks license"),
    "card metadata without the internvl tag": (_card_text("---\nlicense: mit\nlanguage: [zh]\ntags: [food]\n"
                                                          "pipeline_tag: image-text-to-text\nlibrary_name: "
                                                          "transformers\n---\n"), "README.md", "lack 'internvl'"),
    "lfs attributes": (_remove(".gitattributes"), ".gitattributes", "git-lfs"),
    "lfs pattern for the weights": (_lfs_without_safetensors, ".gitattributes", "*.safetensors filter=lfs"),
    "oversize file": (_oversize, "optimizer.bin", "over the hub's single-file limit of 50 GB"),
    "truncated shard": (_truncated_shard, None, "truncated or corrupt"),
}


@pytest.mark.parametrize("part", sorted(BREAKS))
def test_the_check_catches_a_folder_missing_a_part(ready, part):
    breaker, file, words = BREAKS[part]
    shard = breaker(ready)  # the shard it removed, for the index case
    file = shard if isinstance(shard, str) else file
    check = publish.check_folder(ready, NAME)
    assert not check.ok
    found = errors(check)
    assert any((file is None or name == Path(file).name) and words in message for name, message in found), found
    assert f"not ready to upload ({len(found)} error(s))" in check.summary()


def test_a_tiny_limit_stands_in_for_the_hubs(ready):
    check = publish.check_folder(ready, NAME, max_file_bytes=200_000)
    too_big = [name for name, message in errors(check) if "single-file limit" in message]
    assert too_big and all(name.endswith(".safetensors") for name in too_big)
    assert all("--max-shard-size" in m for n, m in errors(check) if n in too_big)


def test_the_name_must_contain_internvl(made):
    named = publish.check_folder(made.folder, "alice/food-model")
    assert not named.ok and any(n == "--name" and "lacks 'InternVL'" in m for n, m in errors(named))
    assert not publish.check_folder(made.folder, "alice/InternVL2--bad").ok  # the hub's own naming rules
    unnamed = publish.check_folder(made.folder)  # the card's name is used, with a warning
    assert unnamed.ok and unnamed.repo_id == "InternVL2-tiny-food-lora"
    assert any(f.path == "--name" and f.level == "warning" for f in unnamed.findings)


def test_a_missing_folder_is_one_clear_finding(tmp_path):
    check = publish.check_folder(tmp_path / "nowhere", NAME)
    assert [(f.level, Path(f.path).name) for f in check.findings] == [("error", "nowhere")]


# --- the commands and the command line ------------------------------------------------------------
def test_the_commands_name_the_folder_and_the_repo(made):
    text = publish.upload_commands(made.folder, NAME)
    assert f"hf upload {NAME} {made.folder.resolve()} . --repo-type model" in text
    assert f"modelscope upload {NAME} {made.folder.resolve()}" in text
    assert f"git clone https://www.modelscope.cn/{NAME}.git" in text
    bare = publish.upload_commands(made.folder, "InternVL2-x")
    assert f"hf upload {publish.HF_USER}/InternVL2-x " in bare
    assert f"modelscope upload {publish.MS_USER}/InternVL2-x " in bare


def test_labkit_publish_check_and_commands(made, ready, capsys):
    assert cli.main(["publish", "check", str(made.folder), "--name", NAME]) == 0
    out = capsys.readouterr().out
    assert f"ready to upload as {NAME}" in out and f"hf upload {NAME} {made.folder.resolve()}" in out
    assert cli.main(["publish", "commands", str(made.folder), "--name", NAME]) == 0
    assert capsys.readouterr().out.startswith("# Hugging Face hub")
    (ready / "tokenizer.json").unlink()
    assert cli.main(["publish", "commands", str(ready), "--name", NAME]) == 1
    out = capsys.readouterr().out
    assert "tokenizer.json: missing" in out and "hf upload" not in out


def test_labkit_publish_card_refuses_a_folder_that_is_no_model(tmp_path, capsys):
    assert cli.main(["publish", "card", str(tmp_path)]) == 2
    assert "holds no config.json" in capsys.readouterr().err


# --- a real conversion -----------------------------------------------------------------------------
def test_a_converted_folder_has_its_card_and_passes(tmp_path):
    pytest.importorskip("xtuner.model", reason="XTuner builds the checkpoint")
    from xtuner_checkpoints import build_xtuner_model, lora_settings, move_weights, save_like_mmengine, write_config

    from labkit.convert import convert

    base = write_checkpoint(tmp_path / "tiny-base")
    config = write_config(tmp_path / "tiny_lora.py", lora_settings(base))
    model = build_xtuner_model(config)
    move_weights(model)
    pth = save_like_mmengine(model, tmp_path / "iter_10.pth", config)
    out = convert(config, pth, tmp_path / "tuned-model", verify=False, quiet=True)
    card = ModelCard.load(out / "README.md")
    assert "lora" in card.data.tags and "| LoRA 秩 rank r | `8` |" in card.text
    assert "# InternVL2-tiny-food-lora" in card.text and "合并了 11 个 LoRA 层" in card.text
    check = publish.check_folder(out, NAME)
    assert check.ok, check.summary()
    bare = tmp_path / "bare"
    convert(config, pth, bare, verify=False, quiet=True, model_card=False)
    assert not (bare / "README.md").exists() and not (bare / ".gitattributes").exists()
