"""A `Settings` value as the XTuner config file that XTuner's trainer reads.

`render_config(settings)` writes the settings in XTuner's own flat style: a "PART 1 Settings"
block with every knob first, each with its one-line meaning, then the model, dataset, optimizer,
schedule and runtime parts that read those names. `labkit.train.finetune` renders one into every
run's work folder.

The files under ``configs/`` are generated examples: the presets of `labkit.train.settings`
rendered, so a student can read (and hand to XTuner) the exact config the course trains with.
Nothing reads them back; change a preset or your own Settings, not the files::

    labkit configs render            # rewrite configs/*.py from the presets
    labkit configs check             # exit 1 if a committed config is out of date
    labkit configs show tiny_lora_cpu    # print one
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from labkit import fileio
from labkit.fileio import REPO_ROOT
from labkit.train.settings import PRESETS, Settings, SettingsError

CONFIG_DIR = REPO_ROOT / "configs"
CONFIG_FILES = {  # committed file -> the preset it is rendered from
    "internvl2_2b_lora_food.py": "course_gpu",
    "tiny_lora_food_cpu.py": "tiny_lora_cpu",
    "tiny_pretrain_cpu.py": "tiny_pretrain_cpu",
}
RENDER_COMMAND = "labkit configs render"


_PART1_GROUPS = (
    ("Model", ("model_path", "method", "freeze_llm", "freeze_visual_encoder", "lora_r", "lora_alpha",
               "lora_dropout", "lora_target_modules", "lean_logits", "weights_dtype",
               "gradient_checkpointing")),
    ("Data", ("data_paths", "image_folder", "template", "system_prompt", "max_length", "replay", "replay_data")),
    ("Scheduler & Optimizer", ("batch_size", "accumulative_counts", "dataloader_num_workers", "max_epochs",
                               "lr", "betas", "weight_decay", "max_norm", "warmup_ratio")),
    ("Save & log", ("save_steps", "save_total_limit", "log_interval")),
    ("Hardware & randomness", ("device", "amp", "gpus", "zero_stage", "cpu_threads", "seed")),
)


def _banner(title: str) -> str:
    line = "#" * 71
    return f"{line}\n#{title.center(69)}#\n{line}\n"


def _literal(value) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        inner = ", ".join(_literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def _part1(s: Settings) -> str:
    helps = {f.name: f.metadata["help"] for f in fields(s)}
    lines = []
    for title, names in _PART1_GROUPS:
        lines.append(f"# {title}")
        for name in names:
            if name == "template":  # XTuner configs name the template object itself
                lines.append(f"prompt_template = PROMPT_TEMPLATE.{s.template}  # {helps[name]}")
                continue
            lines.append(f"{name} = {_literal(getattr(s, name))}  # {helps[name]}")
        lines.append("")
    lines.append("optim_type = AdamW")
    return "\n".join(lines) + "\n"


def _imports(s: Settings) -> str:
    optim = "AmpOptimWrapper" if s.amp != "off" else "OptimWrapper"
    lines = [
        "from mmengine.hooks import (CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook,",
        "                            ParamSchedulerHook)",
        f"from mmengine.optim import {optim}, CosineAnnealingLR, LinearLR",
    ]
    if s.method != "full":
        lines.append("from peft import LoraConfig")
    lines += [
        "from torch.optim import AdamW",
        "from transformers import AutoTokenizer",
        "",
        "from xtuner.dataset.collate_fns import default_collate_fn",
        "from xtuner.dataset.samplers import LengthGroupedSampler",
        "from xtuner.engine.hooks import DatasetInfoHook",
        "from xtuner.engine.runner import TrainLoop",
    ]
    lines.append("from labkit.train.lean import LeanInternVL" if s.uses_lean_model else "from xtuner.model import InternVL_V1_5")
    lines.append("from xtuner.utils import PROMPT_TEMPLATE")
    lines += ["", "from labkit.train.dataset import FolderPromptDataset"]
    return "\n".join(lines) + "\n"


def _model_part(s: Settings) -> str:
    lines = ["model = dict("]
    if s.uses_lean_model:
        lines += [
            "    type=LeanInternVL,  # XTuner's InternVL_V1_5, with the labkit.train.lean options below",
            "    lean_logits=lean_logits,",
            "    weights_dtype=weights_dtype,",
            "    gradient_checkpointing=gradient_checkpointing,",
        ]
    else:
        lines.append("    type=InternVL_V1_5,")
    lines += [
        "    model_path=model_path,",
        "    freeze_llm=freeze_llm,",
        "    freeze_visual_encoder=freeze_visual_encoder,",
    ]
    if s.method == "qlora":
        lines.append("    quantization_llm=True,  # 4-bit NF4 LLM through bitsandbytes (GPU only)")
    if s.method != "full":
        lines += [
            "    # LoRA adapters on the LLM. target_modules=None lets XTuner pick every Linear layer it",
            "    # finds; its filter skips only modules named lm_head/output_layer, so InternLM2's head",
            "    # (named `output`) is wrapped too.",
            "    llm_lora=dict(",
            "        type=LoraConfig,",
            "        r=lora_r,",
            "        lora_alpha=lora_alpha,",
            "        lora_dropout=lora_dropout,",
            "        target_modules=None if lora_target_modules is None else list(lora_target_modules),",
            '        task_type="CAUSAL_LM",',
            "    ),",
        ]
    lines.append(")")
    return "\n".join(lines) + "\n"


_DATA_PART = '''\
train_dataset = dict(
    type=FolderPromptDataset,  # XTuner's InternVL_V1_5_Dataset with the folder's own system prompt
    model_path=model_path,
    system=system_prompt,
    data_paths=list(data_paths),
    image_folders=[image_folder] * len(data_paths),  # XTuner wants one folder and one repeat
    repeat_times=[1] * len(data_paths),  # count per annotation file
    template=prompt_template,
    max_length=max_length,
    replay=replay,  # known-dish samples of replay_data added to data_paths (labkit.data.build.replay_indices)
    replay_data=replay_data,
    replay_seed=seed,
)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    dataset=train_dataset,
    sampler=dict(
        type=LengthGroupedSampler,
        length_property="modality_length",
        per_device_batch_size=batch_size * accumulative_counts,
        seed=seed,  # a fixed data order (XTuner's default draws a random one)
    ),
    collate_fn=dict(type=default_collate_fn),
)
'''


def _optim_part(s: Settings) -> str:
    if s.amp == "bfloat16":
        wrapper = ("    type=AmpOptimWrapper,  # bfloat16 autocast on the GPU\n"
                   "    dtype=amp,\n"
                   "    # bfloat16 has float32's range: no loss scaling (a GradScaler cannot unscale bf16 grads)\n"
                   "    loss_scale=dict(enabled=False),\n")
    elif s.amp != "off":
        wrapper = ("    type=AmpOptimWrapper,  # mixed precision on the GPU\n"
                   "    dtype=amp,\n"
                   '    loss_scale="dynamic",\n')
    else:
        wrapper = "    type=OptimWrapper,  # full precision (AmpOptimWrapper refuses the CPU)\n"
    fused = ""
    if s.device == "cuda" and s.zero_stage == 0:
        fused = ",\n                   fused=True,  # the whole AdamW update in one CUDA kernel (same maths, one launch)\n    "
    return (
        "optim_wrapper = dict(\n"
        f"{wrapper}"
        f"    optimizer=dict(type=optim_type, lr=lr, betas=betas, weight_decay=weight_decay{fused}),\n"
        "    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),\n"
        "    accumulative_counts=accumulative_counts,\n"
        ")\n"
    )


def _schedule_part(s: Settings, num_samples) -> str:
    if num_samples is None:
        head = (
            "# Warm-up for warmup_ratio of the run, then cosine decay to 0, counted in epochs and\n"
            "# converted to iterations by the runner (XTuner's way). On a small data set that conversion\n"
            "# rounds the warm-up down to 0 iterations (mmengine refuses) or 1 (the rate then never\n"
            "# leaves start_factor): labkit.train.finetune renders this part in iterations from the real\n"
            "# sample count instead, with a warm-up of at least 2 iterations.\n"
        )
        warm = ("    dict(type=LinearLR, start_factor=1e-5, by_epoch=True, begin=0,\n"
                "         end=warmup_ratio * max_epochs, convert_to_iter_based=True),\n")
        cos = ("    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=True, begin=warmup_ratio * max_epochs,\n"
               "         end=max_epochs, convert_to_iter_based=True),\n")
        body = warm + cos if s.warmup_ratio > 0 else cos.replace("begin=warmup_ratio * max_epochs", "begin=0")
        return head + "param_scheduler = [\n" + body + "]\n"
    per_epoch = s.iterations_per_epoch(num_samples)
    total, warmup = s.planned_iterations(num_samples), s.warmup_iterations(num_samples)
    head = (
        f"# This run's plan: {num_samples} samples -> {per_epoch} iterations per epoch (the sampler\n"
        "# rounds up to whole groups of batch_size * accumulative_counts samples) -> max_epochs times\n"
        "# that. Warm-up: warmup_ratio of all iterations, but at least 2 (mmengine refuses 0, and with\n"
        "# 1 its LinearLR never lifts the rate off start_factor), or none on a run under 3 iterations.\n"
        f"total_iters = {total}\n"
        f"warmup_iters = {warmup}\n"
    )
    warm = "    dict(type=LinearLR, start_factor=1e-5, by_epoch=False, begin=0, end=warmup_iters),\n"
    cos = "    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=False, begin=warmup_iters, end=total_iters),\n"
    body = warm + cos if warmup else cos
    return head + "param_scheduler = [\n" + body + "]\n"


def _runtime_part(s: Settings) -> str:
    backend = "nccl" if s.device == "cuda" else "gloo"
    return f'''\
# Log one decoded training sample at the start (XTuner's DatasetInfoHook)
tokenizer = dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=model_path,
                 trust_remote_code=True)
custom_hooks = [dict(type=DatasetInfoHook, tokenizer=tokenizer)]

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=log_interval),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=CheckpointHook, save_optimizer=False, by_epoch=False, interval=save_steps,
                    max_keep_ckpts=save_total_limit),
    sampler_seed=dict(type=DistSamplerSeedHook),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="{backend}"),  # {"NCCL between GPUs" if backend == "nccl" else "gloo: a one-process group on the CPU"}
)

visualizer = None  # mmengine's default, which logs every loss to <work dir>/<time>/vis_data/scalars.json
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=seed, deterministic=False)
log_processor = dict(by_epoch=False)
'''


def render_config(settings: Settings, num_samples: int | None = None, preset: str | None = None) -> str:
    """The XTuner config file for ``settings`` (XTuner's flat style, PART 1 Settings first).

    With ``num_samples`` (the training-set size, known once the data is validated) the
    learning-rate schedule is written in iterations, so the warm-up can never round to 0.
    ``preset`` names the `labkit.train.settings` preset the settings come from; the header then
    says how the file is regenerated (the committed ``configs/`` files are rendered this way).
    """
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
        raise SettingsError(f"num_samples={num_samples!r}: the training set must hold at least one sample.")
    s = settings
    title = {"lora": "LoRA", "qlora": "QLoRA", "full": "full"}[s.method]
    parts = [
        f"# XTuner config: InternVL2 {title} fine-tune on the {s.device.upper()}.\n" + _provenance(preset),
        _imports(s),
        "\n" + _banner("PART 1  Settings") + _part1(s),
        "\n" + _banner("PART 2  Model & Tokenizer & Image Processor") + _model_part(s),
        "\n" + _banner("PART 3  Dataset & Dataloader") + _DATA_PART,
        "\n" + _banner("PART 4  Scheduler & Optimizer") + _optim_part(s) + "\n" + _schedule_part(s, num_samples)
        + "\ntrain_cfg = dict(type=TrainLoop, max_epochs=max_epochs)\n",
        "\n" + _banner("PART 5  Runtime") + _runtime_part(s),
    ]
    return "".join(parts)


def _provenance(preset: str | None) -> str:
    """Header lines: where the file comes from, what to edit instead, how to run it."""
    if preset is None:
        return ("# Rendered from a labkit.train.settings.Settings value (labkit.train.xtuner_config.render_config).\n"
                "# To change the run, change the Settings and render again; an edit here is not read back.\n")
    files = [name for name, preset_name in CONFIG_FILES.items() if preset_name == preset]
    if not files:
        raise SettingsError(f"preset={preset!r}: not one of the presets with a committed config "
                            f"({', '.join(CONFIG_FILES.values())}); leave preset out for other settings.")
    file = files[0]
    return (
        f"# Generated from labkit.train.settings' preset {preset}() by `{RENDER_COMMAND}`.\n"
        "# An example, not a source: edit the preset (or your own Settings) and render again, not this\n"
        "# file; nothing reads it back, and tests/train/test_settings.py fails when it differs from a render.\n"
        "# What a student runs on it (XTuner's own trainer, from the repository root):\n"
        f"#     python -m labkit.train.launch configs/{file} --work-dir work_dirs/{file[:-3]}\n"
        "# Plain `xtuner train` opens no process group for a single process, and XTuner's InternVL model\n"
        "# asks for one on every step (labkit/train/launch.py explains).\n"
    )


def write_config(settings: Settings, path, num_samples: int | None = None, preset: str | None = None) -> Path:
    """Render ``settings`` into ``path`` (atomically) and return the path."""
    path = Path(path)
    fileio.write_text(path, render_config(settings, num_samples, preset))
    return path


def stale_configs(config_dir=CONFIG_DIR) -> list[str]:
    """Committed preset configs whose text differs from a fresh render."""
    config_dir = Path(config_dir)
    stale = []
    for name, preset in CONFIG_FILES.items():
        path = config_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != render_config(PRESETS[preset](), preset=preset):
            stale.append(name)
    return stale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="labkit configs",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["render", "check", "show"],
                        help="render: rewrite configs/*.py; check: compare them; show PRESET: print one")
    parser.add_argument("preset", nargs="?", help="for show: one of " + ", ".join([*PRESETS, *CONFIG_FILES]))
    args = parser.parse_args(argv)
    if args.action == "render":
        for name, preset in CONFIG_FILES.items():
            print(f"wrote {write_config(PRESETS[preset](), CONFIG_DIR / name, preset=preset)}")
        return 0
    if args.action == "check":
        stale = stale_configs()
        for name in stale:
            print(f"configs/{name} differs from its preset; run `{RENDER_COMMAND}`.")
        return 1 if stale else 0
    preset = CONFIG_FILES.get(args.preset, args.preset)
    if preset not in PRESETS:
        parser.error(f"show needs a preset: {', '.join([*PRESETS, *CONFIG_FILES])}")
    sys.stdout.write(render_config(PRESETS[preset](), preset=preset))
    return 0
