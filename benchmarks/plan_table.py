"""Print the memory planner's predictions beside the measured anchors, and the course's verdicts.

    python benchmarks/plan_table.py                      # InternVL2-2B's configs/ file
    python benchmarks/plan_table.py --config MODEL_DIR   # any InternVL2 config.json or folder

Output is Markdown, ready to paste into docs/memory-plan.md.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labkit.train import plan  # noqa: E402

DEFAULT_CONFIG = REPO / "labkit" / "assets" / "internvl2-2b" / "config.json"
COURSE_BUDGET = "A100 80GB x 30%"


def anchor_rows(config) -> list[str]:
    rows = [
        "| batch | logits | measured GiB | predicted GiB | predicted / measured | peak at |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for batch, lean, measured in plan.MEASURED_ANCHORS:
        p = plan.estimate(config, batch_size=batch, lean_logits=lean, **plan.ANCHOR_SETTINGS)
        rows.append(
            f"| {batch} | {'lean' if lean else 'full vocabulary'} | {measured:.1f} | "
            f"{p.total:.1f} | {p.total / measured:.3f} | {p.peak_phase} |"
        )
    return rows


def kit_rows(config) -> list[str]:
    rows = [
        "| engine | batch | logits | checkpointing | measured GiB | predicted GiB | predicted / measured |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for engine, batch, lean, ckpt, measured in plan.KIT_MEASUREMENTS:
        p = plan.estimate(config, engine=engine, batch_size=batch, lean_logits=lean,
                          gradient_checkpointing=ckpt, **plan.KIT_SETTINGS)
        rows.append(
            f"| {engine} | {batch} | {'lean' if lean else 'full vocabulary'} | {'on' if ckpt else 'off'} | "
            f"{measured:.1f} | {p.total:.1f} | {p.total / measured:.3f} |"
        )
    return rows


def verdict_rows(config) -> list[str]:
    rows = ["| setting | verdict |", "|---|---|"]
    for batch in (4, 2):
        p = plan.estimate(config, batch_size=batch, **plan.ANCHOR_SETTINGS)
        rows.append(f"| batch {batch}, {COURSE_BUDGET} | {plan.fits(p, COURSE_BUDGET)} |")
    for lean in (False, True):
        settings = dict(plan.ANCHOR_SETTINGS, lean_logits=lean)
        rec = plan.recommend(config, COURSE_BUDGET, effective_batch=8, **settings)
        label = "lean logits" if lean else "full-vocabulary logits"
        rows.append(f"| recommend, effective batch 8, {label} | {rec} |")
    return rows


def other_methods(config) -> list[str]:
    rows = ["| method, batch 1, 13 tiles | predicted GiB | peak at |", "|---|---:|---|"]
    cases = [
        ("LoRA r128", dict(plan.ANCHOR_SETTINGS)),
        ("LoRA r128, no gradient checkpointing", dict(plan.ANCHOR_SETTINGS,
                                                      gradient_checkpointing=False)),
        ("QLoRA r128", dict(plan.ANCHOR_SETTINGS, method="qlora")),
        ("QLoRA r128, lean logits", dict(plan.ANCHOR_SETTINGS, method="qlora", lean_logits=True)),
        ("full fine-tune", dict(tiles=13, method="full")),
        ("full fine-tune, ZeRO-3 on 4 GPUs", dict(tiles=13, method="full", zero_stage=3,
                                                  gpus=4)),
    ]
    for label, settings in cases:
        p = plan.estimate(config, batch_size=1, **settings)
        rows.append(f"| {label} | {p.total:.1f} | {p.peak_phase} |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="an InternVL2 config.json or checkpoint folder")
    args = parser.parse_args(argv)
    cal = plan.CALIBRATION
    refit = plan.fit_calibration(args.config)
    print(f"Config: {args.config}")
    print(f"Calibration: {cal.logit_bytes_per_element} bytes per logit element, activation "
          f"scale {cal.activation_scale}, CUDA context {cal.cuda_context_gib} GiB "
          f"(a refit now gives {refit.logit_bytes_per_element:.2f} and "
          f"{refit.activation_scale:.3f})\n")
    print("Anchors (H200, LoRA r128 on every LLM Linear, bf16, gradient checkpointing, "
          "13 tiles = 3418 tokens):\n")
    print("\n".join(anchor_rows(args.config)))
    kit = plan.KIT_CALIBRATION
    kit_refit = plan.fit_calibration(args.config, plan.KIT_MEASUREMENTS)
    print(f"\nThe kit's own training path (XTuner's runner, bf16 AMP, 13 tiles = 3376 tokens; "
          f"XTuner's logged peaks from benchmarks/gpu_train.py on an H200). Calibration: "
          f"{kit.logit_bytes_per_element} bytes per logit element, activation scale "
          f"{kit.activation_scale} with and {kit.no_checkpoint_scale} without checkpointing "
          f"(a refit now gives {kit_refit.logit_bytes_per_element:.2f}, "
          f"{kit_refit.activation_scale:.3f} and {kit_refit.no_checkpoint_scale:.3f}):\n")
    print("\n".join(kit_rows(args.config)))
    print(f"\nThe course's case ({COURSE_BUDGET} = 24 GiB, {plan.SAFETY_MARGIN:.0%} kept free):\n")
    print("\n".join(verdict_rows(args.config)))
    print("\nOther methods (predictions only, not measured):\n")
    print("\n".join(other_methods(args.config)))
    print("\nBreakdown, batch 2 (the course's fix):\n")
    print("```")
    print(plan.estimate(args.config, batch_size=2, **plan.ANCHOR_SETTINGS))
    print("```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
