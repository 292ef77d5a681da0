"""Chat speed of the full-size InternVL2-2B architecture on a GPU (random weights).

Builds InternVL2-2B's real architecture from labkit/assets/internvl2-2b/config.json with random bf16
weights, writes it as an official checkpoint, loads it back through transformers'
AutoModel(trust_remote_code=True), and measures time to first token for images of 1, 6 and 12
tiles (plus the thumbnail when there is more than one) and the decode speed at batch 1.
Random weights cost exactly the same time as real ones.

    python benchmarks/gpu_chat.py --out gpu_chat.json
"""
import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from labkit.checkpoints.folder import INTERNVL2_2B_CONFIG, build_model, load_checkpoint, load_config, write_checkpoint  # noqa: E402
from labkit.tiling import Tiling  # noqa: E402

# (label, image width, height, max tiles): grids 1x1, 3x2 and 4x3
CASES = [("1 tile", 448, 448, 1), ("6 tiles", 1344, 896, 6), ("12 tiles", 1792, 1344, 12)]


def timed(fn, repeat=3):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu_chat.json")
    parser.add_argument("--decode-tokens", type=int, default=256)
    args = parser.parse_args()
    import transformers

    report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "transformers": transformers.__version__, "python": platform.python_version()}
    start = time.perf_counter()
    model = build_model(load_config(INTERNVL2_2B_CONFIG), seed=0, dtype=torch.bfloat16, device="cuda")
    folder = Path(tempfile.mkdtemp()) / "internvl2-2b-random"
    write_checkpoint(folder, config=load_config(INTERNVL2_2B_CONFIG), model=model, max_shard_size="5GB")
    del model
    torch.cuda.empty_cache()
    report["build_and_write_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    model, tokenizer = load_checkpoint(folder, dtype=torch.bfloat16, device="cuda")
    report["load_s"] = round(time.perf_counter() - start, 1)
    report["weights_gb"] = round(sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9, 2)
    cases = []
    for label, width, height, max_tiles in CASES:
        tiling = Tiling(tile_size=448, min_num=1, max_num=max_tiles, use_thumbnail=True)
        from PIL import Image

        image = Image.new("RGB", (width, height), (200, 120, 60))
        pixels = tiling.load(image).to("cuda", torch.bfloat16)
        question = "图中的菜是什么？"

        def first_token():
            model.chat(tokenizer, pixels, question, dict(max_new_tokens=1, do_sample=False))

        def full():
            model.chat(tokenizer, pixels, question,
                       dict(max_new_tokens=args.decode_tokens, min_new_tokens=args.decode_tokens, do_sample=False))

        ttft = timed(first_token)
        total = timed(full, repeat=2)
        decode = (args.decode_tokens - 1) / (total - ttft)
        prompt_len = int(pixels.shape[0] * model.num_image_token)
        cases.append({"case": label, "tiles_with_thumbnail": int(pixels.shape[0]), "image_tokens": prompt_len,
                      "ttft_ms": round(ttft * 1000, 1), "decode_tok_s": round(decode, 1)})
        print(cases[-1], flush=True)
    report["cases"] = cases
    report["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
