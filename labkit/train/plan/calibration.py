"""The planner's only fitted numbers, the measurements they were fitted to, and the fit.

Everything else in the planner is counted from first principles. Where the measurements come
from and how well the fit holds: ``docs/memory-plan.md`` ("Calibration"). Re-measure, edit
the tables below, and copy what ``fit_calibration`` returns into the constants.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """The free constants of the planner (docs/memory-plan.md, "Calibration")."""

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


#: transformers' InternVL + PEFT (the measured anchors below): pure bf16 weights, fp32 LoRA adapters.
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
#: The planner's settings of those measurements.
ANCHOR_SETTINGS = dict(
    engine="transformers",
    method="lora",
    lora_r=128,
    lora_target_modules=None,
    tiles=13,
    text_tokens=90,  # 13 * 256 image tokens + 90 text tokens = 3,418
    gradient_checkpointing=True,
    freeze_visual_encoder=True,
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
#: The planner's settings of those measurements (besides the columns above).
KIT_SETTINGS = dict(method="lora", lora_r=128, lora_target_modules=None, tiles=13, text_tokens=48,
                    freeze_visual_encoder=True)


def _weighted_lstsq(design: np.ndarray, target: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Least squares of the relative error: each row divided by its measured peak."""
    solution, *_ = np.linalg.lstsq(design / measured[:, None], target / measured, rcond=None)
    return solution


def fit_calibration(config, anchors=MEASURED_ANCHORS, knobs: dict | None = None,
                    base: Calibration | None = None) -> Calibration:
    """Fit the planner's constants to measured peaks.

    ``anchors`` holds either (batch_size, lean_logits, measured GiB) rows, planned with the
    planner keywords ``knobs`` (default ``ANCHOR_SETTINGS``), or (engine, batch_size,
    lean_logits, gradient_checkpointing, measured GiB) rows like ``KIT_MEASUREMENTS`` (planned
    with ``KIT_SETTINGS`` unless ``knobs`` is given). The measurements are taken to be PyTorch
    allocator peaks (``torch.cuda.max_memory_allocated``), which leave out the CUDA context, so
    the fit compares them with the plan minus ``cuda_context_gib``.

    Rows with gradient checkpointing fit ``activation_scale`` and ``logit_bytes_per_element``
    (which moment is the peak - loss or end of backward - depends on the constants, so the fit
    repeats until that choice stops changing). Rows without it then fit
    ``no_checkpoint_scale`` with the logit cost held.
    """
    from labkit.train.plan.estimate import estimate

    base = base or (CALIBRATION if anchors is MEASURED_ANCHORS else KIT_CALIBRATION)
    rows = [a if len(a) == 5 else ("transformers", a[0], a[1], True, a[2]) for a in anchors]
    if knobs is None:
        knobs = ANCHOR_SETTINGS if all(len(a) == 3 for a in anchors) else KIT_SETTINGS
    knobs = {k: v for k, v in knobs.items() if k not in ("engine", "gradient_checkpointing")}
    unit = replace(base, logit_bytes_per_element=1.0, activation_scale=1.0, no_checkpoint_scale=1.0)
    parts = {True: [], False: []}
    for engine, batch, lean, ckpt, measured in rows:
        p = estimate(config, calibration=unit, engine=engine, batch_size=batch, lean_logits=lean,
                     gradient_checkpointing=ckpt, **knobs)
        static = p.weights + p.optimizer + p.overhead - unit.cuda_context_gib
        parts[ckpt].append((measured, static, p.activations, p.logits, p.gradients))

    if len(parts[True]) < 2:
        raise ValueError("fit_calibration needs at least two measured rows with gradient checkpointing: "
                         f"got {len(parts[True])}.")
    measured, static, act, logit, grads = map(np.array, zip(*parts[True]))
    a, b = base.activation_scale, base.logit_bytes_per_element
    for _ in range(10):
        # a row's peak is at the loss (activations + logits) or at the end of backward
        # (activations + gradients), whichever the current constants make larger
        at_loss = b * logit >= grads
        design = np.column_stack([act, np.where(at_loss, logit, 0.0)])
        new_a, new_b = _weighted_lstsq(design, measured - static - np.where(at_loss, 0.0, grads), measured)
        if abs(new_a - a) < 1e-9 and abs(new_b - b) < 1e-9:
            break
        a, b = float(new_a), float(new_b)

    c = base.no_checkpoint_scale
    if parts[False]:
        measured, static, act, logit, grads = map(np.array, zip(*parts[False]))
        target = measured - static - np.maximum(b * logit, grads)
        c = float(_weighted_lstsq(act[:, None], target, measured)[0])
    return replace(base, activation_scale=a, logit_bytes_per_element=b, no_checkpoint_scale=c)
