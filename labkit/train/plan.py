"""Plan the GPU memory of an InternVL2 fine-tune before you launch it.

A fine-tune that runs out of memory after ten minutes of loading wastes a lab session. This
module adds up, from the checkpoint's ``config.json`` and your training settings, what the
GPU has to hold at the worst moment of a training step, and says whether it fits a card::

    from labkit.train import plan
    p = plan.estimate("labkit/assets/internvl2-2b/config.json", method="lora", batch_size=4)
    print(p)                                  # a table: weights, optimizer, activations...
    plan.fits(p, "A100 80GB x 30%")           # does not fit: needs ~24 GiB of 21.6 usable
    plan.recommend("labkit/assets/internvl2-2b/config.json", "24GB", effective_batch=8)

What sits in GPU memory during one training step
------------------------------------------------
1. **Weights** - every parameter of the vision tower, the projector ``mlp1`` and the language
   model, in bf16 (2 bytes). QLoRA stores the language model's Linear weights in 4-bit NF4
   (about 0.52 bytes with the double-quantised scales); embeddings, the output head, the
   vision tower and ``mlp1`` stay bf16, as in XTuner's QLoRA configs.
2. **Trainable parameters and AdamW** - what the optimizer owns:
   - LoRA / QLoRA adapters are kept in fp32 by PEFT: 4 bytes of weight + 8 bytes for AdamW's
     two moments (+ 4 bytes of gradient, see 4). Modules trained outright beside the adapters
     (``mlp1``, an unfrozen vision tower) stay bf16 with bf16 moments (plain ``torch.optim.AdamW``
     keeps moments in the parameter's dtype): 4 bytes of moments per parameter.
   - full fine-tuning is assumed to be DeepSpeed-style mixed precision: bf16 weights (counted
     in 1) + an fp32 master copy (4) + two fp32 moments (8) + a bf16 gradient (2) = 16 bytes.
3. **Activations** - tensors the forward pass saves for the backward pass, per token:
   - with gradient checkpointing, each decoder layer keeps only its input (hidden_size bf16
     values) and ONE layer at a time is re-run with everything saved during backward;
   - without it every layer keeps everything (``llm_layer_saved_bytes`` lists the tensors);
   - a frozen vision tower runs without autograd: its working set is short-lived and only
     counts if it is larger than the language model's peak (it never is for InternVL2-2B).
4. **Logits** - the output head turns every position into ``vocab_size`` scores. XTuner and
   transformers compute them for every token (92,553 per token for InternVL2-2B): bf16
   logits, the fp32 upcast used by the cross-entropy loss and its fp32 gradient. For 3,418
   tokens that is 0.6 + 1.2 + 1.2 GiB per sample - the largest thing that grows with the
   batch. ``lean_logits``
   computes logits only at the supervised (answer) positions, which removes almost all of it.
   Gradients of the trainable parameters are created during backward, after the logits have
   been freed, so the planner counts ``max(logits, gradients)``, not both.
5. **Overhead** - the CUDA context (kernels, cuBLAS workspace) and, for ZeRO-3 and QLoRA,
   the buffers that hold a layer's full-precision weights while it runs.

Peak = weights + optimizer + activations + max(logits, gradients) + overhead.

Whose code trains
-----------------
The same step costs different memory in different code (``engine``):

* ``"labkit"`` (the default): labkit's model through XTuner with ``labkit.train.lean``'s model type,
  bf16 autocast; frozen weights bf16, LoRA inputs bf16.
* ``"xtuner"``: XTuner's own ``InternVL_V1_5``. PEFT's preparation step leaves the frozen LLM in
  fp32 (2 more bytes per weight) and LoRA inputs are cast to fp32.
* ``"transformers"``: transformers' InternVL + PEFT, pure bf16 (the anchors below).

Calibration
-----------
The model above is first principles except three constants, gathered in ``CALIBRATION``
(transformers) and ``KIT_CALIBRATION`` (labkit and xtuner, which adds a fourth: the activation
scale without gradient checkpointing, fitted to ``KIT_MEASUREMENTS``). For ``CALIBRATION``:
the bytes one logit really costs (nominally 2 + 4 + 4 = 10; fitted 9.5), a scale on the
activation count (the backward pass needs temporary gradient buffers and the caching allocator
rounds blocks, so real activations exceed the tensors we list; fitted 1.53), and the CUDA
context (0.5 GiB, assumed). The two fitted ones come from ``MEASURED_ANCHORS``: peaks measured
on an H200 for an InternVL2-2B-sized model, LoRA r=128 on every LLM Linear, bf16, gradient
checkpointing, 13 tiles = 3,418 tokens per sample. Those peaks extrapolate to ~5.4 GiB at
batch 0 - no more than weights + optimizer - so they are allocator figures without the CUDA
context; the fit compares them with the plan minus the context, and predictions sit up to
0.7 GiB above them, on the safe side. Re-measure and refit with ``fit_calibration``.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from labkit import fileio
from labkit.tiling import tokens_per_tile

GIB = 1024**3
BF16 = 2  # bytes
FP32 = 4  # bytes
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit + 8-bit block scale + fp32 scale-of-scales

# =====================================================================================
# CALIBRATION - the only fitted numbers. Change them here, nowhere else.
# =====================================================================================


@dataclass(frozen=True)
class Calibration:
    """The free constants of the planner (see the module docstring, "Calibration")."""

    logit_bytes_per_element: float  # fitted; nominal 10 = bf16 logits + fp32 upcast + fp32 grad
    activation_scale: float  # fitted; real activation memory / tensors llm_layer_saved_bytes lists
    cuda_context_gib: float  # assumed, not fitted: CUDA context + cuBLAS workspace, per GPU
    fitted_on: str
    # the same scale without gradient checkpointing, where every layer keeps what it saves
    no_checkpoint_scale: float | None = None  # None = activation_scale (not measured)

    def scale(self, gradient_checkpointing: bool) -> float:
        if gradient_checkpointing or self.no_checkpoint_scale is None:
            return self.activation_scale
        return self.no_checkpoint_scale


#: transformers' InternVL + PEFT (the issue's anchors): pure bf16 weights, fp32 LoRA adapters.
CALIBRATION = Calibration(
    logit_bytes_per_element=9.5,
    activation_scale=1.53,
    cuda_context_gib=0.5,
    fitted_on="MEASURED_ANCHORS (H200, InternVL2-2B-sized, LoRA r128, 13 tiles), fit_calibration()",
)

#: labkit's model code trained by XTuner's runner with bf16 AMP ("labkit": labkit.train.lean's model
#: type; "xtuner": XTuner's own InternVL_V1_5). One set of constants serves both engines: they
#: differ in tensors the planner counts itself (float32 frozen LLM, float32 LoRA inputs).
KIT_CALIBRATION = Calibration(
    logit_bytes_per_element=11.82,
    activation_scale=0.978,
    no_checkpoint_scale=0.828,
    cuda_context_gib=0.5,
    fitted_on="KIT_MEASUREMENTS (H200, benchmarks/gpu_train.py), fit_calibration(..., KIT_MEASUREMENTS)",
)

CALIBRATIONS = {"transformers": CALIBRATION, "labkit": KIT_CALIBRATION, "xtuner": KIT_CALIBRATION}
ENGINES = tuple(CALIBRATIONS)

SAFETY_MARGIN = 0.10  # fits() keeps 10 % of the budget free for fragmentation and other processes

#: Peak GPU memory measured on an H200 (GiB) for an InternVL2-2B-sized model, LoRA r=128 on
#: every LLM Linear, bf16, gradient checkpointing, 13 tiles (3,418 tokens) per sample.
#: Each entry: (batch_size, lean_logits, measured GiB).
MEASURED_ANCHORS = (
    (1, False, 10.0),
    (2, False, 14.7),
    (4, False, 23.9),
    (8, False, 42.3),
    (16, False, 79.2),
    (4, True, 13.0),  # lean logits, transformers + PEFT
    (8, True, 20.5),
)
ANCHOR_SETTINGS = dict(
    engine="transformers",
    method="lora",
    lora_rank=128,
    lora_targets="all",
    tiles=13,
    text_tokens=90,  # 13 * 256 image tokens + 90 text tokens = 3,418
    gradient_checkpointing=True,
    freeze_vision=True,
)

#: Peaks XTuner logged (its ``memory``: torch.cuda.max_memory_allocated) on an H200 for
#: InternVL2-2B's architecture trained by ``benchmarks/gpu_train.py``: the course's LoRA (r 128,
#: every LLM Linear), bf16 AMP, 13 tiles (3,376 tokens) per sample.
#: Each entry: (engine, batch_size, lean_logits, gradient_checkpointing, measured GiB).
KIT_MEASUREMENTS = (
    ("xtuner", 1, False, True, 13.98),
    ("xtuner", 2, False, True, 18.59),
    ("xtuner", 4, False, True, 27.27),
    ("xtuner", 8, False, True, 44.67),
    ("labkit", 1, True, True, 7.0),
    ("labkit", 2, True, True, 7.85),
    ("labkit", 4, True, True, 9.89),
    ("labkit", 8, True, True, 13.93),
    ("labkit", 1, True, False, 16.35),
    ("labkit", 2, True, False, 26.71),
    ("labkit", 4, True, False, 47.41),
    ("labkit", 8, True, False, 88.59),
)
KIT_SETTINGS = dict(method="lora", lora_rank=128, lora_targets="all", tiles=13, text_tokens=48,
                    freeze_vision=True)

# =====================================================================================
# Reading the checkpoint's config.json
# =====================================================================================

LLM_LINEARS = ("wqkv", "wo", "w1", "w3", "w2")  # every Linear of an InternLM2 decoder layer


@dataclass(frozen=True)
class ModelShape:
    """The handful of sizes from ``config.json`` that decide memory."""

    vision_hidden: int
    vision_layers: int
    vision_intermediate: int
    image_size: int
    patch_size: int
    num_channels: int
    vision_qkv_bias: bool
    llm_hidden: int
    llm_layers: int
    llm_heads: int
    llm_kv_heads: int
    llm_intermediate: int
    vocab_size: int
    tie_word_embeddings: bool
    downsample_ratio: float
    force_image_size: int
    max_tiles: int  # max_dynamic_patch + 1 thumbnail when use_thumbnail
    use_thumbnail: bool

    @property
    def head_dim(self) -> int:
        return self.llm_hidden // self.llm_heads

    @property
    def num_image_token(self) -> int:
        """Tokens one 448 px tile becomes: (448/14)^2 patches, pixel-shuffled by 0.5 -> 256."""
        return tokens_per_tile(self.force_image_size, self.patch_size, self.downsample_ratio)

    @property
    def vision_tokens_per_tile(self) -> int:
        """Tokens inside the vision tower: one per patch plus the class token (1025)."""
        return (self.image_size // self.patch_size) ** 2 + 1

    def llm_linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each Linear in one decoder layer."""
        h, kv = self.llm_hidden, self.llm_kv_heads * self.head_dim
        q = self.llm_heads * self.head_dim
        i = self.llm_intermediate
        return {"wqkv": (h, q + 2 * kv), "wo": (q, h), "w1": (h, i), "w3": (h, i), "w2": (i, h)}


def _load_config_dict(config) -> tuple[dict, str]:
    """Accept a dict, a config.json path or a checkpoint folder; return (dict, where)."""
    if isinstance(config, dict):
        return config, "the config dict"
    if not isinstance(config, (str, Path)):
        raise ValueError(
            f"config must be a dict or the path of a config.json / checkpoint folder, "
            f"got {type(config).__name__}."
        )
    path = fileio.config_path(config)
    return fileio.read_config(path), str(path)


def _get(cfg: dict, where: str, *keys: str, default=None):
    """Read a nested key such as ('llm_config', 'hidden_size') or explain what is missing."""
    node = cfg
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            if default is not None:
                return default
            raise ValueError(
                f"{where} has no '{'.'.join(keys)}'. The planner needs an InternVL2 config with "
                "nested 'vision_config' and 'llm_config' (see the model's config.json)."
            )
        node = node[k]
    return node


def read_model_shape(config) -> ModelShape:
    """Read the sizes that matter from an InternVL2 ``config.json`` (dict, file or folder)."""
    cfg, where = _load_config_dict(config)

    def vis(key, default=None):
        return _get(cfg, where, "vision_config", key, default=default)

    def llm(key, default=None):
        return _get(cfg, where, "llm_config", key, default=default)

    heads = int(llm("num_attention_heads"))
    image_size = int(vis("image_size"))
    use_thumbnail = bool(_get(cfg, where, "use_thumbnail", default=False))
    return ModelShape(
        vision_hidden=int(vis("hidden_size")),
        vision_layers=int(vis("num_hidden_layers")),
        vision_intermediate=int(vis("intermediate_size")),
        image_size=image_size,
        patch_size=int(vis("patch_size")),
        num_channels=int(vis("num_channels", default=3)),
        vision_qkv_bias=bool(vis("qkv_bias", default=True)),
        llm_hidden=int(llm("hidden_size")),
        llm_layers=int(llm("num_hidden_layers")),
        llm_heads=heads,
        llm_kv_heads=int(llm("num_key_value_heads", default=heads)),
        llm_intermediate=int(llm("intermediate_size")),
        vocab_size=int(llm("vocab_size")),
        tie_word_embeddings=bool(llm("tie_word_embeddings", default=False)),
        downsample_ratio=float(_get(cfg, where, "downsample_ratio")),
        force_image_size=int(_get(cfg, where, "force_image_size", default=image_size)),
        max_tiles=int(_get(cfg, where, "max_dynamic_patch", default=12)) + (1 if use_thumbnail else 0),
        use_thumbnail=use_thumbnail,
    )


# =====================================================================================
# Counting parameters
# =====================================================================================


def count_parameters(shape: ModelShape) -> dict[str, int]:
    """Parameters per part: vision tower, projector mlp1, LLM layers, embeddings, output head."""
    d, iv, p = shape.vision_hidden, shape.vision_intermediate, shape.patch_size
    patches = (shape.image_size // p) ** 2
    vision_embed = d + (1 + patches) * d + shape.num_channels * p * p * d + d
    qkv_bias = 3 * d if shape.vision_qkv_bias else 0
    vision_layer = (
        2 * d  # norm1 weight + bias
        + d * 3 * d + qkv_bias  # attn.qkv
        + d * d + d  # attn.proj
        + 2 * d  # norm2
        + d * iv + iv + iv * d + d  # mlp.fc1, mlp.fc2
        + 2 * d  # ls1, ls2
    )
    h = shape.llm_hidden
    shuffled = int(round(d / shape.downsample_ratio**2))  # 4 * d after pixel shuffle
    projector = 2 * shuffled + shuffled * h + h + h * h + h  # LayerNorm, Linear, GELU, Linear
    llm_layer = sum(i * o for i, o in shape.llm_linear_shapes().values()) + 2 * h  # + two RMSNorms
    head = 0 if shape.tie_word_embeddings else shape.vocab_size * h
    return {
        "vision": vision_embed + shape.vision_layers * vision_layer,
        "projector": projector,
        "llm_linears": shape.llm_layers * (llm_layer - 2 * h),
        "llm_other": shape.llm_layers * 2 * h + h,  # RMSNorm weights
        "embeddings": shape.vocab_size * h,
        "head": head,
    }


def lora_parameters(shape: ModelShape, rank: int, targets: tuple[str, ...]) -> int:
    """LoRA adds A (rank x in) and B (out x rank) to each targeted Linear of every layer."""
    linears = shape.llm_linear_shapes()
    return shape.llm_layers * sum(rank * (linears[t][0] + linears[t][1]) for t in targets)


# =====================================================================================
# Training settings
# =====================================================================================

METHODS = ("lora", "qlora", "full")


@dataclass(frozen=True)
class PlanSettings:
    """Everything about the run that changes memory. Keyword names are the public API."""

    method: str = "lora"  # lora | qlora | full
    batch_size: int = 1  # per GPU
    max_length: int = 8192  # sequences are cut to this many tokens
    tiles: int | None = None  # image tiles per sample; None = the config's maximum (worst case)
    text_tokens: int = 90  # prompt + answer tokens besides the image tokens
    supervised_tokens: int | None = None  # answer tokens that carry a loss; None = text_tokens
    lora_rank: int = 128
    lora_targets: str | tuple[str, ...] = "all"  # "all" = every LLM Linear except the head
    lora_dropout: bool = True  # XTuner's configs use lora_dropout=0.05
    gradient_checkpointing: bool = True
    zero_stage: int = 0  # DeepSpeed ZeRO 0-3
    num_gpus: int = 1
    dtype: str = "bf16"
    freeze_vision: bool = True
    train_projector: bool = True  # XTuner always trains mlp1
    lean_logits: bool = False  # logits + loss only at supervised positions
    # whose training code runs: "labkit" (labkit.train.lean's model type through XTuner: frozen weights
    # bf16, LoRA inputs bf16 under autocast), "xtuner" (XTuner's own InternVL_V1_5: PEFT leaves
    # the frozen LLM in fp32 and casts LoRA inputs to fp32) or "transformers" (transformers'
    # InternVL + PEFT, the anchors)
    engine: str = "labkit"

    def targets(self) -> tuple[str, ...]:
        if self.lora_targets == "all":
            return LLM_LINEARS
        if isinstance(self.lora_targets, str):
            return (self.lora_targets,)
        return tuple(self.lora_targets)


SETTING_NAMES = tuple(f.name for f in fields(PlanSettings))


def _whole(name: str, value, low: int, high: int | None = None, hint: str = "") -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        span = f"between {low} and {high}" if high is not None else f"{low} or more"
        raise ValueError(f"{name} must be a whole number {span}, got {value!r}. {hint}".rstrip())


def make_settings(shape: ModelShape, **settings) -> PlanSettings:
    """Check every setting and return a ``PlanSettings``; errors name the bad value."""
    unknown = [k for k in settings if k not in SETTING_NAMES]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, SETTING_NAMES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(
            f"unknown setting '{key}'.{hint} Known settings: {', '.join(SETTING_NAMES)}."
        )
    s = PlanSettings(**settings)
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
    _whole("num_gpus", s.num_gpus, 1)
    if s.method != "full":
        _whole("lora_rank", s.lora_rank, 1)
        targets = s.targets()
        bad = [t for t in targets if t not in LLM_LINEARS]
        if bad or not targets:
            raise ValueError(
                f"unknown lora target {bad[0] if bad else targets!r}: use 'all' or a subset of "
                f"{', '.join(LLM_LINEARS)} (the Linears of an InternLM2 layer)."
            )
    if s.engine not in ENGINES:
        raise ValueError(f"unknown engine {s.engine!r}: use one of {', '.join(ENGINES)}.")
    if str(s.dtype).lower() not in ("bf16", "bfloat16", "fp16", "float16"):
        raise ValueError(f"dtype {s.dtype!r} is not planned for: train in 'bf16' (or 'fp16').")
    for name in ("lora_dropout", "gradient_checkpointing", "freeze_vision", "train_projector",
                 "lean_logits"):
        if not isinstance(getattr(s, name), bool):
            raise ValueError(f"{name} must be True or False, got {getattr(s, name)!r}.")
    return replace(s, tiles=tiles, supervised_tokens=supervised)


# =====================================================================================
# Activations: what the forward pass saves for backward
# =====================================================================================


def llm_layer_saved_bytes(shape: ModelShape, s: PlanSettings) -> dict[str, float]:
    """Bytes ONE decoder layer saves for backward, per token, tensor by tensor.

    InternLM2 layer: RMSNorm -> wqkv -> rotary -> attention -> wo -> +residual ->
    RMSNorm -> w1 (gate), w3 (up) -> silu(gate) * up -> w2 -> +residual.
    """
    h, i = shape.llm_hidden, shape.llm_intermediate
    kv = shape.llm_kv_heads * shape.head_dim
    autocast = s.engine == "labkit"  # bf16 autocast with LoRA inputs left in bf16 (labkit.train.lean)
    saved = {
        # RMSNorm upcasts to fp32: keeps the fp32 input, the fp32 normalised value, bf16 output
        # (under autocast the fp32 normalised value is not kept: measured, tests/test_plan.py)
        "2 RMSNorms": 2 * (FP32 * h + (0 if autocast else FP32 * h) + BF16 * h),
        # fused q,k,v output; rotated q and k; attention output; its contiguous copy for wo
        "attention": BF16 * (h + 2 * kv) + BF16 * (h + kv) + BF16 * h + BF16 * h,
        # gate and up outputs, silu(gate), silu(gate)*up (the input of w2)
        "SwiGLU MLP": 4 * BF16 * i,
    }
    if s.method != "full":
        linears = shape.llm_linear_shapes()
        # PEFT keeps adapters in fp32: each adapter saves a copy of its input (after dropout,
        # plus the 1-byte dropout mask) and its rank-r fp32 intermediate. PEFT casts the input
        # to fp32; labkit.train.lean skips that cast under autocast, so there the copy is bf16.
        # (and autocast runs the rank-r product in bf16 too).
        per_input = (BF16 if autocast else FP32) + (1 if s.lora_dropout else 0)
        per_rank = BF16 if autocast else FP32
        saved["LoRA adapter inputs"] = sum(
            per_input * linears[t][0] + per_rank * s.lora_rank for t in s.targets()
        )
    return saved


def _vision_layer_saved_bytes(shape: ModelShape) -> float:
    """Bytes one vision layer saves per token when the tower is trained."""
    d, iv = shape.vision_hidden, shape.vision_intermediate
    # norm1 in/out, qkv out, attention out, proj in/out (ls1), norm2 in/out, fc1 out, gelu out,
    # fc2 out (ls2)
    return BF16 * (2 * d + 3 * d + d + 2 * d + 2 * d + d) + BF16 * 2 * iv


def _sequence_length(shape: ModelShape, s: PlanSettings) -> int:
    return min(s.tiles * shape.num_image_token + s.text_tokens, s.max_length)


def activation_bytes(shape: ModelShape, s: PlanSettings) -> float:
    """Activations saved for backward on one GPU (before the calibration scale)."""
    h = shape.llm_hidden
    tokens = s.batch_size * _sequence_length(shape, s)
    layer = sum(llm_layer_saved_bytes(shape, s).values())
    if s.gradient_checkpointing:
        llm = shape.llm_layers * BF16 * h + layer  # every layer's input + one layer re-run
    else:
        llm = shape.llm_layers * layer
    # input embeddings (+ the copy where image tokens are merged) and the final RMSNorm
    llm += 2 * BF16 * h + (FP32 + FP32 + BF16) * h
    total = tokens * llm

    image_tokens = s.batch_size * s.tiles * shape.num_image_token
    if s.train_projector or not s.freeze_vision:
        shuffled = shape.vision_hidden / shape.downsample_ratio**2
        total += image_tokens * BF16 * (2 * shuffled + 2 * h)  # LayerNorm in/out, GELU in/out

    if not s.freeze_vision:
        vtokens = s.batch_size * s.tiles * shape.vision_tokens_per_tile
        vlayer = _vision_layer_saved_bytes(shape)
        if s.gradient_checkpointing:
            total += vtokens * (shape.vision_layers * BF16 * shape.vision_hidden + vlayer)
        else:
            total += vtokens * shape.vision_layers * vlayer
    return total


def frozen_vision_forward_bytes(shape: ModelShape, s: PlanSettings) -> float:
    """Working set of a frozen tower's no-grad forward: residual stream + the MLP's widest step."""
    if not s.freeze_vision:
        return 0.0
    vtokens = s.batch_size * s.tiles * shape.vision_tokens_per_tile
    d, iv = shape.vision_hidden, shape.vision_intermediate
    return vtokens * BF16 * (2 * d + 2 * iv)


def logit_elements(shape: ModelShape, s: PlanSettings) -> int:
    """Positions that get full-vocabulary logits, times the vocabulary size."""
    positions = s.supervised_tokens if s.lean_logits else _sequence_length(shape, s)
    return s.batch_size * positions * shape.vocab_size


# =====================================================================================
# The plan
# =====================================================================================


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
            f"ZeRO-{s.zero_stage} on {s.num_gpus} GPU(s) | "
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
    """Bytes per GPU of weights, optimizer-owned tensors and gradients (parts 1, 2 and 4)."""
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
    extra = (n["projector"] if s.train_projector else 0) + (0 if s.freeze_vision else n["vision"])
    if s.method == "full":
        trained = extra + n["llm_linears"] + n["llm_other"] + n["embeddings"] + n["head"]
        owned = 0.0  # the bf16 weights being trained are already counted in `weights`
        states = trained * (FP32 + 2 * FP32)  # fp32 master copy + two fp32 AdamW moments
        grads = trained * BF16
    else:
        adapters = lora_parameters(shape, s.lora_rank, s.targets())
        trained = adapters + extra
        owned = adapters * FP32  # PEFT keeps the adapters in fp32
        states = adapters * 2 * FP32 + extra * 2 * BF16  # AdamW moments follow the dtype
        grads = adapters * FP32 + extra * BF16

    # ZeRO-1 shards optimizer states, ZeRO-2 also gradients, ZeRO-3 also the weights
    def shard(stage: int) -> int:
        return s.num_gpus if s.zero_stage >= stage else 1

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
    if s.zero_stage == 3 and s.num_gpus > 1:
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
    if s.zero_stage and s.num_gpus == 1:
        notes.append("ZeRO shards across GPUs: on 1 GPU it saves nothing.")
    return tuple(notes)


def estimate(config, calibration: Calibration | None = None, **settings) -> Plan:
    """Estimate peak GPU memory for fine-tuning the checkpoint described by ``config``.

    ``config`` is a config dict, a ``config.json`` path or a checkpoint folder; ``settings`` are
    the keyword fields of ``PlanSettings`` (method, batch_size, tiles, lean_logits, ...).
    ``calibration`` replaces the engine's entry of ``CALIBRATIONS`` (for refitting).
    """
    shape = read_model_shape(config)
    s = make_settings(shape, **settings)
    cal = calibration or CALIBRATIONS[s.engine]
    mem = _parameter_memory(shape, s)
    return Plan(
        weights=mem["weights"] / GIB,
        optimizer=mem["optimizer"] / GIB,
        activations=activation_bytes(shape, s) * cal.scale(s.gradient_checkpointing) / GIB,
        logits=logit_elements(shape, s) * cal.logit_bytes_per_element / GIB,
        gradients=mem["gradients"] / GIB,
        vision_forward=frozen_vision_forward_bytes(shape, s) / GIB,
        overhead=_overhead_bytes(shape, s, cal) / GIB,
        sequence_length=_sequence_length(shape, s),
        settings=s,
        shape=shape,
        trained_parameters=int(mem["trained_parameters"]),
        notes=_notes(shape, s),
    )


# =====================================================================================
# Calibration against measurements
# =====================================================================================


def fit_calibration(config, anchors=MEASURED_ANCHORS, settings=None, base=None) -> Calibration:
    """Fit the planner's constants to measured peaks.

    ``anchors`` holds either (batch_size, lean_logits, measured GiB) rows, planned with
    ``settings`` (default ``ANCHOR_SETTINGS``), or (engine, batch_size, lean_logits,
    gradient_checkpointing, measured GiB) rows like ``KIT_MEASUREMENTS`` (planned with
    ``KIT_SETTINGS`` unless ``settings`` is given). The measurements are taken to be PyTorch
    allocator peaks (``torch.cuda.max_memory_allocated``), which leave out the CUDA context, so
    the fit compares them with the plan minus ``cuda_context_gib``.

    Rows with gradient checkpointing fit ``activation_scale`` and ``logit_bytes_per_element``
    (least squares of the relative error; which moment is the peak - loss or end of backward -
    depends on the constants, so the fit repeats until that choice stops changing). Rows
    without it then fit ``no_checkpoint_scale`` with the logit cost held.
    """
    base = base or (CALIBRATION if anchors is MEASURED_ANCHORS else KIT_CALIBRATION)
    rows = [a if len(a) == 5 else ("transformers", a[0], a[1], True, a[2]) for a in anchors]
    if settings is None:
        settings = ANCHOR_SETTINGS if all(len(a) == 3 for a in anchors) else KIT_SETTINGS
    settings = {k: v for k, v in settings.items() if k not in ("engine", "gradient_checkpointing")}
    unit = replace(base, logit_bytes_per_element=1.0, activation_scale=1.0, no_checkpoint_scale=1.0)
    parts = {True: [], False: []}
    for engine, batch, lean, ckpt, measured in rows:
        p = estimate(config, calibration=unit, engine=engine, batch_size=batch, lean_logits=lean,
                     gradient_checkpointing=ckpt, **settings)
        static = p.weights + p.optimizer + p.overhead - unit.cuda_context_gib
        parts[ckpt].append((measured, static, p.activations, p.logits, p.gradients))

    a, b = base.activation_scale, base.logit_bytes_per_element
    for _ in range(10):
        # least squares of (target - a*act - b*logit) / measured, a 2x2 normal equation
        saa = sab = sbb = sa = sb = 0.0
        for measured, static, act, logit, grads in parts[True]:
            use_logits = b * logit >= grads
            target = measured - static - (0.0 if use_logits else grads)
            x, y, w = act, (logit if use_logits else 0.0), 1.0 / measured**2
            saa, sab, sbb = saa + w * x * x, sab + w * x * y, sbb + w * y * y
            sa, sb = sa + w * x * target, sb + w * y * target
        det = saa * sbb - sab * sab
        new_a, new_b = (sa * sbb - sb * sab) / det, (saa * sb - sab * sa) / det
        if abs(new_a - a) < 1e-9 and abs(new_b - b) < 1e-9:
            break
        a, b = new_a, new_b

    c = base.no_checkpoint_scale
    if parts[False]:
        sxx = sxt = 0.0
        for measured, static, act, logit, grads in parts[False]:
            target = measured - static - max(b * logit, grads)
            w = 1.0 / measured**2
            sxx, sxt = sxx + w * act * act, sxt + w * act * target
        c = sxt / sxx
    return replace(base, activation_scale=a, logit_bytes_per_element=b, no_checkpoint_scale=c)


# =====================================================================================
# Budgets: how much memory a card (or a slice of one) gives you
# =====================================================================================

#: Total memory each card reports (nvidia-smi, MiB / 1024, rounded), in GiB. Cards sold in
#: several sizes map size -> GiB; GPU makers' "80GB" means 80 GiB.
KNOWN_GPUS: dict[str, float | dict[int, float]] = {
    "H200": 140.0,
    "H100": {80: 79.6},
    "A100": {40: 40.0, 80: 80.0},
    "A800": {40: 40.0, 80: 80.0},
    "L40S": 45.0,
    "A6000": 48.0,
    "A10G": 22.5,
    "A10": 22.5,
    "L4": 22.5,
    "T4": 15.0,
    "V100": {16: 16.0, 32: 32.0},
    "RTX4090": 24.0,
    "RTX3090": 24.0,
}

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(GIB|GB|G|MIB|MB|M)(?![A-Z])", re.IGNORECASE)
_NOT_FINITE = re.compile(r"(?<![A-Z])(?:NAN|INFINITY|INF)(?=\s*(?:GIB|GB|G|MIB|MB|M|%)?(?:\s|$|[x×*]))",
                         re.IGNORECASE)
_NEGATIVE = re.compile(r"(?:^|[\sx×*(])-\s*\.?\d", re.IGNORECASE)  # not the hyphen of "A100-40GB"
_FRACTION = re.compile(r"(?:^|\s|(?<=[bB]))[x×*]\s*(\d+(?:\.\d+)?)\s*(%?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    """Usable memory of one GPU (or of the slice of it you were given)."""

    gib: float
    text: str

    def __str__(self) -> str:
        return f"{self.gib:.1f} GiB ({self.text})"


def _known_names() -> str:
    names = []
    for name, size in KNOWN_GPUS.items():
        names += [f"{name}-{gb}GB" for gb in size] if isinstance(size, dict) else [name]
    return ", ".join(names)


def parse_budget(budget) -> Budget:
    """Turn "A100 80GB x 30%", "24GB", "H200", "RTX 4090" or "A100-40GB" into GiB.

    A number is taken as GiB. ``x 30%`` (or ``x 0.3``) means you were given that share of
    the card, as on a sliced (vGPU / MIG) course machine.
    """
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        if not math.isfinite(budget) or budget <= 0:
            raise ValueError(f"budget must be a positive, finite number of GiB (e.g. 24), got {budget!r}.")
        return Budget(float(budget), f"{budget} GiB")
    if not isinstance(budget, str) or not budget.strip():
        raise ValueError(f"budget must be text such as '24GB' or 'A100 80GB x 30%', got {budget!r}.")
    text = budget.strip()
    if _NOT_FINITE.search(text):
        raise ValueError(f"budget {text!r} is not a finite size: write a positive memory size such as '24GB', "
                         "a card name, or a share such as 'A100 80GB x 30%'.")
    if _NEGATIVE.search(text):
        raise ValueError(f"budget {text!r} holds a negative number: memory sizes and shares are positive, "
                         "e.g. '24GB' or 'A100 80GB x 30%'.")
    rest, share = text, 1.0
    m = _FRACTION.search(rest)
    if m:
        value = float(m.group(1))
        share = value / 100 if m.group(2) else value
        if not 0 < share <= 1:
            raise ValueError(
                f"the share after 'x' in {text!r} must be a part of one card, in (0, 100] % (such as 30% or 0.3), "
                f"got {m.group(1)}{m.group(2)}. Give the number of GPUs as num_gpus instead."
            )
        rest = rest[: m.start()].strip()
    size = None
    m = _SIZE.search(rest)
    if m:
        size = float(m.group(1)) / (1024 if m.group(2).upper().startswith("M") else 1)
        rest = (rest[: m.start()] + rest[m.end():]).strip()
    name = re.sub(r"[^A-Z0-9]", "", rest.upper())
    name = name.removeprefix("NVIDIA").removeprefix("GEFORCE")
    name = {"RTXA6000": "A6000"}.get(name, name)
    if not name:
        if size is None:
            raise ValueError(f"no memory size in {text!r}: write e.g. '24GB' or a card name.")
        gib = size
    elif name not in KNOWN_GPUS:
        raise ValueError(
            f"unknown GPU {rest!r} in {text!r}. Known cards: {_known_names()}; "
            "or give the memory itself, e.g. '24GB'."
        )
    else:
        known = KNOWN_GPUS[name]
        if isinstance(known, dict):
            if size is None or int(size) not in known:
                sizes = " or ".join(f"'{name} {gb}GB'" for gb in known)
                raise ValueError(f"{name} comes in several sizes: write {sizes}.")
            gib = known[int(size)]
        else:
            gib = known if size is None else size
    if not math.isfinite(gib * share) or gib * share <= 0:
        raise ValueError(f"budget {text!r} comes to {gib * share:g} GiB; give a positive memory size such as "
                         "'24GB' or 'A100 80GB x 30%'.")
    return Budget(gib * share, text)


# =====================================================================================
# Verdicts and recommendations
# =====================================================================================


@dataclass(frozen=True)
class Verdict:
    """Whether a plan fits a budget after keeping ``margin`` of it free."""

    fits: bool
    need_gib: float
    budget: Budget
    margin: float

    @property
    def usable_gib(self) -> float:
        return self.budget.gib * (1 - self.margin)

    def __bool__(self) -> bool:
        return self.fits

    @property
    def detail(self) -> str:
        return (
            f"needs {self.need_gib:.1f} GiB of {self.usable_gib:.1f} GiB usable "
            f"({self.budget}, {self.margin:.0%} kept free)"
        )

    def __str__(self) -> str:
        return f"{'fits' if self.fits else 'does not fit'}: {self.detail}"


def fits(plan: Plan, budget, margin: float = SAFETY_MARGIN) -> Verdict:
    """Does ``plan`` fit ``budget`` (text, GiB or ``Budget``) with ``margin`` kept free?"""
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be between 0 and 1 (e.g. 0.1 for 10 %), got {margin!r}.")
    b = parse_budget(budget)
    return Verdict(plan.total <= b.gib * (1 - margin), plan.total, b, margin)


@dataclass(frozen=True)
class Recommendation:
    """The largest per-GPU batch that fits and the accumulation that keeps the effective batch."""

    fits: bool
    batch_size: int | None
    grad_accum: int | None
    num_gpus: int
    effective_batch: int
    plan: Plan  # at the recommended batch, or at batch 1 when nothing fits
    verdict: Verdict
    suggestions: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.fits:
            return (
                f"batch_size {self.batch_size} x grad_accum {self.grad_accum} x "
                f"{self.num_gpus} GPU(s) = effective batch {self.effective_batch}; {self.verdict}"
            )
        lines = [f"even batch 1 does not fit: {self.verdict.detail}", "try:"]
        return "\n".join(lines + [f"  - {s}" for s in self.suggestions])


def _suggestions(config, budget: Budget, margin: float, settings: dict) -> list[str]:
    """Changes that shrink a batch-1 plan, each with its predicted peak."""
    base = dict(settings, batch_size=1)
    tries = []
    if not base.get("lean_logits", False):
        tries.append(("lean_logits=True (logits only at answer tokens)", dict(lean_logits=True)))
    if not base.get("gradient_checkpointing", True):
        tries.append(("gradient_checkpointing=True", dict(gradient_checkpointing=True)))
    if base.get("method", "lora") != "qlora":
        tries.append(("method='qlora' (4-bit language model)", dict(method="qlora")))
    gpus = max(2, base.get("num_gpus", 1))
    tries.append((f"zero_stage=3 on {gpus} GPUs", dict(zero_stage=3, num_gpus=gpus)))
    tries.append(("all of the above", {k: v for _, kv in tries for k, v in kv.items()}))
    out = []
    for text, change in tries:
        v = fits(estimate(config, **{**base, **change}), budget, margin)
        out.append(f"{text}: {v.need_gib:.1f} GiB, {'fits' if v else 'still too big'}")
    shape = read_model_shape(config)
    current = base.get("tiles") or shape.max_tiles
    for tiles in range(current - 1, 0, -1):
        if shape.use_thumbnail and tiles == 2:
            continue  # with a thumbnail, an image is 1 tile or n >= 2 tiles + 1 thumbnail
        if fits(estimate(config, **{**base, "tiles": tiles}), budget, margin):
            patches = tiles - 1 if shape.use_thumbnail and tiles > 1 else tiles
            out.append(f"tiles={tiles} (max_dynamic_patch {patches}): fits")
            break
    else:
        out.append("fewer tiles alone does not make it fit")
    return out


def recommend(config, budget, effective_batch: int = 8, margin: float = SAFETY_MARGIN,
              **settings) -> Recommendation:
    """Pick the largest per-GPU batch that fits and the gradient accumulation for the rest.

    The effective batch is batch_size * grad_accum * num_gpus; the batch is chosen among the
    divisors of effective_batch / num_gpus so the product is exact. When even batch 1 does not
    fit, the answer lists changes that would make it fit.
    """
    if "batch_size" in settings:
        raise ValueError("recommend() chooses batch_size itself: leave it out.")
    _whole("effective_batch", effective_batch, 1)
    gpus = settings.get("num_gpus", 1)
    _whole("num_gpus", gpus, 1)
    if effective_batch % gpus:
        raise ValueError(
            f"effective_batch {effective_batch} cannot be split evenly over {gpus} GPUs: "
            "pick a multiple of num_gpus."
        )
    b = parse_budget(budget)
    per_gpu = effective_batch // gpus
    for batch in sorted((d for d in range(1, per_gpu + 1) if per_gpu % d == 0), reverse=True):
        p = estimate(config, batch_size=batch, **settings)
        v = fits(p, b, margin)
        if v:
            return Recommendation(True, batch, per_gpu // batch, gpus, effective_batch, p, v)
    return Recommendation(False, None, None, gpus, effective_batch, p, v,
                          tuple(_suggestions(config, b, margin, settings)))
