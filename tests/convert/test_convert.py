"""labkit.convert (trained, merge, pipeline) against XTuner itself, on the tiny checkpoint.

The checkpoints here are real XTuner checkpoints (tests/xtuner_checkpoints.py): XTuner's model
class built from a config rendered by labkit.train.xtuner_config, its LoRA adapters and projector
moved away from their initial values, its ``state_dict()`` saved in mmengine's layout, training
log included. The reference logits come from XTuner's own forward pass, so the merged folder is
checked against the model XTuner trained, not against labkit's idea of it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

pytest.importorskip("xtuner.model", reason="XTuner builds the checkpoints these tests convert")

from labkit.convert import merge  # noqa: E402
from labkit.convert import pipeline as conv  # noqa: E402
from labkit.checkpoints.folder import check_model_folder, load_checkpoint, write_checkpoint  # noqa: E402
from labkit.fileio import REPO_ROOT  # noqa: E402
from labkit.train.settings import tiny_pretrain_cpu  # noqa: E402
from xtuner_checkpoints import (  # noqa: E402
    build_xtuner_model, lora_settings, move_weights, save_like_mmengine, write_config,
)

pytestmark = pytest.mark.slow  # every test here builds XTuner's model and converts its checkpoint

BF16_TOLERANCE = 0.02  # logits of a bf16 folder vs XTuner's fp32 model (measured 0.004-0.006)


# --- building real XTuner checkpoints -----------------------------------------------------------
@pytest.fixture(scope="module")
def gloo(tmp_path_factory):
    """XTuner's forward calls torch.distributed.get_rank(): give it a one-process gloo group."""
    import torch.distributed as dist

    started = not dist.is_initialized()
    if started:
        store = tmp_path_factory.mktemp("gloo") / "store"
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    if started:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("base") / "tiny-base")


def probe_of_our_own(model, tokenizer, tiles=1):
    """A prompt of our own (not convert's probe): one tile of seeded pixels and a dish question."""
    generator = torch.Generator().manual_seed(7)
    size = model.config.force_image_size
    text = "<img>" + "<IMG_CONTEXT>" * (model.num_image_token * tiles) + "</img>\n宫保鸡丁还是肠粉？"
    ids = tokenizer(text, return_tensors="pt")
    return dict(pixel_values=torch.randn(tiles, 3, size, size, generator=generator),
                input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])


@torch.no_grad()
def xtuner_logits(xt_model, inputs):
    """Logits from XTuner's own training forward (InternVL_V1_5._llm_forward), in fp32."""
    xt_model.float().eval()
    ids = inputs["input_ids"]
    out = xt_model._llm_forward(
        pixel_values=inputs["pixel_values"], input_ids=ids, attention_mask=inputs["attention_mask"],
        position_ids=torch.arange(ids.shape[1])[None], image_flags=torch.ones(len(inputs["pixel_values"]), 1),
        labels=None, use_cache=False,
    )
    return out.logits.float()


@torch.no_grad()
def folder_logits(folder, inputs):
    """Load a folder with transformers' AutoModel (its own remote code) and run the prompt in fp32."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
    model = AutoModel.from_pretrained(str(folder), trust_remote_code=True, torch_dtype=torch.float32).eval()
    model.img_context_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    return model(**inputs, image_flags=torch.ones(len(inputs["pixel_values"]), 1), return_dict=True).logits.float()


def weights_of(folder):
    from safetensors.torch import load_file

    tensors = {}
    for shard in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def leftovers(parent, name):
    """Temp folders a conversion into parent/name could have left behind."""
    return sorted(p.name for p in Path(parent).iterdir() if p.name.startswith(f".{name}."))


@pytest.fixture(scope="module")
def lora_run(base, gloo, tmp_path_factory):
    """A LoRA fine-tune checkpoint of the course config (r=8) and XTuner's logits for it."""
    work = tmp_path_factory.mktemp("lora")
    config = write_config(work / "tiny_lora.py", lora_settings(base))
    xt_model = build_xtuner_model(config)
    move_weights(xt_model)
    pth = save_like_mmengine(xt_model, work / "iter_10.pth", config)
    base_model, tokenizer = load_checkpoint(base)
    inputs = probe_of_our_own(base_model, tokenizer)
    with torch.no_grad():
        base_logits = base_model(**inputs, image_flags=torch.ones(1, 1), return_dict=True).logits.float()
    return types.SimpleNamespace(work=work, config=config, pth=pth, inputs=inputs, base_logits=base_logits,
                                 reference=xtuner_logits(xt_model, inputs))


# --- the conversion itself ----------------------------------------------------------------------
def test_lora_pth_merges_into_a_folder_with_xtuners_logits(lora_run, base, tmp_path):
    out = conv.convert(lora_run.config, lora_run.pth, tmp_path / "lora-fp32", dtype="float32", quiet=True)
    report = conv.read_report(out)
    # convert's own proof: merged == LoRA model, and the folder answers in a fresh process
    assert report["kind"] == "lora"
    assert "output" in report["lora_targets"]["language_model"]  # XTuner wraps InternLM2's head too
    assert report["lora_layers_merged"] == 2 * 5 + 1  # wqkv, wo, w1, w2, w3 per layer + output
    assert report["tensors_loaded"] == 2 * (2 * 5 + 1) + 6  # A and B per layer, mlp1's 6 tensors
    assert report["max_logit_diff_merge"] <= 1e-4
    assert report["logit_change_vs_base"] > 0.1
    assert report["max_logit_diff_fresh"] <= 1e-4
    assert isinstance(report["fresh_answer"], str)
    # independently: the folder reproduces XTuner's own LoRA forward on another prompt
    merged = folder_logits(out, lora_run.inputs)
    diff = merge.max_diff(merged, lora_run.reference)
    assert diff <= 1e-4, diff
    assert merge.max_diff(lora_run.base_logits, lora_run.reference) > 1000 * max(diff, 1e-6)
    # and it is a plain InternVL2 folder: base parameter names, no adapter left
    assert set(weights_of(out)) == set(weights_of(base))
    check_model_folder(out)
    assert leftovers(tmp_path, "lora-fp32") == []


def test_default_bf16_folder_is_sharded_with_an_index(lora_run, base, tmp_path):
    out = conv.convert(lora_run.config, lora_run.pth, tmp_path / "lora-bf16", max_shard_size="400KB", verify=False,
                       quiet=True)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and all((out / s).is_file() for s in shards)
    assert not (out / "model.safetensors").exists()
    weights = weights_of(out)
    assert set(weights) == set(index["weight_map"]) == set(weights_of(base))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    config = json.loads((out / "config.json").read_text())
    for part in (config, config["llm_config"], config["vision_config"]):
        assert part.get("torch_dtype", part.get("dtype")) == "bfloat16"
    report = conv.read_report(out)
    assert report["shards"] == len(shards)
    assert report["weight_bytes"] == sum((out / s).stat().st_size for s in shards)
    diff = merge.max_diff(folder_logits(out, lora_run.inputs), lora_run.reference)
    assert diff <= BF16_TOLERANCE, diff
    assert diff * 10 < merge.max_diff(lora_run.base_logits, lora_run.reference)


def test_full_finetune_checkpoint_replaces_the_weights(base, gloo, tmp_path):
    config = write_config(tmp_path / "tiny_full.py", tiny_pretrain_cpu().replace(model_path=str(base)))
    xt_model = build_xtuner_model(config)
    move_weights(xt_model, names=("language_model", "vision_model", "mlp1"), scale=0.01)
    pth = save_like_mmengine(xt_model, tmp_path / "iter_5.pth", config)
    out = conv.convert(config, pth, tmp_path / "full-fp32", dtype="float32", verify=False, quiet=True)
    report = conv.read_report(out)
    assert report["kind"] == "full" and report["lora_layers_merged"] == 0
    trained = {k[len("model."):]: v for k, v in xt_model.state_dict().items()}
    weights = weights_of(out)
    assert set(weights) == set(trained)
    assert all(torch.equal(weights[k], trained[k].float()) for k in weights)
    assert report["max_logit_diff_merge"] is None  # verify=False measures nothing


def test_xtuners_own_model_class_in_bf16_converts_too(base, gloo, tmp_path):
    """The GPU course config names XTuner's InternVL_V1_5 itself, which keeps ViT and mlp1 in bf16."""
    settings = lora_settings(base, lean_logits=False, weights_dtype="bfloat16")
    config = write_config(tmp_path / "plain.py", settings)
    assert "type=InternVL_V1_5" in config.read_text()
    xt_model = build_xtuner_model(config)
    move_weights(xt_model, seed=2)
    pth = save_like_mmengine(xt_model, tmp_path / "iter_3.pth", config)
    out = conv.convert(config, pth, tmp_path / "plain-fp32", dtype="float32", verify=False, quiet=True)
    base_model, tokenizer = load_checkpoint(base)
    inputs = probe_of_our_own(base_model, tokenizer)
    diff = merge.max_diff(folder_logits(out, inputs), xtuner_logits(xt_model, inputs))
    assert diff <= 1e-4, diff


# --- safety ---------------------------------------------------------------------------------------
def test_existing_folder_is_refused_and_untouched(lora_run, tmp_path, capsys):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(FileExistsError, match="overwrite"):
        conv.convert(lora_run.config, lora_run.pth, out, verify=False, quiet=True)
    assert conv.main([str(lora_run.config), str(lora_run.pth), str(out), "--no-verify"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "my notes"
    assert leftovers(tmp_path, "merged") == []
    # with the flag a model folder is replaced as a whole; a folder without config.json never is
    with pytest.raises(FileExistsError, match="not a model folder"):
        conv.convert(lora_run.config, lora_run.pth, out, overwrite=True, verify=False, quiet=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (out / "config.json").write_text("{}")
    conv.convert(lora_run.config, lora_run.pth, out, overwrite=True, verify=False, quiet=True)
    assert not (out / "notes.txt").exists() and (out / "config.json").is_file()
    assert leftovers(tmp_path, "merged") == []


def test_output_folder_may_not_swallow_the_base_model(lora_run, base):
    before = sorted(p.name for p in base.iterdir())
    with pytest.raises(conv.ConversionError, match="base model"):
        conv.convert(lora_run.config, lora_run.pth, base, overwrite=True, verify=False, quiet=True)
    assert sorted(p.name for p in base.iterdir()) == before


class Payload:
    """A pickle that runs a shell command when loaded with weights_only=False."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _zero_byte(path, lora_run):
    path.write_bytes(b"")


def _truncated(path, lora_run):
    data = lora_run.pth.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _foreign_state_dict(path, lora_run):
    torch.save({"state_dict": {"backbone.conv1.weight": torch.randn(8, 3, 3, 3), "fc.bias": torch.zeros(10)}}, path)


def _foreign_model_keys(path, lora_run):
    """Has XTuner's ``model.`` prefix, but keys this model does not have."""
    torch.save({"meta": {}, "state_dict": {"model.vision_model.head.weight": torch.zeros(2, 2)}}, path)


def _not_a_state_dict(path, lora_run):
    torch.save({"meta": {}, "step": 3}, path)


def _code_inside(path, lora_run):
    torch.save({"state_dict": {}, "hook": Payload(path.with_suffix(".ran"))}, path)


@pytest.mark.parametrize("make, message", [
    (_zero_byte, "empty"),
    (_truncated, "truncated"),
    (_foreign_state_dict, "not an XTuner"),
    (_foreign_model_keys, "not in the model"),
    (_not_a_state_dict, "holds no weights"),
    (_code_inside, "will not unpickle"),
])
def test_broken_or_foreign_checkpoints_are_named(lora_run, tmp_path, make, message):
    pth = tmp_path / "iter_1.pth"
    make(pth, lora_run)
    with pytest.raises(conv.ConversionError, match=message) as err:
        conv.convert(lora_run.config, pth, tmp_path / "merged", quiet=True)
    assert str(pth) in str(err.value)
    assert not (tmp_path / "merged").exists() and leftovers(tmp_path, "merged") == []
    assert not pth.with_suffix(".ran").exists()  # nothing inside the file was run


def test_checkpoint_from_another_config_is_refused(lora_run, base, tmp_path):
    wider = write_config(tmp_path / "r16.py", lora_settings(base).replace(lora_r=16))
    with pytest.raises(conv.ConversionError, match="wrong shape"):
        conv.convert(wider, lora_run.pth, tmp_path / "a", quiet=True)
    fewer = write_config(tmp_path / "attn_only.py", lora_settings(base).replace(lora_target_modules=("wqkv", "wo")))
    with pytest.raises(conv.ConversionError, match="LoRA weights this config does not create"):
        conv.convert(fewer, lora_run.pth, tmp_path / "b", quiet=True)
    more_vit = write_config(tmp_path / "full.py", tiny_pretrain_cpu().replace(model_path=str(base)))
    with pytest.raises(conv.ConversionError, match="LoRA weights"):
        conv.convert(more_vit, lora_run.pth, tmp_path / "c", quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attn_only.py", "full.py", "r16.py"]


def test_deepspeed_folder_needs_deepspeed(lora_run, tmp_path):
    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here: the folder would be read, not refused")
    ds = tmp_path / "iter_10.pth"
    ds.mkdir()
    (ds / "mp_rank_00_model_states.pt").write_bytes(b"")
    with pytest.raises(conv.ConversionError, match="pip install deepspeed"):
        conv.convert(lora_run.config, ds, tmp_path / "merged", quiet=True)
    (ds / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(conv.ConversionError, match="not a DeepSpeed checkpoint"):
        conv.convert(lora_run.config, ds, tmp_path / "merged", quiet=True)


def test_missing_base_model_is_named(lora_run, tmp_path):
    config = write_config(tmp_path / "gone.py", lora_settings(tmp_path / "no-such-model"))
    with pytest.raises(conv.ConversionError, match="no-such-model.*never downloads"):
        conv.convert(config, lora_run.pth, tmp_path / "merged", quiet=True)


# --- XTuner's own converter on the same checkpoint ----------------------------------------------
def test_xtuners_convert_to_official_works_on_the_tiny_model(lora_run, tmp_path):
    out = tmp_path / "xtuner-official"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        [sys.executable, "-m", "xtuner.configs.internvl.v1_5.convert_to_official",
         str(lora_run.config), str(lora_run.pth), str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config = check_model_folder(out)  # config, remote code named by auto_map, weights, tokenizer
    assert config["auto_map"]["AutoModel"] == "modeling_internvl_chat.InternVLChatModel"
    assert (out / "modeling_internvl_chat.py").is_file()
    fresh = merge.run_fresh_process_check(out, dict(lora_run.inputs, image_flags=torch.ones(1, 1)))
    assert isinstance(fresh["answer"], str)
    diff = merge.max_diff(fresh["logits"], lora_run.reference)
    assert diff <= BF16_TOLERANCE, diff
    # XTuner merges in bf16, labkit in fp32 then rounds once: the same weights up to bf16 rounding
    ours = weights_of(conv.convert(lora_run.config, lora_run.pth, tmp_path / "labkit", verify=False, quiet=True))
    theirs = weights_of(out)
    assert set(ours) == set(theirs)
    worst = max(merge.max_diff(ours[k].float(), theirs[k].float()) / (theirs[k].float().abs().max() + 1e-6)
                for k in ours)
    assert worst <= 2 ** -6, worst
