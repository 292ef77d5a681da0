"""What grows with the batch: the tensors a forward pass saves for backward, and the logits.

The counts here are bytes before calibration; ``estimate`` multiplies them by the fitted
constants of ``calibration.py``. ``docs/memory-plan.md`` explains each term.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labkit.train.plan.shape import BF16, FP32, ModelShape

if TYPE_CHECKING:
    from labkit.train.plan.estimate import PlanSettings


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
        # (under autocast the fp32 normalised value is not kept: measured, tests/train/test_plan.py)
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
        # to fp32; labkit.train.lean skips that cast under autocast, so there the copy is bf16
        # (and autocast runs the rank-r product in bf16 too).
        per_input = (BF16 if autocast else FP32) + (1 if s.lora_dropout > 0 else 0)
        per_rank = BF16 if autocast else FP32
        saved["LoRA adapter inputs"] = sum(
            per_input * linears[t][0] + per_rank * s.lora_r for t in s.targets()
        )
    return saved


def vision_layer_saved_bytes(shape: ModelShape) -> float:
    """Bytes one vision layer saves per token when the tower is trained."""
    d, iv = shape.vision_hidden, shape.vision_intermediate
    # norm1 in/out, qkv out, attention out, proj in/out (ls1), norm2 in/out, fc1 out, gelu out,
    # fc2 out (ls2)
    return BF16 * (2 * d + 3 * d + d + 2 * d + 2 * d + d) + BF16 * 2 * iv


def sequence_length(shape: ModelShape, s: PlanSettings) -> int:
    """Tokens of one sample: the image tokens of its tiles and the text, cut at max_length."""
    return min(s.tiles * shape.num_image_token + s.text_tokens, s.max_length)


def activation_bytes(shape: ModelShape, s: PlanSettings) -> float:
    """Activations saved for backward on one GPU (before the calibration scale)."""
    h = shape.llm_hidden
    tokens = s.batch_size * sequence_length(shape, s)
    layer = sum(llm_layer_saved_bytes(shape, s).values())
    if s.gradient_checkpointing:
        llm = shape.llm_layers * BF16 * h + layer  # every layer's input + one layer re-run
    else:
        llm = shape.llm_layers * layer
    # input embeddings (+ the copy where image tokens are merged) and the final RMSNorm
    llm += 2 * BF16 * h + (FP32 + FP32 + BF16) * h
    total = tokens * llm

    image_tokens = s.batch_size * s.tiles * shape.num_image_token
    if s.train_projector or not s.freeze_visual_encoder:
        shuffled = shape.vision_hidden / shape.downsample_ratio**2
        total += image_tokens * BF16 * (2 * shuffled + 2 * h)  # LayerNorm in/out, GELU in/out

    if not s.freeze_visual_encoder:
        vtokens = s.batch_size * s.tiles * shape.vision_tokens_per_tile
        vlayer = vision_layer_saved_bytes(shape)
        if s.gradient_checkpointing:
            total += vtokens * (shape.vision_layers * BF16 * shape.vision_hidden + vlayer)
        else:
            total += vtokens * shape.vision_layers * vlayer
    return total


def frozen_vision_forward_bytes(shape: ModelShape, s: PlanSettings) -> float:
    """Working set of a frozen tower's no-grad forward: residual stream + the MLP's widest step."""
    if not s.freeze_visual_encoder:
        return 0.0
    vtokens = s.batch_size * s.tiles * shape.vision_tokens_per_tile
    d, iv = shape.vision_hidden, shape.vision_intermediate
    return vtokens * BF16 * (2 * d + 2 * iv)


def logit_elements(shape: ModelShape, s: PlanSettings) -> int:
    """Positions that get full-vocabulary logits, times the vocabulary size."""
    positions = s.supervised_tokens if s.lean_logits else sequence_length(shape, s)
    return s.batch_size * positions * shape.vocab_size
