"""XTuner LoRA training of the full-size InternVL2-2B architecture on a GPU: speed and memory.

Builds InternVL2-2B's real architecture with random bf16 weights (labkit's official format),
renders food pictures shaped like phone photos (4:3, so 12 tiles + a thumbnail = 13 tiles,
3,328 image tokens per sample), and runs XTuner's own trainer through `labkit.train.finetune` with
the course's LoRA recipe (r 128 on every LLM Linear, frozen ViT and LLM, mlp1 trained, bf16 AMP,
gradient checkpointing) for a few iterations per batch size, in up to three modes:
    stock  XTuner's own InternVL_V1_5 model type, as the course ran it
    lean   labkit.train.lean.LeanInternVL: logits only at supervised positions, frozen weights in bf16
    fast   lean, without gradient checkpointing (more memory, no recompute)
Prints step time, tokens/s, XTuner's logged peak memory (max allocated), and the planner's
prediction for the same setting. `benchmarks/gpu_speed.py` breaks the step time down.

    python benchmarks/gpu_train.py --batches 1 2 4 8 --iters 6 --modes lean fast --out results.json
    python benchmarks/gpu_train.py --tiny --batches 2 --iters 3        # the same path on a CPU
"""
import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from labkit.data import paint as render  # noqa: E402
from labkit.train import finetune, plan  # noqa: E402
from labkit.checkpoints.folder import INTERNVL2_2B_CONFIG, build_model, load_config, write_checkpoint  # noqa: E402
from labkit.data.answers import answer_sentence  # noqa: E402
from labkit.data.build import make_record  # noqa: E402
from labkit.data.dishes import DISHES  # noqa: E402
from labkit.train.settings import course_gpu, tiny_lora_cpu  # noqa: E402

MODES = {"stock": dict(lean_logits=False), "lean": dict(lean_logits=True),
         "fast": dict(lean_logits=True, gradient_checkpointing=False)}
# Speed options of labkit.train.lean.LeanInternVL, each on top of `lean` (issue 12): passed to the model
# type through the rendered config (see `with_model_options`), one change per row.
OPTIONS = {"liger": dict(liger_kernels=True), "compile": dict(compile_layers=True),
           "plain2": dict(plain_layers=2), "plain3": dict(plain_layers=3),
           "liger+plain3": dict(liger_kernels=True, plain_layers=3),
           "compile+plain3": dict(compile_layers=True, plain_layers=3),
           "liger+compile": dict(liger_kernels=True, compile_layers=True)}
MODES.update({name: dict(lean_logits=True) for name in OPTIONS})
GRAD_NORM = re.compile(r"grad_norm:\s*([0-9.]+)")


def with_model_options(write_config, options):
    """finetune.write_config that also hands ``options`` to LeanInternVL in the config."""
    def write(settings, path, **kwargs):
        path = write_config(settings, path, **kwargs)
        text = Path(path).read_text(encoding="utf-8")
        extra = "".join(f"    {key}={value!r},\n" for key, value in options.items())
        marker = "    type=LeanInternVL,"
        assert marker in text, "the options need labkit.train.lean.LeanInternVL in the config"
        head, tail = text.split(marker, 1)
        line_end = tail.index("\n") + 1
        Path(path).write_text(head + marker + tail[:line_end] + extra + tail[line_end:], encoding="utf-8")
        return path
    return write
ITERATION = re.compile(r"Iter\(train\)\s*\[\s*(\d+)/")
TIME = re.compile(r"(?<![_\w])time:\s*([0-9.]+)")
MEMORY = re.compile(r"memory:\s*(\d+)")
SMOOTHING_WINDOW = 10  # mmengine's LogProcessor logs `time` as the mean of the last 10 iterations


def write_data(root, count, size):
    """``count`` pictures of ``size`` and their annotation file (one question each)."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        dish = DISHES[i % len(DISHES)]
        name = f"{dish.key}_{i:04d}.jpg"
        render.save_jpeg(render.render_dish(dish, seed=1000 + i, size=size), images / name)
        records.append(make_record(str(i), name, size, "图中的菜是什么？", answer_sentence(dish.name)))
    path = root / "train.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path, images


def figures_from_log(log_path, skip=2):
    """(median seconds per iteration after ``skip`` warm-up iterations, peak MiB allocated as GiB).

    mmengine logs the running mean of the iteration time; within its window the k-th iteration's
    own time is k * mean_k - (k - 1) * mean_(k-1), so runs of up to 10 iterations are exact.
    """
    means, memory = {}, []
    for line in Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines():
        iteration, time_ = ITERATION.search(line), TIME.search(line)
        if iteration and time_:
            means[int(iteration.group(1))] = float(time_.group(1))
            found = MEMORY.search(line)
            if found:
                memory.append(int(found.group(1)))
    own = [k * means[k] - (k - 1) * means[k - 1] for k in sorted(means)
           if k - 1 in means and skip < k <= SMOOTHING_WINDOW]
    return (statistics.median(own) if own else float("nan")), (max(memory) / 1024 if memory else None)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["stock", "lean", "fast"])
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (checks the path)")
    parser.add_argument("--size", type=int, nargs=2, default=[896, 672],
                        help="picture size; any 4:3 size gives the 4x3 grid + thumbnail")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    work = Path(tempfile.mkdtemp(prefix="gpu-train-"))
    device = "cpu" if args.tiny else "cuda"
    if args.tiny:
        model_dir = write_checkpoint(work / "model")
        base, size, tiles = tiny_lora_cpu(), (256, 192), 13
        # 4:3 at 64 px tiles and up to 12 tiles: the same 4x3 grid + thumbnail
        config = load_config(model_dir / "config.json")
        config["max_dynamic_patch"] = 12
        (model_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    else:
        config = load_config(INTERNVL2_2B_CONFIG)
        model_dir = write_checkpoint(work / "model", config=config, max_shard_size="5GB",
                                     model=build_model(config, dtype=torch.bfloat16, device="cuda"))
        torch.cuda.empty_cache()
        base, size, tiles = course_gpu().replace(amp="bfloat16"), tuple(args.size), 13
    data, images = write_data(work / "data", max(args.batches) * args.iters, size)
    rows = []
    for batch in args.batches:
        for mode in args.modes:
            knobs = MODES[mode]
            subset = work / f"data-b{batch}.json"
            records = json.loads(data.read_text(encoding="utf-8"))[: batch * args.iters]
            subset.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
            settings = base.replace(model_path=str(model_dir), data_paths=(str(subset),), image_folder=str(images),
                                    batch_size=batch, accumulative_counts=1, max_epochs=1, warmup_ratio=0.0,
                                    save_steps=10**6, log_interval=1, device=device, **knobs)
            started = time.perf_counter()
            original = finetune.write_config
            if mode in OPTIONS:
                finetune.write_config = with_model_options(original, OPTIONS[mode])
            try:
                result = finetune.train(settings, work / f"run-b{batch}-{mode}", progress=False)
            except finetune.TrainingError as err:
                rows.append({"batch": batch, "mode": mode, "error": str(err).splitlines()[0]})
                print(rows[-1], flush=True)
                continue
            finally:
                finetune.write_config = original
            step, peak = figures_from_log(result.log_path)
            norms = GRAD_NORM.findall(Path(result.log_path).read_text(encoding="utf-8", errors="replace"))
            text = plan.KIT_SETTINGS["text_tokens"]  # prompt + answer tokens of write_data's samples
            tokens = batch * (tiles * (16 if args.tiny else 256) + text)
            # the planner reads the same Settings; its XTuner model type picks the engine
            predicted = None if args.tiny else plan.estimate(
                INTERNVL2_2B_CONFIG, settings, tiles=tiles, text_tokens=text).total
            rows.append({"batch": batch, "mode": mode, "step_s": round(step, 3),
                         "tokens_per_s": round(tokens / step) if step == step else None,
                         "peak_allocated_gib": round(peak, 2) if peak else None,
                         "planned_gib": round(predicted, 2) if predicted else None,
                         "ratio_plan_over_measured": round(predicted / peak, 3) if predicted and peak else None,
                         "final_loss": result.losses[-1][1], "losses": [loss for _, loss in result.losses],
                         "grad_norms": [float(n) for n in norms], "options": OPTIONS.get(mode, {}),
                         "wall_s": round(time.perf_counter() - started, 1)})
            print(rows[-1], flush=True)
            if args.out:  # after every row: a run cut short still leaves its rows
                args.out.write_text(json.dumps({"rows": rows}, indent=2, ensure_ascii=False), encoding="utf-8")
    report = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__,
              "command": "python benchmarks/gpu_train.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "tiles_per_sample": tiles, "picture": list(size), "iters": args.iters, "rows": rows}
    print(json.dumps(report, indent=2, ensure_ascii=False))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
