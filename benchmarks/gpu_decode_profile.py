"""Where the fast decode step's time goes (issue 12, part 1): one step of
``TransformersEngine(..., fast_decode=True)`` timed as it runs (the compiled step replayed as a CUDA
graph), set against the bytes it must read, and the kernels of the same compiled step listed by
GPU time.

For each prompt (1, 7 and 13 tiles of InternVL2-2B's architecture, random bf16 weights):

- ``step_ms``: one decode step, the mean of ``--steps`` graph replays between CUDA events;
- ``bytes_per_step``: the LLM's weights (without the input embedding table) plus the keys and values the step attends to, and
  ``read_tb_s`` = those bytes / ``step_ms``, against the H200's ~4.8 TB/s;
- ``kernel_ms``: the sum of the step's kernel times (torch.profiler, the compiled step without
  the graph), so ``step_ms - kernel_ms`` is time the GPU is idle between kernels;
- ``top_kernels``: the kernels with the most time per step, with their share.

    python benchmarks/gpu_decode_profile.py --out gpu_decode_profile.json
    python benchmarks/gpu_decode_profile.py --tiny     # the same path on a CPU (no graph, CPU ops)
"""
import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from labkit.chat import Sampling, TransformersEngine  # noqa: E402
from labkit.chat.fast_decode import prompt_embeddings  # noqa: E402
from labkit.checkpoints.folder import INTERNVL2_2B_CONFIG, build_model, load_config, write_checkpoint  # noqa: E402

GRIDS = [(1, 1), (3, 2), (4, 3)]  # 1 tile; 6 + thumbnail = 7; 12 + thumbnail = 13
QUESTION = "图中的菜是什么？"


def picture(width, height):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def loaded_step(engine, image, new_tokens):
    """The engine's decode step with a prompt's cache loaded, as ``generate`` leaves it."""
    from transformers import DynamicCache

    inputs = engine.generate_inputs(QUESTION, image, settings=Sampling(max_new_tokens=1))
    model, decoder = engine.model, engine.fast_decode
    lm, mask = model.language_model, inputs["attention_mask"]
    with torch.inference_mode():
        embeds = prompt_embeddings(model, inputs["input_ids"], inputs["pixel_values"])
        positions = mask.long().cumsum(-1) - 1
        prefill = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                     past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1, return_dict=True)
        first = prefill.logits[:, -1].float().argmax(-1)
        step = decoder._step_for(1, -(-(mask.shape[1] + new_tokens) // 64) * 64)
        step.load(prefill.past_key_values, mask, first)
    return step, int(inputs["pixel_values"].shape[0]), int(mask.shape[1])


def bytes_per_step(lm, kv_len):
    config = lm.config
    embedding = lm.get_input_embeddings().weight  # a step reads one row of it, not the table
    weights = sum(p.numel() * p.element_size() for p in lm.parameters()) - embedding.numel() * embedding.element_size()
    head_dim = config.hidden_size // config.num_attention_heads
    element = next(lm.parameters()).element_size()
    kv = 2 * config.num_hidden_layers * config.num_key_value_heads * kv_len * head_dim * element
    return weights + kv


def timed_steps(step, steps, device):
    with torch.inference_mode():
        for _ in range(3):
            step.step()  # the first call compiles and captures the graph
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                step.step()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / steps
        began = time.perf_counter()
        for _ in range(steps):
            step.step()
        return (time.perf_counter() - began) * 1000 / steps


def kernel_profile(step, steps, device, top):
    """(kernel ms per step, the top kernels) of the step's own kernels, run without the graph."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if device == "cuda" else [ProfilerActivity.CPU]
    with torch.inference_mode():
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step._run()
            if device == "cuda":
                torch.cuda.synchronize()
    per_kernel = {}
    for event in prof.events():
        if device == "cuda":
            if event.device_type.name != "CUDA":
                continue
            us = event.device_time
        else:
            if event.cpu_parent is not None:  # only the outermost CPU ops
                continue
            us = event.cpu_time
        per_kernel[event.name] = per_kernel.get(event.name, 0.0) + us
    total = sum(per_kernel.values())
    ranked = sorted(per_kernel.items(), key=lambda item: -item[1])[:top]
    rows = [{"kernel": name[:120], "ms_per_step": round(us / 1000 / steps, 4), "share": round(us / total, 3)}
            for name, us in ranked]
    return total / 1000 / steps, rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (checks the path)")
    parser.add_argument("--steps", type=int, default=64, help="decode steps timed and profiled per prompt")
    parser.add_argument("--top", type=int, default=12, help="kernels listed per prompt")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    import transformers

    work = Path(tempfile.mkdtemp(prefix="gpu-decode-profile-"))
    if args.tiny:
        device, folder, args.steps = "cpu", write_checkpoint(work / "model"), min(args.steps, 8)
    else:
        device, config = "cuda", load_config(INTERNVL2_2B_CONFIG)
        folder = write_checkpoint(work / "model", config=config, max_shard_size="5GB",
                                  model=build_model(config, seed=0, dtype=torch.bfloat16, device="cuda"))
        torch.cuda.empty_cache()
    engine = TransformersEngine(folder, device=device, fast_decode=True)
    report = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__,
              "transformers": transformers.__version__, "python": platform.python_version(),
              "command": "python benchmarks/gpu_decode_profile.py" + (" --tiny" if args.tiny else ""), "rows": []}
    size = engine.tiling.tile_size
    for cols, rows in GRIDS:
        step, tiles, prompt = loaded_step(engine, picture(cols * size, rows * size), 3 + 2 * args.steps + 8)
        step_ms = timed_steps(step, args.steps, device)
        moved = bytes_per_step(engine.model.language_model, prompt + args.steps)
        kernel_ms, top = kernel_profile(step, args.steps, device, args.top)
        row = {"batch": 1, "tiles": tiles, "prompt_tokens": prompt, "step_ms": round(step_ms, 4),
               "decode_tok_s": round(1000 / step_ms, 1), "bytes_per_step": moved,
               "read_tb_s": round(moved / step_ms / 1e9, 3), "kernel_ms": round(kernel_ms, 4),
               "idle_ms": round(step_ms - kernel_ms, 4), "top_kernels": top}
        report["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "top_kernels"}), flush=True)
        for kernel in top:
            print(f"    {kernel['ms_per_step']:8.4f} ms  {kernel['share']:6.1%}  {kernel['kernel']}")
        if args.out:
            args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
