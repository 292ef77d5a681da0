"""Chat speed of the tiny course model on this CPU: time to first token and decode tokens/s.

Runs through labkit's TransformersEngine, the path the notebooks use. Time to first token
(TTFT) is one ``ask`` with ``max_new_tokens=1``: reading and tiling the picture, tokenizing,
the vision tower, and the prefill of the whole prompt. Decode speed is measured on a forced
answer of ``--decode-tokens`` tokens (``min_new_tokens``), minus the TTFT.

    python benchmarks/ttft_cpu.py                   # builds the tiny model in a temp folder
    python benchmarks/ttft_cpu.py models/tiny --out ttft_cpu.json
    python benchmarks/ttft_cpu.py --threads 1      # compare: tiny ops gain nothing from a thread pool
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from labkit.chat import Sampling, TransformersEngine  # noqa: E402
from labkit.checkpoints.folder import write_checkpoint  # noqa: E402

QUESTION = "这是什么菜？"
# (label, picture size or None); tiny tiling: 64 px tiles, up to 6, plus a thumbnail past one
CASES = [("text only", None), ("1 tile", (64, 64)), ("3x1 + thumbnail", (192, 64)), ("3x2 + thumbnail", (192, 128))]


def median_seconds(fn, repeat):
    fn()  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(engine, size, decode_tokens, repeat):
    from PIL import Image

    image = Image.new("RGB", size, (200, 120, 60)) if size else None
    ttft = median_seconds(lambda: engine.ask(QUESTION, image, settings=Sampling(max_new_tokens=1)), repeat)
    inputs = engine.generate_inputs(QUESTION, image, settings=Sampling(max_new_tokens=decode_tokens))
    inputs["min_new_tokens"] = decode_tokens  # random weights may stop early; force the full length

    def full():
        with torch.inference_mode():
            engine.model.generate(**inputs)

    total = median_seconds(full, max(1, repeat // 2))
    tiles = 0 if image is None else engine.tiling.count_tiles(*size)
    return {
        "tiles": tiles,
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "ttft_ms": round(ttft * 1000, 1),
        "decode_tok_s": round((decode_tokens - 1) / max(total - ttft, 1e-9), 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", nargs="?", help="a checkpoint folder (default: build the tiny model)")
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    parser.add_argument("--out", help="also write the results as JSON here (must not exist)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out and Path(args.out).exists():
        parser.error(f"{args.out} already exists; choose another name")

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or write_checkpoint(Path(tmp) / "tiny")
        start = time.perf_counter()
        engine = TransformersEngine(model_dir)
        load_s = time.perf_counter() - start
        report = {
            "model": Path(model_dir).name if args.model_dir else "tiny (built fresh)",
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "load_s": round(load_s, 2),
            "decode_tokens": args.decode_tokens, "cases": [],
        }
        print(f"{'case':<18}{'tiles':>6}{'prompt':>8}{'TTFT ms':>10}{'decode tok/s':>14}")
        for label, size in CASES:
            row = {"case": label, **measure(engine, size, args.decode_tokens, args.repeat)}
            report["cases"].append(row)
            print(f"{label:<18}{row['tiles']:>6}{row['prompt_tokens']:>8}{row['ttft_ms']:>10}{row['decode_tok_s']:>14}",
                  flush=True)
    if args.out:
        tmp_out = Path(args.out).with_name(f".{Path(args.out).name}.tmp")
        tmp_out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp_out, args.out)
    return report


if __name__ == "__main__":
    main()
