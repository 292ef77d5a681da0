"""The model as XTuner trained it, its LoRA merged, and the checks that prove the merge.

* ``wrap_like_xtuner`` - the base model with PEFT LoRA on the same modules XTuner chose (every
  Linear of the LLM, its output head ``output`` included).
* ``merge_lora``       - ``W <- W + (alpha / r) * B @ A`` for every wrapped Linear (PEFT's
  ``merge_and_unload``), done in fp32.
* ``probe_inputs``, ``logits_of``, ``max_diff`` - a fixed prompt with image tokens, and the logits
  compared before and after.
* ``run_fresh_process_check`` - a written folder loaded in a new Python process, as a student
  would load it.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from labkit.convert.trained import ConversionError
from labkit.fileio import REPO_ROOT

PROBE_QUESTION = "这是什么菜？请说出菜名。"
PROBE_TILES = 2
MERGE_TOLERANCE = 1e-4  # merged vs LoRA model, fp32, per unit of logit magnitude
FRESH_TOLERANCE = 1e-3  # this process vs a fresh one reading the folder (other kernels, same weights)
# Heads XTuner never wraps with LoRA (xtuner/model/utils.py, find_all_linear_names). InternLM2
# calls its head ``output``, which is NOT in this list: XTuner trains LoRA on the head too.
XTUNER_SKIPPED_HEADS = ("lm_head", "output_layer")


# == Wrapping like XTuner ==================================================================
def linear_leaf_names(module):
    """The LoRA targets XTuner picks when ``target_modules=None``.

    The last name part of every ``nn.Linear`` (``wqkv``, ``wo``, ``w1``, ``w2``, ``w3`` and the head
    ``output`` for InternLM2; ``qkv``, ``proj``, ``fc1``, ``fc2`` for the vision tower), minus the
    head names in ``XTUNER_SKIPPED_HEADS``.
    """
    names = {name.rsplit(".", 1)[-1] for name, sub in module.named_modules() if isinstance(sub, nn.Linear) and name}
    return sorted(names - set(XTUNER_SKIPPED_HEADS))


def _lora_config(settings, module):
    """A LoraConfig as XTuner builds it; ``target_modules=None`` resolved by XTuner's rule."""
    from peft import LoraConfig

    config = copy.deepcopy(settings) if isinstance(settings, LoraConfig) else LoraConfig(**settings)
    if config.target_modules is None:
        config.target_modules = linear_leaf_names(module)
    return config


def wrap_like_xtuner(model, setup):
    """Put PEFT LoRA on the same modules, with the same settings, as XTuner's InternVL_V1_5.

    The parameter names then match the ``.pth`` keys (``language_model.base_model.model.
    ...lora_A.default.weight``). Returns the LoRA targets per part.
    """
    from peft import get_peft_model

    targets = {}
    for part, settings in (("language_model", setup.llm_lora), ("vision_model", setup.visual_encoder_lora)):
        if settings is None:
            continue
        config = _lora_config(settings, getattr(model, part))
        setattr(model, part, get_peft_model(getattr(model, part), config))
        targets[part] = sorted(config.target_modules)
    return targets


# == Merging, and the probe that proves it ==================================================
def probe_inputs(model, tokenizer, tiles=PROBE_TILES, seed=0):
    """A fixed prompt with ``tiles`` images' worth of ``<IMG_CONTEXT>`` tokens and seeded pixels."""
    generator = torch.Generator().manual_seed(seed)
    size = model.config.force_image_size or model.config.vision_config.image_size
    text = "<img>" + "<IMG_CONTEXT>" * (model.num_image_token * tiles) + "</img>\n" + PROBE_QUESTION
    encoded = tokenizer(text, return_tensors="pt")
    return {
        "pixel_values": torch.randn(tiles, 3, size, size, generator=generator),
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "image_flags": torch.ones(tiles, 1, dtype=torch.long),
    }


@torch.no_grad()
def logits_of(model, inputs):
    """fp32 logits (1, tokens, vocab) of the chat model on the probe inputs."""
    model.eval()
    return model(**inputs, return_dict=True).logits.float()


def max_diff(a, b):
    return float((a - b).abs().max())


def scaled_tolerance(base, logits):
    """An absolute tolerance, scaled up for models whose logits are larger than 1."""
    return base * max(1.0, float(logits.abs().max()))


def count_lora_layers(model):
    return sum(1 for m in model.modules() if hasattr(m, "lora_A") and len(getattr(m, "lora_A", {})) > 0)


def merge_lora(model):
    """Fold every adapter into its Linear and drop the PEFT wrappers (``merge_and_unload``)."""
    from peft import PeftModel

    for part in ("vision_model", "language_model"):
        wrapped = getattr(model, part)
        if isinstance(wrapped, PeftModel):
            setattr(model, part, wrapped.merge_and_unload())
    return model


# == A fresh process that reads the written folder ==========================================
# Run in a NEW python process, to load the written folder as a student would, compute the probe's
# logits and chat. Loader "labkit": labkit.checkpoints.folder.load_checkpoint (the folder's own remote code
# with labkit's compatibility layer). Loader "transformers": transformers' Auto classes alone, with
# every labkit import blocked, which proves a folder with labkit's code stands on its own.
_FRESH_CHECK = """
import sys
import torch
folder, inputs_file, result_file, loader, question = sys.argv[1:6]
if loader == "labkit":
    from labkit.checkpoints.folder import load_checkpoint
    model, tokenizer = load_checkpoint(folder, dtype=torch.float32)
else:
    sys.modules["labkit"] = None
    from transformers import AutoModel, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    model.img_context_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
inputs = torch.load(inputs_file, weights_only=True)
with torch.no_grad():
    logits = model(**inputs, return_dict=True).logits.float()
answer = model.chat(tokenizer, inputs["pixel_values"], question, dict(max_new_tokens=8, do_sample=False))
torch.save({"logits": logits, "answer": answer, "class": type(model).__name__}, result_file)
"""


def run_fresh_process_check(folder, inputs, timeout=1800, loader="labkit"):
    """Run ``_FRESH_CHECK`` with ``loader`` in a new interpreter (offline); return its results."""
    with tempfile.TemporaryDirectory(prefix="labkit-convert-") as scratch:
        inputs_file, result_file = Path(scratch) / "inputs.pt", Path(scratch) / "result.pt"
        torch.save(inputs, inputs_file)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   HF_MODULES_CACHE=str(Path(scratch) / "modules"))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        args = [str(folder), str(inputs_file), str(result_file), loader, PROBE_QUESTION]
        done = subprocess.run([sys.executable, "-c", _FRESH_CHECK, *args], cwd=scratch,
                              env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 or not result_file.is_file():
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
            raise ConversionError(f"The converted folder did not load in a fresh Python process ({loader}):\n{tail}")
        return torch.load(result_file, weights_only=True)
