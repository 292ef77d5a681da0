"""Real XTuner checkpoints without a training run, for the conversion tests and notebook 04's exercises.

XTuner's model class is built from a config rendered by labkit.train.xtuner_config (as ``xtuner
train`` builds it), its trainable weights are moved away from their initial values (a fresh LoRA is
a no-op: B starts at zero), and its ``state_dict()`` is saved in mmengine's layout.
"""
from __future__ import annotations

from pathlib import Path

import torch

from labkit.train.settings import tiny_lora_cpu
from labkit.train.xtuner_config import render_config


def write_config(path, settings):
    path.write_text(render_config(settings), encoding="utf-8")
    return path


def lora_settings(base, **knobs):
    return tiny_lora_cpu().replace(model_path=str(base), lora_r=8, lora_alpha=16, replay=0, **knobs)


def build_xtuner_model(config_path):
    from mmengine.config import Config
    from xtuner.registry import BUILDER

    return BUILDER.build(Config.fromfile(str(config_path)).model)


@torch.no_grad()
def move_weights(model, names=("lora_B", "mlp1"), seed=1, scale=0.05):
    """Stand in for training: shift the trainable weights so the merge has something to do."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if any(n in name for n in names):
            param.add_(torch.randn(param.shape, generator=generator).to(param.dtype) * scale)


def save_like_mmengine(model, path, config_path):
    """The dict mmengine's CheckpointHook writes (Runner.save_checkpoint, save_optimizer=False)."""
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance(f"convert-test-{path.name}")
    hub.update_scalar("train/loss", 2.5)  # HistoryBuffer objects with numpy arrays inside
    hub.update_scalar("train/lr", 1e-3)
    hub.update_info("iter", 10)
    meta = dict(epoch=1, iter=10, cfg=Path(config_path).read_text(encoding="utf-8"), seed=0,
                experiment_name="convert-test", time="20240101_000000", mmengine_version="0.10.6")
    torch.save({"meta": meta, "state_dict": model.state_dict(), "message_hub": hub.state_dict()}, path)
    return path

