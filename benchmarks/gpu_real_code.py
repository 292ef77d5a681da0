"""OpenGVLab-style remote code on a GPU: bf16 chat and the course's XTuner recipe, against labkit's code.

The real InternVL2-2B folder runs with OpenGVLab's own remote code (docs/real-model.md). No real
weights can be had here, so this uses the test stand-in for that folder (tests/opengvlab_like/: an
InternLM2 without GenerationMixin and with the legacy tuple cache, its own conversation module, a
sentencepiece tokenizer with its own tokenization module, an InternViT that imports timm) at
InternVL2-2B's architecture with random bf16 weights. The one size difference: the stand-in's
vocabulary (about 1,000 tokens instead of 92,553). A copy of the same folder runs labkit's own
remote code on the same weights and tokenizer. For each of the two:

  chat   labkit's loader (the compatibility layer for the stand-in), bf16 on CUDA, one 13-tile
         picture: time to first token, decode tokens/s over 64 forced tokens, the greedy answer;
  train  labkit.train.finetune with course_gpu() (LoRA r 128, labkit.train.lean, bf16 AMP) for --iters
         iterations on the same data and seed: XTuner's logged losses, tokens/s, peak memory.

It prints one JSON report: both rows and the largest relative difference between the two loss
curves (bf16 resolution is about 4e-3).

    python benchmarks/gpu_real_code.py --iters 6 --out results.json
    python benchmarks/gpu_real_code.py --tiny --iters 2     # the same path on a CPU
"""
import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_train import figures_from_log, write_data  # noqa: E402
from opengvlab_like_folder import build_opengvlab_like  # noqa: E402

from labkit.train import finetune  # noqa: E402
from labkit import model as model_code  # noqa: E402
from labkit.chat import Sampling, TransformersEngine  # noqa: E402
from labkit.checkpoints.folder import AUTO_MAP, INTERNVL2_2B_CONFIG, load_config  # noqa: E402
from labkit.train.settings import course_gpu, tiny_lora_cpu  # noqa: E402

TEMPLATE = "internlm2-chat"  # known to both code bases, so both prompts are the same
QUESTION = "图中的菜是什么？"


def _write_config(folder, config):
    (folder / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def stand_in(work, arch, device):
    """The OpenGVLab-like folder, named with a template both code bases know."""
    folder = build_opengvlab_like(work / "opengvlab-like", seed=0, arch=arch, device=device)
    config = load_config(folder / "config.json")
    config["template"] = TEMPLATE
    _write_config(folder, config)
    return folder


def with_labkit_code(folder, out):
    """The same weights and tokenizer, with labkit's remote code in place of the folder's model code."""
    shutil.copytree(folder, out)
    code_dir = Path(model_code.__file__).parent
    for name in model_code.REMOTE_CODE_FILES:
        shutil.copyfile(code_dir / name, out / name)
    config = load_config(out / "config.json")
    config["auto_map"] = dict(AUTO_MAP)
    config["llm_config"].pop("auto_map", None)
    _write_config(out, config)
    return out


def chat_figures(folder, picture, device, new_tokens=64):
    import torch

    engine = TransformersEngine(folder, device=device)
    answer = engine.ask(QUESTION, picture, settings=Sampling(max_new_tokens=24))
    kwargs = engine.generate_inputs(QUESTION, picture, settings=Sampling(max_new_tokens=1))

    def timed(tokens):
        run = dict(kwargs, max_new_tokens=tokens, min_new_tokens=tokens)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            engine.model.generate(**run)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed(4)  # warm-up
    first = min(timed(1) for _ in range(3))
    whole = min(timed(new_tokens + 1) for _ in range(2))
    figures = {"code": type(engine.model).__module__.split(".")[-1], "class": type(engine.model.language_model).__name__,
               "tiles": len(kwargs["pixel_values"]), "ttft_ms": round(1000 * first, 1),
               "decode_tok_s": round(new_tokens / (whole - first), 1), "answer": answer}
    del engine
    if device == "cuda":
        torch.cuda.empty_cache()
    return figures


def train_figures(folder, work, data, images, base, device, batch, iters):
    settings = base.replace(model_path=str(folder), data_paths=(str(data),), image_folder=str(images),
                            batch_size=batch, accumulative_counts=1, max_epochs=1, warmup_ratio=0.0,
                            save_steps=10**6, log_interval=1, device=device, seed=0)
    result = finetune.train(settings, work, progress=False)
    step, peak = figures_from_log(result.log_path)
    return {"batch": batch, "losses": [loss for _, loss in result.losses], "step_s": round(step, 3),
            "peak_allocated_gib": round(peak, 2) if peak else None,
            "system_prompt": settings.training_system_prompt()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tiny", action="store_true", help="the tiny architecture on the CPU (checks the path)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch
    import transformers

    work = Path(tempfile.mkdtemp(prefix="gpu-real-code-"))
    device = "cpu" if args.tiny else "cuda"
    arch = None if args.tiny else load_config(INTERNVL2_2B_CONFIG)
    base = tiny_lora_cpu() if args.tiny else course_gpu().replace(amp="bfloat16")
    size = (256, 192) if args.tiny else (896, 672)  # 4:3: a 4x3 grid + thumbnail = 13 tiles at full size
    theirs = stand_in(work, arch, device)
    ours = with_labkit_code(theirs, work / "labkit-code")
    data, images = write_data(work / "data", args.batch * args.iters, size)
    picture = next(images.iterdir())
    rows = []
    for name, folder in (("opengvlab-like", theirs), ("labkit-code", ours)):
        row = {"folder": name, "chat": chat_figures(folder, picture, device)}
        print(json.dumps(row, ensure_ascii=False), flush=True)
        try:
            row["train"] = train_figures(folder, work / f"run-{name}", data, images, base, device, args.batch,
                                         args.iters)
        except finetune.TrainingError as err:
            row["train"] = {"error": str(err).splitlines()[0], "losses": []}
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)
    a, b = rows[0]["train"]["losses"], rows[1]["train"]["losses"]
    report = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__,
              "transformers": transformers.__version__, "vocab": load_config(theirs / "config.json")["llm_config"]["vocab_size"],
              "iters": args.iters, "rows": rows,
              "max_relative_loss_diff": max(abs(x - y) / abs(y) for x, y in zip(a, b)) if a and len(a) == len(b) else None,
              "same_answer": rows[0]["chat"]["answer"] == rows[1]["chat"]["answer"]}
    print(json.dumps(report, indent=2, ensure_ascii=False))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
