"""Every fine-tuning knob in one typed place, with the presets the course trains with.

A fine-tune is described by one `Settings` value. Three presets cover the course:

* `course_gpu()`        - the course's InternVL2-2B LoRA recipe on one GPU;
* `tiny_lora_cpu()`     - the same recipe on the tiny model, sized for a 2-core laptop;
* `tiny_pretrain_cpu()` - the full fine-tune that turns a random tiny model into the base model.

Change a knob with ``settings.replace(lr=1e-4)``: unknown names, wrong types and impossible
values are refused with a message that names the knob.

`labkit.train.xtuner_config` turns a `Settings` value into the XTuner config file that XTuner's
trainer reads; the files under ``configs/`` are the presets rendered that way.
"""
from __future__ import annotations

import difflib
import math
import os
import typing
from dataclasses import dataclass, field, fields
from dataclasses import replace as _dc_replace

METHODS = ("lora", "qlora", "full")
DEVICES = ("cpu", "cuda")
AMP_CHOICES = ("off", "float16", "bfloat16")
WEIGHT_DTYPES = ("bfloat16", "float32")
TEMPLATES = ("internlm2_chat", "phi3_chat")  # names in xtuner.utils.PROMPT_TEMPLATE


class SettingsError(ValueError):
    """A fine-tuning setting is unknown, of the wrong type or out of range."""


def _knob(default, help, default_factory=None):
    """A dataclass field that carries its own one-line explanation (shown in rendered configs)."""
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    """One fine-tuning run, every knob with its meaning. Paths may be relative to the current folder."""

    # -- model ----------------------------------------------------------------------------
    model_path: str = _knob("runs/cache/base-tiny", "model folder in the official InternVL2 format")
    method: str = _knob("lora", "lora | qlora (GPU only, 4-bit LLM) | full (train every unfrozen weight)")
    freeze_llm: bool = _knob(True, "keep the language model's own weights fixed (LoRA trains adapters beside them)")
    freeze_visual_encoder: bool = _knob(True, "keep the vision tower (InternViT) fixed")
    lora_r: int = _knob(128, "LoRA rank: width of the low-rank update")
    lora_alpha: int = _knob(256, "LoRA scale: the update is multiplied by lora_alpha / lora_r")
    lora_dropout: float = _knob(0.05, "dropout on the LoRA input")
    lora_target_modules: typing.Optional[tuple[str, ...]] = _knob(
        None, "None = every Linear of the LLM (XTuner's choice, output head included)")
    lean_logits: bool = _knob(False, "labkit.train.lean: logits and loss only where an answer token is supervised")
    weights_dtype: str = _knob("bfloat16", "bfloat16 (how XTuner loads) | float32 (needs labkit.train.lean; steadier on CPU)")
    gradient_checkpointing: bool = _knob(
        True, "recompute activations in the backward pass: far less memory, about a third more compute")
    # -- data -----------------------------------------------------------------------------
    data_paths: tuple[str, ...] = _knob(("data/food/train.json",), "annotation file(s): JSON list or JSONL")
    image_folder: str = _knob("data/images", "folder the annotations' image paths are relative to")
    template: str = _knob("internlm2_chat", "prompt template name in xtuner.utils.PROMPT_TEMPLATE")
    system_prompt: typing.Optional[str] = _knob(
        "auto", "auto = the model folder's own template's system prompt (labkit's folders: XTuner's); None = XTuner's")
    max_length: int = _knob(8192, "longest token sequence; longer samples are cut")
    replay: int = _knob(0, "replay: this many known-dish samples of replay_data mixed into the training set, "
                           "against forgetting (0 = off)")
    replay_data: str = _knob("auto", "what replay draws from; auto = general/train.json of the data folder holding "
                                     "data_paths[0]: the base model's own training pictures")
    # -- optimisation ---------------------------------------------------------------------
    batch_size: int = _knob(4, "samples per device per step")
    accumulative_counts: int = _knob(2, "steps whose gradients add up before one optimizer update")
    dataloader_num_workers: int = _knob(0, "background processes that prepare batches (0 = main process)")
    max_epochs: int = _knob(10, "passes over the training data")
    lr: float = _knob(3e-5, "peak learning rate")
    betas: tuple[float, float] = _knob((0.9, 0.999), "AdamW moment decay rates")
    weight_decay: float = _knob(0.05, "AdamW weight decay")
    max_norm: float = _knob(1.0, "gradient clipping: largest allowed gradient norm")
    warmup_ratio: float = _knob(0.03, "share of all iterations spent warming the learning rate up (then cosine decay)")
    # -- saving and logging ---------------------------------------------------------------
    save_steps: int = _knob(64, "save a checkpoint every this many iterations (and at the end)")
    save_total_limit: int = _knob(2, "checkpoints kept on disk (-1 = all)")
    log_interval: int = _knob(10, "log the (averaged) loss every this many iterations")
    # -- hardware -------------------------------------------------------------------------
    device: str = _knob("cpu", "cpu | cuda")
    amp: str = _knob("off", "mixed precision on GPU: off | float16 | bfloat16 (CPU: off)")
    gpus: int = _knob(1, "GPUs on this machine to train on (more than 1 needs zero_stage)")
    zero_stage: int = _knob(0, "DeepSpeed ZeRO stage 1-3 through torchrun (0 = no DeepSpeed)")
    cpu_threads: int = _knob(0, "CPU threads for torch (0 = torch's default, all cores; read by labkit.train.finetune)")
    seed: int = _knob(0, "random seed: weights of the adapters, data order, dropout")

    def __post_init__(self):
        _check(self)

    def replace(self, **overrides) -> "Settings":
        """A copy with some knobs changed; unknown names and bad values raise SettingsError."""
        known = {f.name for f in fields(self)}
        for name in overrides:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise SettingsError(f"unknown setting {name!r}.{hint} Known settings: {', '.join(sorted(known))}.")
        overrides = {name: _coerce(name, value) for name, value in overrides.items()}
        return _dc_replace(self, **overrides)

    # -- what the settings imply ----------------------------------------------------------
    @property
    def uses_lean_model(self) -> bool:
        """True when the config must name labkit.train.lean.LeanInternVL instead of XTuner's model."""
        return self.lean_logits or self.weights_dtype != "bfloat16" or not self.gradient_checkpointing

    def training_system_prompt(self) -> str:
        """The system prompt every training sample gets (``system_prompt`` resolved)."""
        from labkit.model.conversation import XTUNER_SYSTEM
        from labkit.checkpoints.remote_code import folder_template

        if self.system_prompt == "auto":
            return folder_template(self.model_path)[1]
        return XTUNER_SYSTEM if self.system_prompt is None else self.system_prompt

    def iterations_per_epoch(self, num_samples: int) -> int:
        """How many iterations one epoch over ``num_samples`` takes, counted as XTuner counts.

        XTuner's LengthGroupedSampler rounds each device's share up to whole groups of
        ``batch_size * accumulative_counts`` samples (repeating a few), so an epoch is always a
        whole number of optimizer updates.
        """
        group = self.batch_size * self.accumulative_counts * self.gpus
        return math.ceil(num_samples / group) * self.accumulative_counts

    def planned_iterations(self, num_samples: int) -> int:
        """Iterations the whole run takes (what the log must reach for success)."""
        return self.iterations_per_epoch(num_samples) * self.max_epochs

    def warmup_iterations(self, num_samples: int) -> int:
        """Warm-up length in iterations: ``warmup_ratio`` of the run, but never 0 or 1.

        mmengine refuses a warm-up of 0 iterations, and with exactly 1 its LinearLR applies only
        ``start_factor`` (1e-5) and never lifts the rate back; the cosine decay that follows then
        starts from that tiny rate and nothing is learned. So the warm-up is at least 2
        iterations, or left out (0) when the whole run is under 3 iterations.
        """
        total = self.planned_iterations(num_samples)
        if self.warmup_ratio == 0 or total < 3:
            return 0
        return max(2, int(self.warmup_ratio * total))


# -- checking -----------------------------------------------------------------------------
def _type_hints():
    return typing.get_type_hints(Settings)


def _describe_type(hint) -> str:
    if hint is float:
        return "a number"
    if hint is int:
        return "a whole number"
    if hint is bool:
        return "True or False"
    if hint is str:
        return "a string"
    origin = typing.get_origin(hint)
    if origin is tuple:
        return "a list/tuple"
    if origin is typing.Union:
        return " or ".join("None" if a is type(None) else _describe_type(a) for a in typing.get_args(hint))
    return str(hint)


def _coerce(name, value):
    """Accept a list where a tuple is expected, and a single path for data_paths."""
    if name == "data_paths" and isinstance(value, (str, os.PathLike)):
        return (os.fspath(value),)
    if isinstance(value, list):
        return tuple(os.fspath(v) if isinstance(v, os.PathLike) else v for v in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _matches(value, hint) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    return isinstance(value, hint)


def _fail(name, value, rule):
    raise SettingsError(f"setting {name}={value!r} is not allowed: {rule}.")


def _check(s: Settings) -> None:
    """Refuse a wrong type, an out-of-range value or a combination that cannot run."""
    hints = _type_hints()
    for f in fields(s):
        value = getattr(s, f.name)
        if not _matches(value, hints[f.name]):
            _fail(f.name, value, f"it must be {_describe_type(hints[f.name])}")
    for name in ("max_length", "batch_size", "accumulative_counts", "max_epochs", "save_steps",
                 "log_interval", "gpus", "lora_r", "lora_alpha"):
        if getattr(s, name) < 1:
            _fail(name, getattr(s, name), "it must be at least 1")
    choices = {"method": METHODS, "device": DEVICES, "amp": AMP_CHOICES, "template": TEMPLATES,
               "weights_dtype": WEIGHT_DTYPES, "zero_stage": (0, 1, 2, 3)}
    for name, allowed in choices.items():
        if getattr(s, name) not in allowed:
            _fail(name, getattr(s, name), f"choose one of {', '.join(map(str, allowed))}")
    if s.cpu_threads < 0:
        _fail("cpu_threads", s.cpu_threads, "use 0 (torch's default) or a count of threads")
    if s.replay < 0:
        _fail("replay", s.replay, "it is a count of known-dish samples: 0 (off) or more")
    if s.dataloader_num_workers < 0:
        _fail("dataloader_num_workers", s.dataloader_num_workers, "it must be 0 or more")
    if s.save_total_limit == 0 or s.save_total_limit < -1:
        _fail("save_total_limit", s.save_total_limit, "use -1 (keep all) or a count of 1 or more")
    if not (s.lr > 0 and math.isfinite(s.lr)):
        _fail("lr", s.lr, "the learning rate must be a positive number")
    if not 0 <= s.warmup_ratio < 1:
        _fail("warmup_ratio", s.warmup_ratio, "it is a share of the run: 0 or more and below 1")
    if not 0 <= s.lora_dropout < 1:
        _fail("lora_dropout", s.lora_dropout, "it must be 0 or more and below 1")
    if not all(0 <= b < 1 for b in s.betas):
        _fail("betas", s.betas, "both AdamW betas must be 0 or more and below 1")
    if not (s.weight_decay >= 0 and math.isfinite(s.weight_decay)):
        _fail("weight_decay", s.weight_decay, "it must be a finite number, 0 or more")
    if not (s.max_norm > 0 and math.isfinite(s.max_norm)):
        _fail("max_norm", s.max_norm, "the gradient-clipping norm must be a finite number above 0")
    if not s.data_paths:
        _fail("data_paths", s.data_paths, "give at least one annotation file")
    if s.lora_target_modules is not None and not s.lora_target_modules:
        _fail("lora_target_modules", s.lora_target_modules, "use None (every Linear) or name at least one module")
    _check_combination(s)


def _check_combination(s: Settings) -> None:
    if s.device == "cpu":
        if s.amp != "off":
            _fail("amp", s.amp, "mixed precision needs a GPU (mmengine's AmpOptimWrapper refuses the CPU); use amp='off'")
        if s.method == "qlora":
            _fail("method", s.method, "QLoRA quantises with bitsandbytes, which needs a GPU; use 'lora' on the CPU")
        if s.gpus != 1 or s.zero_stage != 0:
            _fail("device", s.device, "the CPU path is one process: set gpus=1 and zero_stage=0")
    if s.amp == "float16" and s.weights_dtype == "bfloat16" and s.zero_stage == 0:
        # Seen on an H200 (torch 2.11): the GradScaler behind loss scaling cannot unscale the
        # gradients of mlp1, which XTuner loads and trains in bfloat16 ("not implemented for
        # 'BFloat16'"). bfloat16 needs no loss scaling, so amp='bfloat16' runs without a scaler.
        _fail("amp", s.amp, "float16 loss scaling cannot unscale the bfloat16 weights XTuner trains (mlp1); "
              "use amp='bfloat16' (A100/H100/H200 and newer)")
    if s.gpus > 1 and s.zero_stage == 0:
        _fail("gpus", s.gpus, "several GPUs train through torchrun + DeepSpeed: set zero_stage to 1, 2 or 3")
    if s.method in ("lora", "qlora") and not s.freeze_llm:
        _fail("freeze_llm", s.freeze_llm, "with LoRA the LLM's own weights stay frozen anyway (PEFT freezes them); "
              "set freeze_llm=True, or method='full' to train them")


# -- presets ------------------------------------------------------------------------------
def course_gpu() -> Settings:
    """The course's InternVL2-2B LoRA recipe (XTuner's internvl_v2_internlm2_2b_lora_finetune.py
    with the course's values): LoRA r 128 / alpha 256 / dropout 0.05 on every LLM Linear, frozen
    ViT and LLM, the projector mlp1 trained, AdamW lr 3e-5, 3% warm-up then cosine, 10 epochs,
    batch 4 x accumulation 2, bfloat16 AMP on one GPU (float16 loss scaling fails on the bf16-trained mlp1).

    It trains through labkit.train.lean's model type (``lean_logits=True``): the same loss, computed at
    the answer positions only, with the frozen weights kept in bf16. On an H200 that is 1.35x
    XTuner's own model type at batch 4 and fits the course's 24 GB slice at batch 4 (about
    10 GiB instead of 27; docs/benchmarks.md). On a large GPU, ``gradient_checkpointing=False``
    adds another 1.3x for about 5x the activation memory.

    ``model_path`` names a local copy of OpenGVLab/InternVL2-2B; labkit never downloads it.
    """
    return Settings(
        model_path="models/InternVL2-2B",
        method="lora", freeze_llm=True, freeze_visual_encoder=True,
        lora_r=128, lora_alpha=256, lora_dropout=0.05, lora_target_modules=None, lean_logits=True,
        max_length=8192, batch_size=4, accumulative_counts=2, dataloader_num_workers=4,
        max_epochs=10, lr=3e-5, betas=(0.9, 0.999), weight_decay=0.05, max_norm=1.0, warmup_ratio=0.03,
        save_steps=64, save_total_limit=2, log_interval=10,
        device="cuda", amp="bfloat16", gpus=1, zero_stage=0,
    )


def tiny_lora_cpu() -> Settings:
    """The course recipe on the tiny model: same LoRA method (r 128, alpha 256, every LLM
    Linear, frozen ViT and LLM, mlp1 trained), with a learning rate, epochs and batch sized so
    the held-back dishes are learned in a few minutes on 2 CPU cores.

    The learning rate is 33x the course's: a tiny model trained on 288 pictures needs large steps
    to learn three new dishes in 360 iterations (10 epochs of 36 batches of 8). Weights train in
    float32 (labkit.train.lean): bfloat16 has only 8 bits of mantissa, so small updates to bf16 weights
    round away. The base model comes from `labkit.course.base_model`.

    Replay: 108 known-dish pictures of the base model's own training set join the 288 (396 samples,
    500 iterations), which keeps the known dishes within 2 points of the base model on average
    over five seeds (docs/finetune.md, "Replay").
    """
    return Settings(
        model_path="runs/cache/base-tiny",
        method="lora", freeze_llm=True, freeze_visual_encoder=True,
        lora_r=128, lora_alpha=256, lora_dropout=0.05, lora_target_modules=None,
        lean_logits=True, weights_dtype="float32",
        max_length=2048, batch_size=8, accumulative_counts=1, dataloader_num_workers=0,
        replay=108, max_epochs=10, lr=1e-3, warmup_ratio=0.03,
        save_steps=1000, save_total_limit=1, log_interval=1,
        device="cpu",
    )


def tiny_pretrain_cpu() -> Settings:
    """Full fine-tune of a random tiny model on the ``general`` set: this makes the base model.

    Every weight trains (vision tower, projector, LLM) in float32: 14 epochs of the 350 ``general``
    pictures at lr 1e-3. A higher rate (2e-3, 3e-3) leaves the vision tower unable to tell the
    dishes apart; fewer epochs give a weaker vision tower (measured, see docs/finetune.md).
    """
    return Settings(
        model_path="runs/cache/tiny-random",
        method="full", freeze_llm=False, freeze_visual_encoder=False,
        lean_logits=True, weights_dtype="float32",
        data_paths=("data/general/train.json",), image_folder="data/images",
        max_length=2048, batch_size=8, accumulative_counts=1, dataloader_num_workers=0,
        max_epochs=14, lr=1e-3, weight_decay=0.0, warmup_ratio=0.03,
        save_steps=100000, save_total_limit=1, log_interval=1,
        device="cpu",
    )


PRESETS = {preset.__name__: preset for preset in (course_gpu, tiny_lora_cpu, tiny_pretrain_cpu)}
