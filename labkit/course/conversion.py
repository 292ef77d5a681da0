"""The conversion lesson: one LoRA layer, read from the files and merged by hand.

Notebook 04 merges one Linear in front of the student before ``labkit.convert`` merges them
all: the base weight ``W`` comes from the base model folder, the adapter ``A``, ``B`` from the
XTuner checkpoint (read with ``labkit.convert.pipeline.read_trained_weights``, as conversion
reads it) and ``r``, ``alpha`` from the training config (``read_train_setup``). The merged
weight is ``W + B @ A * alpha / r`` (``alpha / sqrt(r)`` under rsLoRA); the converted folder's
tensor of the same name must equal it up to the folder's bf16 rounding.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from labkit.convert.pipeline import read_train_setup, read_trained_weights

#: The Linear merged in front of the student: the first attention projection of the LLM.
DEMO_LAYER = "language_model.model.layers.0.attention.wqkv"
_PARTS = {"language_model": "llm_lora", "vision_model": "visual_encoder_lora"}


@dataclass
class LoraLayer:
    """One LoRA-wrapped Linear: base weight ``W`` (out, in), ``A`` (r, in), ``B`` (out, r), all fp32."""

    module: str  # e.g. language_model.model.layers.0.attention.wqkv
    W: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    r: int
    alpha: float
    rslora: bool = False

    @property
    def weight_name(self):
        """The tensor's name in a model folder (base or converted)."""
        return self.module + ".weight"

    @property
    def scale(self):
        return self.alpha / (self.r ** 0.5 if self.rslora else self.r)

    def merged(self):
        """``W + B @ A * scale``: what merging writes for this Linear (before rounding to bf16)."""
        return self.W + self.B @ self.A * self.scale

    def __str__(self):
        return (f"{self.module}: W {tuple(self.W.shape)}, A {tuple(self.A.shape)}, B {tuple(self.B.shape)}, "
                f"r {self.r}, alpha {self.alpha:g}")


def _setting(settings, name, default=None):
    return settings.get(name, default) if isinstance(settings, dict) else getattr(settings, name, default)


def lora_layer(config_path, checkpoint, module=DEMO_LAYER):
    """Read one LoRA layer of an XTuner checkpoint, with its base weight and its ``r`` and ``alpha``."""
    setup = read_train_setup(config_path)
    part, _, rest = module.partition(".")
    settings = getattr(setup, _PARTS[part]) if part in _PARTS else None
    if settings is None:
        raise ValueError(f"{module}: {config_path} puts no LoRA on {part!r}; pick a module of a part with LoRA "
                         f"({', '.join(p for p, key in _PARTS.items() if getattr(setup, key))}).")
    weights = read_trained_weights(checkpoint)
    prefix = f"model.{part}.base_model.model.{rest}"
    try:
        A, B = (weights[f"{prefix}.lora_{m}.default.weight"].float() for m in "AB")
    except KeyError:
        found = sorted({k[len(f"model.{part}.base_model.model."):].rsplit(".lora_", 1)[0]
                        for k in weights if ".lora_A." in k and k.startswith(f"model.{part}.")})
        raise KeyError(f"{checkpoint}: no LoRA adapter for {module}; it has adapters for "
                       f"{', '.join(found[:4])} ... ({len(found)} in all)") from None
    return LoraLayer(module=module, W=folder_tensor(setup.model_path, module + ".weight").float(), A=A, B=B,
                     r=int(_setting(settings, "r")), alpha=float(_setting(settings, "lora_alpha")),
                     rslora=bool(_setting(settings, "use_rslora", False)))


def lora_modules(checkpoint):
    """The names of every Linear the checkpoint holds a LoRA adapter for (as in the merged model)."""
    names = set()
    for key in read_trained_weights(checkpoint):
        if ".lora_A." in key:
            part, rest = key[len("model."):].split(".base_model.model.", 1)
            names.add(f"{part}.{rest.rsplit('.lora_A.', 1)[0]}")
    return sorted(names)


def folder_tensor(folder, name):
    """One tensor of a model folder's safetensors (sharded or not), as stored."""
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if name not in weight_map:
            raise KeyError(f"{index}: no tensor {name!r}")
        path = folder / weight_map[name]
    else:
        path = folder / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; is {folder} a model folder with safetensors weights?")
    with safe_open(str(path), framework="pt") as handle:
        if name not in handle.keys():
            raise KeyError(f"{path}: no tensor {name!r}")
        return handle.get_tensor(name)


def bf16_gap(merged, stored):
    """Largest |merged - stored| in units of the stored tensor's bf16 rounding step (<= 1: rounding only)."""
    stored = stored.float()
    step = torch.finfo(torch.bfloat16).eps * stored.abs().clamp_min(torch.finfo(torch.bfloat16).tiny)
    return float(((merged.float() - stored).abs() / step).max())


def folder_config(folder):
    """A model folder's ``config.json`` as a dict."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; is {folder} a model folder?")
    return json.loads(path.read_text(encoding="utf-8"))
