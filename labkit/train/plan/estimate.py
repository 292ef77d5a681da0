"""The plan: what one GPU holds at the worst moment of a training step, part by part.

``estimate(config, settings)`` takes the checkpoint's ``config.json`` and the
``labkit.train.settings.Settings`` the run trains with; keywords override single knobs. The
planner's knobs carry the names of ``Settings`` (``lora_r``, ``gpus``, ``batch_size``, ...)
plus a few that only the planner needs (``tiles``, ``text_tokens``, ``supervised_tokens``,
``train_projector``, ``engine``). The memory model is explained in ``docs/memory-plan.md``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, replace

from labkit.train.plan import activations
from labkit.train.plan.calibration import CALIBRATIONS, ENGINES, Calibration
from labkit.train.plan.shape import (BF16, FP32, GIB, LLM_LINEARS, NF4_BYTES_PER_PARAM, ModelShape,
                                     count_parameters, lora_parameters, read_model_shape)
from labkit.train.settings import METHODS, Settings




@dataclass(frozen=True)
class PlanSettings:
    """Everything about the run that changes memory. Names are those of ``Settings``."""

    method: str = "lora"  # lora | qlora | full
    batch_size: int = 1  # per GPU
    max_length: int = 8192  # sequences are cut to this many tokens
    tiles: int | None = None  # image tiles per sample; None = the config's maximum (worst case)
    text_tokens: int = 90  # prompt + answer tokens besides the image tokens
    supervised_tokens: int | None = None  # answer tokens that carry a loss; None = text_tokens
    lora_r: int = 128
    # None = every Linear of the decoder layers. (Settings' None also gives XTuner's output head
    # an adapter; the planner leaves that one out, as in the measurements it was fitted to.)
    lora_target_modules: str | tuple[str, ...] | None = None
    lora_dropout: float = 0.05  # above 0, each adapter input also keeps a 1-byte dropout mask
    gradient_checkpointing: bool = True
    zero_stage: int = 0  # DeepSpeed ZeRO 0-3
    gpus: int = 1
    weights_dtype: str = "bfloat16"  # the only one planned for
    freeze_visual_encoder: bool = True
    train_projector: bool = True  # XTuner always trains mlp1
    lean_logits: bool = False  # logits + loss only at supervised positions
    # whose training code runs: "labkit" (labkit.train.lean's model type through XTuner),
    # "xtuner" (XTuner's own InternVL_V1_5) or "transformers" (transformers' InternVL + PEFT);
    # docs/memory-plan.md, "Whose code trains"
    engine: str = "labkit"

    def targets(self) -> tuple[str, ...]:
        if self.lora_target_modules is None:
            return LLM_LINEARS
        if isinstance(self.lora_target_modules, str):
            return (self.lora_target_modules,)
        return tuple(self.lora_target_modules)


SETTING_NAMES = tuple(f.name for f in fields(PlanSettings))

#: The ``Settings`` fields the planner reads; the others (lr, epochs, paths, ...) leave memory alone.
FROM_SETTINGS = ("method", "batch_size", "max_length", "lora_r", "lora_target_modules", "lora_dropout",
                 "gradient_checkpointing", "zero_stage", "gpus", "weights_dtype", "freeze_visual_encoder",
                 "lean_logits")

#: The planner's former names of knobs that Settings names otherwise.
RENAMED = {"lora_rank": "lora_r", "num_gpus": "gpus", "lora_targets": "lora_target_modules",
           "freeze_vision": "freeze_visual_encoder", "dtype": "weights_dtype"}


def settings_knobs(settings: Settings) -> dict:
    """The planner's knobs of a training ``Settings``: its memory knobs, and as ``engine`` the
    model type its XTuner config names (labkit.train.lean's when ``uses_lean_model``, else XTuner's)."""
    if not isinstance(settings, Settings):
        raise ValueError(
            f"settings must be a labkit.train.settings.Settings (such as settings.course_gpu()), "
            f"got {type(settings).__name__}; give single planner settings as keywords instead."
        )
    if settings.method == "full" and settings.freeze_llm:
        raise ValueError(
            "method='full' with freeze_llm=True trains only mlp1 (and an unfrozen vision tower); the "
            "planner plans a full fine-tune of the language model: set freeze_llm=False."
        )
    knobs = {name: getattr(settings, name) for name in FROM_SETTINGS}
    knobs["engine"] = "labkit" if settings.uses_lean_model else "xtuner"
    return knobs


def _unknown_setting(key: str) -> str:
    known = f"The planner's settings: {', '.join(SETTING_NAMES)}."
    if key in RENAMED:
        return (f"unknown setting '{key}': the planner uses the training settings' names, "
                f"write '{RENAMED[key]}'. {known}")
    if key in {f.name for f in fields(Settings)}:
        return f"'{key}' is a training setting that does not change the memory plan. {known}"
    close = difflib.get_close_matches(key, SETTING_NAMES, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown setting '{key}'.{hint} {known}"


def _whole(name: str, value, low: int, high: int | None = None, hint: str = "") -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        span = f"between {low} and {high}" if high is not None else f"{low} or more"
        raise ValueError(f"{name} must be a whole number {span}, got {value!r}. {hint}".rstrip())


def make_settings(shape: ModelShape, **knobs) -> PlanSettings:
    """Check every knob and return a ``PlanSettings``; errors name the bad value."""
    for key in knobs:
        if key not in SETTING_NAMES:
            raise ValueError(_unknown_setting(key))
    s = PlanSettings(**knobs)
    if s.method not in METHODS:
        raise ValueError(f"unknown method {s.method!r}: use one of {', '.join(METHODS)}.")
    _whole("batch_size", s.batch_size, 1, hint="Use 1 and raise gradient accumulation instead.")
    _whole("max_length", s.max_length, 1)
    tiles = shape.max_tiles if s.tiles is None else s.tiles
    _whole(
        "tiles", tiles, 1, shape.max_tiles,
        hint=f"This model cuts an image into at most {shape.max_tiles} tiles "
        "(max_dynamic_patch plus the thumbnail).",
    )
    _whole("text_tokens", s.text_tokens, 1, hint="Count the prompt and the answer.")
    supervised = s.text_tokens if s.supervised_tokens is None else s.supervised_tokens
    _whole("supervised_tokens", supervised, 1, max(1, s.text_tokens),
           hint="Supervised tokens are the answer's tokens, part of text_tokens.")
    _whole("zero_stage", s.zero_stage, 0, 3)
    _whole("gpus", s.gpus, 1)
    if s.method != "full":
        _whole("lora_r", s.lora_r, 1)
        targets = s.targets()
        bad = [t for t in targets if t not in LLM_LINEARS]
        if bad or not targets:
            raise ValueError(
                f"unknown lora target {bad[0] if bad else targets!r}: use None (every Linear) or a "
                f"subset of {', '.join(LLM_LINEARS)} (the Linears of an InternLM2 layer)."
            )
    dropout = s.lora_dropout
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"lora_dropout must be a dropout probability, 0 or more and below 1 "
                         f"(such as 0.05), got {dropout!r}.")
    if s.engine not in ENGINES:
        raise ValueError(f"unknown engine {s.engine!r}: use one of {', '.join(ENGINES)}.")
    if s.weights_dtype != "bfloat16":
        raise ValueError(f"weights_dtype {s.weights_dtype!r} is not planned for: the planner models "
                         "bfloat16 weights, as XTuner loads them on a GPU; plan with weights_dtype='bfloat16'.")
    for name in ("gradient_checkpointing", "freeze_visual_encoder", "train_projector", "lean_logits"):
        if not isinstance(getattr(s, name), bool):
            raise ValueError(f"{name} must be True or False, got {getattr(s, name)!r}.")
    return replace(s, tiles=tiles, supervised_tokens=supervised)


@dataclass(frozen=True)
class Plan:
    """An estimate of peak GPU memory per GPU, in GiB, broken into parts."""

    weights: float
    optimizer: float  # trainable copies + master weights + AdamW moments
    activations: float
    logits: float
    gradients: float  # created during backward, after the logits are freed
    vision_forward: float  # frozen tower's no-grad working set, before the LLM runs
    overhead: float
    sequence_length: int
    settings: PlanSettings
    shape: ModelShape = field(repr=False)
    trained_parameters: int = 0  # parameters the optimizer updates
    notes: tuple[str, ...] = ()

    @property
    def peak_phase(self) -> str:
        """Which moment of the step is the worst one."""
        loss = self.activations + self.logits
        backward = self.activations + self.gradients
        if self.vision_forward > max(loss, backward):
            return "vision forward"
        return "loss" if loss >= backward else "end of backward"

    @property
    def dynamic(self) -> float:
        phase = self.peak_phase
        if phase == "vision forward":
            return self.vision_forward
        return self.activations + (self.logits if phase == "loss" else self.gradients)

    @property
    def total(self) -> float:
        """Peak GiB one GPU must hold."""
        return self.weights + self.optimizer + self.dynamic + self.overhead

    def rows(self) -> list[tuple[str, float]]:
        """The parts that add up to the peak, in the order a step allocates them."""
        static = [("weights", self.weights), ("trainable + optimizer", self.optimizer)]
        phase = self.peak_phase
        if phase == "vision forward":
            moving = [("vision forward (no-grad)", self.vision_forward)]
        elif phase == "loss":
            moving = [("activations", self.activations), ("logits", self.logits)]
        else:
            moving = [("activations", self.activations), ("gradients", self.gradients)]
        return static + moving + [("overhead", self.overhead)]

    def table(self) -> str:
        s = self.settings
        head = (
            f"{s.method} | batch {s.batch_size} x {self.sequence_length} tokens "
            f"({s.tiles} tiles) | checkpointing {'on' if s.gradient_checkpointing else 'off'} | "
            f"ZeRO-{s.zero_stage} on {s.gpus} GPU(s) | "
            f"{'lean' if s.lean_logits else 'full-vocabulary'} logits | {s.engine}"
        )
        lines = [head, f"{'part':<26}{'GiB':>8}"]
        lines += [f"{name:<26}{gib:>8.2f}" for name, gib in self.rows()]
        lines.append(f"{'peak per GPU':<26}{self.total:>8.2f}   (at: {self.peak_phase})")
        others = [("logits", self.logits), ("gradients", self.gradients),
                  ("vision forward (no-grad)", self.vision_forward)]
        shown = {name for name, _ in self.rows()}
        side = [f"{n} {g:.2f}" for n, g in others if n not in shown and g > 0]
        if side:
            lines.append("not at the peak moment: " + ", ".join(side) + " GiB")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _parameter_memory(shape: ModelShape, s: PlanSettings) -> dict[str, float]:
    """Bytes per GPU of weights, optimizer-owned tensors and gradients."""
    n = count_parameters(shape)
    linear_bytes = NF4_BYTES_PER_PARAM if s.method == "qlora" else BF16
    llm_rest = n["llm_other"] + n["embeddings"] + n["head"]
    if s.engine == "xtuner" and s.method != "full":
        # XTuner prepares the LLM for (Q)LoRA with PEFT's prepare_model_for_kbit_training,
        # which casts every bf16 weight it finds there to fp32
        linear_bytes = FP32 if s.method == "lora" else linear_bytes
        weights = n["llm_linears"] * linear_bytes + llm_rest * FP32 + (n["vision"] + n["projector"]) * BF16
    else:
        weights = n["llm_linears"] * linear_bytes + (n["vision"] + n["projector"] + llm_rest) * BF16

    # modules trained outright beside the adapters: mlp1, and the vision tower if unfrozen
    extra = (n["projector"] if s.train_projector else 0) + (0 if s.freeze_visual_encoder else n["vision"])
    if s.method == "full":
        trained = extra + n["llm_linears"] + n["llm_other"] + n["embeddings"] + n["head"]
        owned = 0.0  # the bf16 weights being trained are already counted in `weights`
        states = trained * (FP32 + 2 * FP32)  # fp32 master copy + two fp32 AdamW moments
        grads = trained * BF16
    else:
        adapters = lora_parameters(shape, s.lora_r, s.targets())
        trained = adapters + extra
        owned = adapters * FP32  # PEFT keeps the adapters in fp32
        states = adapters * 2 * FP32 + extra * 2 * BF16  # AdamW moments follow the dtype
        grads = adapters * FP32 + extra * BF16

    # ZeRO-1 shards optimizer states, ZeRO-2 also gradients, ZeRO-3 also the weights
    def shard(stage: int) -> int:
        return s.gpus if s.zero_stage >= stage else 1

    return {
        "weights": weights / shard(3),
        "optimizer": owned / shard(3) + states / shard(1),
        "gradients": grads / shard(2),
        "trained_parameters": trained,
    }


def _overhead_bytes(shape: ModelShape, s: PlanSettings, cal: Calibration) -> float:
    """CUDA context, plus full-precision working copies that ZeRO-3 and QLoRA need."""
    total = cal.cuda_context_gib * GIB
    linears = shape.llm_linear_shapes().values()
    if s.zero_stage == 3 and s.gpus > 1:
        layer = sum(i * o for i, o in linears)
        total += 2 * layer * BF16  # the running layer gathered + the prefetched next one
    if s.method == "qlora":
        total += max(i * o for i, o in linears) * BF16  # one Linear dequantised while it runs
    return total


def _notes(shape: ModelShape, s: PlanSettings) -> tuple[str, ...]:
    notes = []
    wanted = s.tiles * shape.num_image_token + s.text_tokens
    if wanted > s.max_length:
        notes.append(
            f"{wanted} tokens are cut to max_length {s.max_length}: image tokens would be lost; "
            "raise max_length or use fewer tiles."
        )
    if s.zero_stage and s.gpus == 1:
        notes.append("ZeRO shards across GPUs: on 1 GPU it saves nothing.")
    return tuple(notes)


def estimate(config, settings: Settings | None = None, *, calibration: Calibration | None = None,
             **knobs) -> Plan:
    """Estimate peak GPU memory for fine-tuning the checkpoint described by ``config``.

    ``config`` is a config dict, a ``config.json`` path or a checkpoint folder. ``settings`` is
    the ``Settings`` the run trains with (``settings_knobs`` says what is read from it); keywords
    are ``PlanSettings`` fields and override it, or stand alone on ``PlanSettings``' defaults.
    ``calibration`` replaces the engine's entry of ``CALIBRATIONS`` (for refitting).
    """
    shape = read_model_shape(config)
    if settings is not None:
        knobs = {**settings_knobs(settings), **knobs}
    s = make_settings(shape, **knobs)
    cal = calibration or CALIBRATIONS[s.engine]
    mem = _parameter_memory(shape, s)
    return Plan(
        weights=mem["weights"] / GIB,
        optimizer=mem["optimizer"] / GIB,
        activations=activations.activation_bytes(shape, s) * cal.scale(s.gradient_checkpointing) / GIB,
        logits=activations.logit_elements(shape, s) * cal.logit_bytes_per_element / GIB,
        gradients=mem["gradients"] / GIB,
        vision_forward=activations.frozen_vision_forward_bytes(shape, s) / GIB,
        overhead=_overhead_bytes(shape, s, cal) / GIB,
        sequence_length=activations.sequence_length(shape, s),
        settings=s,
        shape=shape,
        trained_parameters=int(mem["trained_parameters"]),
        notes=_notes(shape, s),
    )
