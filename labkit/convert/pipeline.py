"""Turn an XTuner fine-tune checkpoint into a merged InternVL2 folder in the official format.

XTuner saves only what it trained: the LoRA matrices (``lora_A``, ``lora_B``) of every wrapped
Linear, the projector ``mlp1``, and the whole language model or vision tower when they were
not frozen. A ``.pth`` alone therefore cannot answer a question. Conversion rebuilds the model
exactly as XTuner held it during training, puts the trained weights back, folds each adapter
into its Linear and writes a folder that ``AutoModel.from_pretrained(..., trust_remote_code=True)``
and LMDeploy load like the original InternVL2-2B::

    python -m labkit.convert.pipeline configs/food_lora.py work_dirs/food_lora/iter_500.pth models/food-merged

    from labkit.convert.pipeline import convert
    convert("configs/food_lora.py", "work_dirs/food_lora/iter_500.pth", "models/food-merged")

The steps, one function each below:

1. ``read_train_setup``   - from the XTuner config: the base model folder, the LoRA settings
   and the freeze flags (what XTuner trained, hence what the ``.pth`` must hold).
2. ``read_trained_weights`` - the ``.pth`` (mmengine's ``{'meta', 'state_dict', ...}`` dict,
   keys prefixed ``model.``) or a DeepSpeed checkpoint folder, read without running pickled code.
3. ``wrap_like_xtuner`` + ``load_trained_weights`` - the base model with PEFT LoRA on the same
   modules XTuner chose (every Linear of the LLM, its output head ``output`` included), then
   the trained weights, refusing a checkpoint that does not fit.
4. ``merge_lora`` - ``W <- W + (alpha / r) * B @ A`` for every wrapped Linear
   (PEFT's ``merge_and_unload``), done in fp32 and then rounded once to bf16.
5. Save safetensors (sharded above ``max_shard_size``); the folder keeps the base folder's own
   remote code, ``auto_map``, template, tokenizer files and generation config, whether labkit or
   OpenGVLab wrote them (``labkit.checkpoints.folder.finish_folder``).
6. Prove it: the merged model must give the LoRA model's logits on a prompt with image tokens
   (fp32, max abs diff <= 1e-4), and the folder must load in a fresh Python process through
   labkit's loader and answer a chat with the logits the merged model gives; a folder with
   labkit's own code must do the same with transformers alone and labkit not importable. The
   figures land in ``conversion.json``.

The folder is built under a temporary name beside ``out_dir`` and renamed only when every
check has passed, so a failed or interrupted conversion leaves nothing half-written.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from labkit import fileio
from labkit.fileio import REPO_ROOT
from labkit.checkpoints.folder import (
    CheckpointError,
    _prepare_out_dir,
    _publish,
    check_model_folder,
    check_out_dir,
    check_shard_size,
    finish_folder,
    has_labkit_code,
    load_checkpoint,
)

REPORT_NAME = "conversion.json"
PROBE_QUESTION = "这是什么菜？请说出菜名。"
PROBE_TILES = 2
MERGE_TOLERANCE = 1e-4  # merged vs LoRA model, fp32, per unit of logit magnitude
FRESH_TOLERANCE = 1e-3  # this process vs a fresh one reading the folder (other kernels, same weights)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Heads XTuner never wraps with LoRA (xtuner/model/utils.py, find_all_linear_names). InternLM2
# calls its head ``output``, which is NOT in this list: XTuner trains LoRA on the head too.
XTUNER_SKIPPED_HEADS = ("lm_head", "output_layer")


class ConversionError(ValueError):
    """A config, checkpoint or output folder that conversion cannot use; the message says why."""


# == 1. What XTuner trained: the config ======================================================
@dataclass
class TrainSetup:
    """The parts of an XTuner config that decide what the ``.pth`` holds."""

    config_path: Path
    model_path: Path
    llm_lora: dict | None = None  # LoraConfig keyword arguments, or None (no LoRA on the LLM)
    visual_encoder_lora: dict | None = None
    freeze_llm: bool = False
    freeze_visual_encoder: bool = False
    pretrained_pth: Path | None = None  # weights XTuner loaded on top of model_path before training


def _lora_settings(value, key, config_path):
    """A config's ``dict(type=LoraConfig, r=..., ...)`` as plain kwargs (a LoraConfig object as is)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        if type(value).__name__ != "LoraConfig":
            raise ConversionError(f"{config_path}: model.{key} is a {type(value).__name__}, not a LoRA config.")
        return value
    settings = dict(value)
    kind = settings.pop("type", "LoraConfig")
    kind_name = getattr(kind, "__name__", str(kind)).rsplit(".", 1)[-1]
    if kind_name != "LoraConfig":
        raise ConversionError(f"{config_path}: model.{key} has type {kind_name}; labkit converts LoRA adapters only.")
    if isinstance(settings.get("target_modules"), tuple):
        settings["target_modules"] = list(settings["target_modules"])
    return settings


def _is_xtuner_internvl(kind):
    """XTuner's InternVL_V1_5, or a class built on it (the ``.pth`` layout is the same)."""
    if isinstance(kind, type):
        return any(cls.__name__ == "InternVL_V1_5" for cls in kind.__mro__)
    return str(kind).rsplit(".", 1)[-1] in ("InternVL_V1_5", "LeanInternVL")


def _find_model_folder(model_path, config_path):
    """``model_path`` as XTuner read it (from the current folder); if absent there, from the repo root.

    Rendered course configs name folders relative to the repo root (``runs/cache/base-tiny``),
    while a notebook may run in a subfolder.
    """
    given = Path(model_path).expanduser()
    candidates = [given] if given.is_absolute() else [given, REPO_ROOT / given]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    raise ConversionError(
        f"{config_path}: model_path {model_path!r} is not a folder on this machine (looked in "
        f"{', '.join(str(c) for c in candidates)}). labkit never downloads models: point model_path at the "
        "local base checkpoint the fine-tune started from."
    )


def read_train_setup(config_path):
    """Read an XTuner config (a python file) with mmengine and return its ``TrainSetup``."""
    from mmengine.config import Config

    config_path = Path(config_path)
    if not config_path.is_file():
        raise ConversionError(f"{config_path}: no such XTuner config; pass the .py config you trained with.")
    try:
        cfg = Config.fromfile(str(config_path))
    except Exception as err:  # a syntax error or a failing import inside the config
        raise ConversionError(
            f"{config_path}: mmengine could not read this config ({type(err).__name__}: {err})."
        ) from err
    model_cfg = cfg.get("model")
    if not model_cfg or "model_path" not in model_cfg:
        raise ConversionError(f"{config_path}: has no model = dict(type=InternVL_V1_5, model_path=...) section.")
    if not _is_xtuner_internvl(model_cfg.get("type")):
        raise ConversionError(
            f"{config_path}: model type is {model_cfg.get('type')!r}; labkit converts XTuner's InternVL_V1_5 "
            "(and subclasses such as labkit.train.lean.LeanInternVL) only."
        )
    model_path = _find_model_folder(str(model_cfg["model_path"]), config_path)
    pretrained = model_cfg.get("pretrained_pth")
    return TrainSetup(
        config_path=config_path,
        model_path=model_path,
        llm_lora=_lora_settings(model_cfg.get("llm_lora"), "llm_lora", config_path),
        visual_encoder_lora=_lora_settings(model_cfg.get("visual_encoder_lora"), "visual_encoder_lora", config_path),
        freeze_llm=bool(model_cfg.get("freeze_llm", False)),
        freeze_visual_encoder=bool(model_cfg.get("freeze_visual_encoder", False)),
        pretrained_pth=Path(pretrained) if pretrained else None,
    )


# == 2. The trained weights: the .pth ========================================================
class _DiscardedLogObject:
    """Stands in for a piece of mmengine's training log while a ``.pth`` is unpickled.

    Accepts whatever the pickle hands it and keeps nothing (see ``_allowed_stand_ins``).
    """

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _is_training_log_global(name):
    """Python objects a mmengine checkpoint holds outside ``state_dict``, in its training log.

    ``message_hub`` keeps mmengine ``HistoryBuffer`` objects (numpy arrays inside); their pickle
    also names HistoryBuffer's statistics methods through ``builtins.getattr``.
    """
    return (
        name.startswith("numpy.")
        or name.startswith("mmengine.logging.")
        or name in ("builtins.getattr", "__builtin__.getattr")
    )


def _allowed_stand_ins(names):
    """The allow-list for ``torch.load(weights_only=True)``.

    ``weights_only=True`` unpickles tensors, numbers, strings and containers only, so nothing in
    a file can run code while it is read. mmengine's ``.pth`` also holds the training log
    (``message_hub``), which that refuses. Instead of falling back to ``weights_only=False`` (which
    would execute any code a foreign file carries), each log class the file names is mapped to
    the inert ``_DiscardedLogObject``: the log is never read, so nothing of it needs to be real,
    and the general-purpose ``getattr`` the log's pickle asks for is never handed out.
    """
    return [(_DiscardedLogObject, name) for name in names]


def _state_dict_of(data, path):
    """The weights inside a loaded checkpoint: its ``state_dict``, or a bare dict of tensors."""
    if isinstance(data, dict) and "state_dict" in data:
        data = data["state_dict"]
    elif not (isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values())):
        data = None
    if not isinstance(data, dict) or not data:
        raise ConversionError(
            f"{path}: holds no weights (expected a dict with a 'state_dict' of tensors, as XTuner/mmengine "
            "save). Use an iter_*.pth from the fine-tune's work_dirs folder."
        )
    not_tensors = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(
            f"{path}: its state_dict holds non-tensor entries ({', '.join(map(str, not_tensors[:3]))}); "
            "this is not an XTuner model checkpoint."
        )
    return dict(data)


def _read_pth_file(path):
    size = path.stat().st_size
    if size == 0:
        raise ConversionError(
            f"{path}: is empty (0 bytes): saving it was interrupted (job stopped, disk full?). Use an earlier "
            "iter_*.pth from the same work_dirs folder, or run the fine-tune again."
        )
    if not zipfile.is_zipfile(path):
        raise ConversionError(
            f"{path}: is truncated or not a PyTorch checkpoint ({size} bytes, no zip directory at its end). An "
            "interrupted save or copy leaves files like this: copy it again or use an earlier iter_*.pth."
        )
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        refused = sorted(n for n in names if not _is_training_log_global(n))
        if refused:
            raise ConversionError(
                f"{path}: holds Python objects that an XTuner checkpoint never contains ({', '.join(refused[:5])}); "
                "labkit will not unpickle them, because unpickling can run code. Convert only checkpoints "
                "your own fine-tune wrote."
            )
        with torch.serialization.safe_globals(_allowed_stand_ins(names)):
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except ConversionError:
        raise
    except Exception as err:  # the zip reader's RuntimeError, EOFError, UnpicklingError...
        raise ConversionError(
            f"{path}: cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:200]}); the file is "
            "truncated or corrupt. Copy it again or use an earlier iter_*.pth."
        ) from err
    return _state_dict_of(data, path)


def _read_deepspeed_folder(path):
    """XTuner on GPUs with DeepSpeed saves ``iter_N.pth`` as a folder of ZeRO shards."""
    if not any(path.glob("*model_states.pt")):
        raise ConversionError(
            f"{path}: is a folder but not a DeepSpeed checkpoint (no *model_states.pt inside). Pass an "
            "iter_*.pth file or folder from the fine-tune's work_dirs."
        )
    try:
        from xtuner.utils.zero_to_any_dtype import get_state_dict_from_zero_checkpoint
    except ImportError as err:
        raise ConversionError(
            f"{path}: is a DeepSpeed checkpoint (XTuner's GPU training writes these); reading it needs the "
            f"deepspeed package, which is not installed here ({err}). Install it (pip install deepspeed) or run "
            "the conversion on the training machine."
        ) from err
    # XTuner's own reader (the same call as xtuner.model.utils.guess_load_checkpoint). It merges
    # the ZeRO partitions with DeepSpeed's loader, which is outside labkit's weights_only rule:
    # use it only on checkpoints your own training wrote.
    return _state_dict_of(get_state_dict_from_zero_checkpoint(str(path.parent), path.name), path)


def read_trained_weights(path):
    """Read a ``.pth`` file or DeepSpeed folder and return its state dict (keys as saved)."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: no such checkpoint. XTuner writes them as work_dirs/<config>/iter_*.pth.")
    if path.is_dir():
        return _read_deepspeed_folder(path)
    return _read_pth_file(path)


# == 3. The model as XTuner trained it =======================================================
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


def keys_xtuner_saves(model, setup):
    """The state-dict keys (without ``model.``) a checkpoint of this setup must contain.

    XTuner's ``InternVL_V1_5.state_dict`` keeps: for each of the vision tower and the LLM, its
    LoRA matrices when it has LoRA, else all its weights when it was not frozen; and ``mlp1``.
    """
    keys = set()
    for part, lora, frozen in (
        ("vision_model", setup.visual_encoder_lora, setup.freeze_visual_encoder),
        ("language_model", setup.llm_lora, setup.freeze_llm),
    ):
        own = [k for k in model.state_dict() if k.startswith(part + ".")]
        if lora is not None:
            keys.update(k for k in own if "lora_" in k)
        elif not frozen:
            keys.update(own)
    keys.update(k for k in model.state_dict() if k.startswith("mlp1."))
    return keys


def _few(keys, n=3):
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_trained_weights(model, weights, setup, pth_path):
    """Load XTuner's weights into the wrapped model; refuse any that do not fit.

    Returns how many tensors were loaded.
    """
    where = f"{pth_path} (for {setup.config_path})"
    stripped = {k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")}
    if not stripped:
        raise ConversionError(
            f"{where}: none of its {len(weights)} keys starts with 'model.' (e.g. {_few(weights)}); this is not "
            "an XTuner InternVL checkpoint. Pass the iter_*.pth that training with this config wrote."
        )
    own = model.state_dict()
    foreign = set(weights) - {"model." + k for k in stripped} | (set(stripped) - set(own))
    if foreign:
        hint = ""
        if any("lora_" in k for k in foreign):
            hint = (" It holds LoRA weights this config does not create: is it from another config "
                    "(llm_lora / visual_encoder_lora)?")
        raise ConversionError(
            f"{where}: {len(foreign)} of its {len(weights)} keys are not in the model: {_few(foreign)}.{hint} "
            "Convert with the config that trained this checkpoint."
        )
    missing = keys_xtuner_saves(model, setup) - set(stripped)
    if missing:
        raise ConversionError(
            f"{where}: lacks {len(missing)} weights this config trains: {_few(missing)}. Was it trained with "
            "another config (other LoRA targets, freeze flags)? Convert with the matching config."
        )
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in stripped.items() if v.shape != own[k].shape]
    if wrong:
        raise ConversionError(
            f"{where}: {len(wrong)} tensors have the wrong shape (checkpoint vs model): {'; '.join(wrong[:3])}. "
            "A different LoRA rank r or another base model? Convert with the config that trained it."
        )
    model.load_state_dict(stripped, strict=False)
    return len(stripped)


# == 4. Merging, and the probe that proves it ================================================
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


def _tolerance(base, logits):
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


# == 5. Writing the folder, and a fresh process that reads it ================================
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


def folder_figures(folder):
    """File sizes, shard count and total weight bytes of a written model folder."""
    folder = Path(folder)
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    shards = [n for n in files if n.endswith(".safetensors")]
    return {"files": files, "shards": len(shards), "weight_bytes": sum(files[n] for n in shards)}


@dataclass
class ConversionReport:
    """What a conversion did and measured; saved as ``conversion.json`` in the folder."""

    out_dir: str
    config: str
    checkpoint: str
    base_model: str
    kind: str  # "lora" (adapters merged) or "full" (whole weights replaced)
    lora_targets: dict = field(default_factory=dict)
    tensors_loaded: int = 0
    lora_layers_merged: int = 0
    dtype: str = "bfloat16"
    parameters: int = 0
    logit_change_vs_base: float | None = None  # how much training moved the probe's logits
    max_logit_diff_merge: float | None = None  # LoRA model vs merged model, fp32
    merge_tolerance: float | None = None
    max_logit_diff_fresh: float | None = None  # merged model (rounded to dtype) vs the folder, fresh process
    fresh_answer: str | None = None
    fresh_loaders: list = field(default_factory=list)  # "labkit"; also "transformers" (labkit not importable)
    shards: int = 0
    weight_bytes: int = 0
    files: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self):
        lines = [
            f"converted {self.checkpoint} ({self.kind}) -> {self.out_dir}",
            f"  base {self.base_model}; {self.tensors_loaded} trained tensors loaded; "
            f"{self.lora_layers_merged} LoRA layers merged; {self.parameters:,} parameters in {self.dtype}",
            f"  {self.shards} safetensors file(s), {self.weight_bytes / 2**20:.2f} MiB of weights",
        ]
        if self.max_logit_diff_merge is not None:
            merged = "merged vs LoRA model" if self.kind == "lora" else "no LoRA to merge; merge step vs loaded model"
            lines.append(
                f"  training moved the probe logits by up to {self.logit_change_vs_base:.4g}; {merged}: "
                f"max |diff| {self.max_logit_diff_merge:.3g} (tolerance {self.merge_tolerance:.3g})"
            )
        if self.max_logit_diff_fresh is not None:
            lines.append(
                f"  fresh process ({' and '.join(self.fresh_loaders)} loader): logits max |diff| "
                f"{self.max_logit_diff_fresh:.3g}, "
                f"chat answered {self.fresh_answer!r}"
            )
        lines.append(f"  {self.seconds:.1f} s")
        return "\n".join(lines)


def _check_paths(setup, pth_path, out_dir):
    """Refuse an output folder that would swallow its own inputs (``--overwrite`` deletes it)."""
    out = out_dir.resolve()
    inputs = (("the base model", setup.model_path), ("the checkpoint", pth_path), ("the config", setup.config_path))
    for name, path in inputs:
        path = Path(path).resolve()
        if path == out or out in path.parents:
            raise ConversionError(f"{out_dir}: is (or contains) {name} {path}; write the merged model somewhere else.")


def _dtype(value):
    if isinstance(value, torch.dtype):
        return value
    if value not in DTYPES:
        raise ConversionError(f"dtype {value!r}: choose one of {', '.join(DTYPES)}.")
    return DTYPES[value]


def convert(config_path, pth_path, out_dir, overwrite=False, max_shard_size="2GB", verify=True,
            dtype="bfloat16", quiet=False):
    """Convert an XTuner checkpoint into a merged official InternVL2 folder; return its path.

    ``config_path``: the XTuner config that trained it; ``pth_path``: its ``iter_*.pth`` file (or
    DeepSpeed folder); ``out_dir``: a new (or empty) folder - pass ``overwrite=True`` to replace one.
    ``verify`` runs the logit and fresh-process checks (figures in ``out_dir/conversion.json``).
    """
    started = time.time()
    setup = read_train_setup(config_path)
    pth_path, out_dir, dtype = Path(pth_path), Path(out_dir), _dtype(dtype)
    _check_paths(setup, pth_path, out_dir)
    check_out_dir(out_dir, overwrite)  # before any weights are read: new, empty, or a model folder to replace
    check_shard_size(max_shard_size)
    weights = read_trained_weights(pth_path)
    pretrained = read_trained_weights(setup.pretrained_pth) if setup.pretrained_pth else None
    check_model_folder(setup.model_path)
    out_dir, tmp_dir = _prepare_out_dir(out_dir, overwrite)
    try:
        report = _convert_into(setup, weights, pretrained, pth_path, tmp_dir, max_shard_size, verify, dtype)
        report.out_dir, report.seconds = str(out_dir), round(time.time() - started, 2)
        fileio.write_json(tmp_dir / REPORT_NAME, asdict(report))
        _publish(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    if not quiet:
        print(report.summary())
    return out_dir


def _convert_into(setup, weights, pretrained, pth_path, folder, max_shard_size, verify, dtype):
    model, tokenizer = load_checkpoint(setup.model_path, dtype=torch.float32)
    report = ConversionReport(
        out_dir=str(folder), config=str(setup.config_path), checkpoint=str(pth_path),
        base_model=str(setup.model_path), kind="lora" if (setup.llm_lora or setup.visual_encoder_lora) else "full",
        dtype=str(dtype).replace("torch.", ""),
    )
    inputs = probe_inputs(model, tokenizer) if verify else None
    base_logits = logits_of(model, inputs) if verify else None
    report.lora_targets = wrap_like_xtuner(model, setup)
    if pretrained is not None:
        load_trained_weights_loosely(model, pretrained, setup)
    report.tensors_loaded = load_trained_weights(model, weights, setup, pth_path)
    report.lora_layers_merged = count_lora_layers(model)
    trained_logits = logits_of(model, inputs) if verify else None
    merge_lora(model)
    if verify:
        merged_logits = logits_of(model, inputs)
        report.logit_change_vs_base = max_diff(trained_logits, base_logits)
        report.max_logit_diff_merge = max_diff(merged_logits, trained_logits)
        report.merge_tolerance = _tolerance(MERGE_TOLERANCE, trained_logits)
        if report.max_logit_diff_merge > report.merge_tolerance:
            raise ConversionError(
                f"The merged model does not reproduce the LoRA model: logits differ by up to "
                f"{report.max_logit_diff_merge:.3g} (> {report.merge_tolerance:.3g}); nothing was written."
            )
    # Round the weights, not the model: model.to(bf16) would also round buffers that are never
    # saved (OpenGVLab's rotary inv_freq / cos / sin tables), which a fresh load recomputes in
    # fp32, so the reference below would differ from the folder by rounding that is not in it.
    rounded = {name: tensor.to(dtype) for name, tensor in model.state_dict().items()}
    _record_dtype(model, dtype)
    report.parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, state_dict=rounded, safe_serialization=True, max_shard_size=max_shard_size)
    finish_folder(folder, tokenizer, dtype, base=setup.model_path)
    check_model_folder(folder)
    if verify:
        model.load_state_dict({name: tensor.float() for name, tensor in rounded.items()})
        reference = logits_of(model, inputs)  # the written weights, computed here
        del model, rounded
        report.fresh_loaders = ["labkit"] + (["transformers"] if has_labkit_code(folder) else [])
        for loader in report.fresh_loaders:
            fresh = run_fresh_process_check(folder, inputs, loader=loader)
            diff = max_diff(fresh["logits"], reference)
            report.max_logit_diff_fresh = max(diff, report.max_logit_diff_fresh or 0.0)
            report.fresh_answer = report.fresh_answer or fresh["answer"]
            if diff > _tolerance(FRESH_TOLERANCE, reference):
                raise ConversionError(
                    f"The written folder gives other logits in a fresh process ({loader} loader, max |diff| "
                    f"{diff:.3g}); the saved weights do not match the merged model."
                )
    figures = folder_figures(folder)
    report.files, report.shards, report.weight_bytes = figures["files"], figures["shards"], figures["weight_bytes"]
    return report


def _record_dtype(model, dtype):
    """Write the weights' dtype into config.json, in the nested llm/vision configs too (as InternVL2-2B)."""
    configs = [model.config, getattr(model.config, "llm_config", None), getattr(model.config, "vision_config", None),
               getattr(model.language_model, "config", None), getattr(model.vision_model, "config", None)]
    for config in filter(None, configs):
        config.torch_dtype = dtype


def load_trained_weights_loosely(model, weights, setup):
    """``pretrained_pth`` weights XTuner loaded before training (strict=False there too)."""
    stripped = {k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")}
    unknown = set(stripped) - set(model.state_dict())
    if unknown or not stripped:
        raise ConversionError(
            f"{setup.pretrained_pth} (pretrained_pth in {setup.config_path}): keys do not fit the model: "
            f"{_few(unknown or weights)}."
        )
    model.load_state_dict(stripped, strict=False)


def read_report(folder):
    """The ``conversion.json`` a conversion left in ``folder``, as a dict."""
    path = Path(folder) / REPORT_NAME
    if not path.is_file():
        raise ConversionError(f"{path}: missing; was {folder} written by labkit.convert.pipeline?")
    return json.loads(path.read_text(encoding="utf-8"))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m labkit.convert.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the XTuner config (.py) the fine-tune ran with")
    parser.add_argument("pth", help="its checkpoint: work_dirs/<config>/iter_N.pth (file, or DeepSpeed folder)")
    parser.add_argument("out_dir", help="the folder to write the merged model to")
    parser.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")
    parser.add_argument("--max-shard-size", default="2GB", help="split safetensors above this size (e.g. 200MB)")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--no-verify", action="store_true", help="skip the logit and fresh-process checks")
    args = parser.parse_args(argv)
    try:
        convert(args.config, args.pth, args.out_dir, overwrite=args.overwrite, max_shard_size=args.max_shard_size,
                verify=not args.no_verify, dtype=args.dtype)
    except (ConversionError, CheckpointError, FileExistsError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
