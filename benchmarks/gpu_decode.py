"""Decode speed of the transformers engine, eager against fast_decode (static cache + compile +
CUDA graph), on InternVL2-2B's architecture with random bf16 weights.

Batch 1 with pictures of 1, 7 and 13 tiles (with the thumbnail): time to first token and decode
tokens/s through labkit.chat.TransformersEngine, eager (transformers' generate) and
``fast_decode=True``; then batches of 8 and 32 one-tile questions of different lengths
(left-padded), aggregate decode tokens/s. Every fast row checks that its greedy tokens equal the
eager ones (``tokens_equal``). Random weights cost exactly the time real ones do.

    python benchmarks/gpu_decode.py --out gpu_decode.json
    python benchmarks/gpu_decode.py --tiny               # the same path on a CPU, a few tokens
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
from labkit.checkpoints.folder import INTERNVL2_2B_CONFIG, build_model, load_config, write_checkpoint  # noqa: E402
from labkit.chat.fast_decode import prompt_embeddings  # noqa: E402

GRIDS = [(1, 1), (3, 2), (4, 3)]  # 1 tile; 6 + thumbnail = 7; 12 + thumbnail = 13
QUESTION = "图中的菜是什么？"


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat):
    """(best seconds of ``repeat`` calls, the last result)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def picture(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def measure(name, run, new_tokens, device, repeat):
    """ttft (one new token) and decode tokens/s for ``run(max_new_tokens)`` -> (batch, n) ids."""
    run(1)  # warm-up
    ttft, _ = timed(lambda: run(1), device, repeat)
    if name.endswith("fast"):
        run(new_tokens)  # the first decode compiles the step and captures its CUDA graph
    total, tokens = timed(lambda: run(new_tokens), device, repeat)
    batch, made = tokens.shape
    return dict(engine=name, ttft_ms=round(ttft * 1000, 1), new_tokens=int(made),
                decode_tok_s=round(batch * (made - 1) / (total - ttft), 1), total_s=round(total, 3)), tokens


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (checks the path)")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens per batch-1 answer")
    parser.add_argument("--batch-tokens", type=int, default=128, help="tokens per answer in the batch rows")
    parser.add_argument("--batches", type=int, nargs="*", default=[8, 32])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--skip-eager-batch1", action="store_true")
    parser.add_argument("--skip-batch1", action="store_true", help="only the batch rows (and --graph-only)")
    parser.add_argument("--graph-only", action="store_true", help="also: CUDA graph without compile, 1 tile")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import transformers

    work = Path(tempfile.mkdtemp(prefix="gpu-decode-"))
    if args.tiny:
        device, folder = "cpu", write_checkpoint(work / "model")
        args.new_tokens, args.batch_tokens = min(args.new_tokens, 12), min(args.batch_tokens, 8)
        args.batches = sorted({min(b, 4) for b in args.batches})
    else:
        device, config = "cuda", load_config(INTERNVL2_2B_CONFIG)
        folder = write_checkpoint(work / "model", config=config, max_shard_size="5GB",
                                  model=build_model(config, seed=0, dtype=torch.bfloat16, device="cuda"))
        torch.cuda.empty_cache()
    report = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__,
              "transformers": transformers.__version__, "python": platform.python_version(),
              "command": "python benchmarks/gpu_decode.py" + (" --tiny" if args.tiny else ""), "rows": []}
    eager = TransformersEngine(folder, device=device)
    fast = TransformersEngine(folder, device=device, fast_decode=True)
    size = eager.tiling.tile_size
    rows = report["rows"]

    def emit(row):
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)
        if args.out:
            args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")

    # -- batch 1 through the engines ------------------------------------------------------
    for cols, rows_ in [] if args.skip_batch1 else GRIDS:
        image = picture(cols * size, rows_ * size)
        base = eager.generate_inputs(QUESTION, image, settings=Sampling(max_new_tokens=1))
        tiles, prompt = int(base["pixel_values"].shape[0]), int(base["input_ids"].shape[1])

        def kwargs(n):
            return {**base, "max_new_tokens": n}

        def run_eager(n):
            with torch.inference_mode():
                return eager.model.generate(**kwargs(n))

        def run_fast(n):
            with torch.inference_mode():
                return fast._fast_generate(kwargs(n))

        reference = None
        if not args.skip_eager_batch1:
            row, reference = measure("transformers-eager", run_eager, args.new_tokens, device, args.repeat)
            emit({"batch": 1, "tiles": tiles, "prompt_tokens": prompt, **row})
        started = time.perf_counter()
        row, tokens = measure("transformers-fast", run_fast, args.new_tokens, device, args.repeat)
        row["wall_with_compile_s"] = round(time.perf_counter() - started, 1)
        if reference is None:
            reference = run_eager(args.new_tokens)
        row["tokens_equal"] = reference.tolist() == tokens.tolist()
        if not row["tokens_equal"]:
            same = (reference[0, : tokens.shape[1]] == tokens[0, : reference.shape[1]]).long().cumprod(0).sum()
            row["first_difference_at"] = int(same)
        emit({"batch": 1, "tiles": tiles, "prompt_tokens": prompt, **row})

    # -- CUDA graph of the eager kernels, no compile (does fusion alone move the tokens?) -----
    if args.graph_only:
        from labkit.chat.fast_decode import StaticGreedyDecoder

        graph_only = StaticGreedyDecoder(fast.model.language_model, compile=False, graph=True)
        cols, rows_ = GRIDS[0]
        base = eager.generate_inputs(QUESTION, picture(cols * size, rows_ * size), settings=Sampling(max_new_tokens=1))

        def run_graph(n):
            with torch.inference_mode():
                embeds = prompt_embeddings(fast.model, base["input_ids"], base["pixel_values"])
                return graph_only.generate(embeds, base["attention_mask"], n, base["eos_token_id"], base["pad_token_id"])

        with torch.inference_mode():
            reference = eager.model.generate(**{**base, "max_new_tokens": args.new_tokens})
        row, tokens = measure("transformers-graph-fast", run_graph, args.new_tokens, device, args.repeat)
        row["tokens_equal"] = reference.tolist() == tokens.tolist()
        if not row["tokens_equal"]:
            row["first_difference_at"] = int((reference[0, : tokens.shape[1]] == tokens[0, : reference.shape[1]])
                                             .long().cumprod(0).sum())
        emit({"batch": 1, "tiles": int(base["pixel_values"].shape[0]), "prompt_tokens": int(base["input_ids"].shape[1]),
              "note": "CUDA graph of the eager kernels, not compiled", **row})

    # -- batches of one-tile questions of different lengths (left padding) --------------------
    model, tokenizer = eager.model, eager.tokenizer
    for batch in args.batches:
        questions = [QUESTION + "请详细说明。" * (i % 5) for i in range(batch)]
        prompts, pixels = [], []
        for i, question in enumerate(questions):
            inputs = eager.generate_inputs(question, picture(size, size, seed=i), settings=Sampling(max_new_tokens=1))
            pixels.append(inputs["pixel_values"])
            prompts.append(tokenizer.decode(inputs["input_ids"][0]))
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tokenizer.padding_side = side
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        pixel_values = torch.cat(pixels)
        eos, pad = eager.stop_token_id, tokenizer.pad_token_id or eager.stop_token_id

        def run_eager(n):
            with torch.inference_mode():
                return model.generate(pixel_values=pixel_values, input_ids=ids, attention_mask=mask,
                                      max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=pad)

        def run_fast(n):
            with torch.inference_mode():
                embeds = prompt_embeddings(fast.model, ids, pixel_values)
                return fast.fast_decode.generate(embeds, mask, n, eos, pad)

        row, reference = measure("transformers-eager", run_eager, args.batch_tokens, device, 1)
        emit({"batch": batch, "tiles": 1, "prompt_tokens": int(ids.shape[1]), **row})
        row, tokens = measure("transformers-fast", run_fast, args.batch_tokens, device, args.repeat)
        row["tokens_equal"] = reference.tolist() == tokens.tolist()
        if not row["tokens_equal"]:
            row["rows_equal"] = sum(a == b for a, b in zip(reference.tolist(), tokens.tolist()))
        emit({"batch": batch, "tiles": 1, "prompt_tokens": int(ids.shape[1]), **row})
    if device == "cuda":
        report["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    print("batch tiles engine               ttft_ms  decode_tok_s  equal")
    for r in rows:
        print(f"{r['batch']:5d} {r['tiles']:5d} {r['engine']:20s} {r['ttft_ms']:8.1f} {r['decode_tok_s']:12.1f}  "
              f"{r.get('tokens_equal', '')}")


if __name__ == "__main__":
    main()
