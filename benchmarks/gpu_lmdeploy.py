"""LMDeploy in the course on a GPU: `labkit deploy` end to end, and LMDeploy's decode speed.

1. ``serve``: ``labkit deploy BASE TUNED`` (through :func:`labkit.chat.deploy.deployed`, the
   command's own code) serves the tiny base model and a converted tuned model behind one
   address. Both answer the food test split through the OpenAI engine, as notebook 05 does with
   ``chat_server`` set, and each answer is compared with the transformers engine's greedy answer
   to the same question: the course's own path (float32 on the CPU) and bf16 on the GPU.
2. ``decode``: LMDeploy's PyTorch engine on InternVL2-2B's architecture (random bf16 weights), the
   rows of ``gpu_decode.py``: batch 1 with 1, 7 and 13 tiles (time to first token, decode
   tokens/s), then batches of 8 and 32 one-tile questions. It runs in LMDeploy's environment.

    python benchmarks/gpu_lmdeploy.py --env .venv-lmdeploy --tuned RUN/tuned-model --out gpu_lmdeploy.json
"""
import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GRIDS = [(1, 1), (3, 2), (4, 3)]  # 1 tile; 6 + thumbnail = 7; 12 + thumbnail = 13
QUESTION = "图中的菜是什么？"


def serve_rows(args, say):
    """Part 1, in the course environment."""
    from labkit.chat import Sampling, make_engine
    from labkit.chat.deploy import LMDeployEnv, deployed
    from labkit.course.workspace import Workspace
    from labkit.eval.evaluate import evaluate

    work = Path(tempfile.mkdtemp(prefix="gpu-lmdeploy-"))
    ws = Workspace(work / "run", work / "cache", work / "data")
    data = ws.data()
    test, images = data["food"]["test"], data["image_folder"]
    folders = {"base": Path(ws.base_model()), "tuned": Path(args.tuned)}
    rows = []
    started = time.monotonic()
    with deployed(list(folders.values()), env=LMDeployEnv(args.env), port=args.port, timeout=600, say=say) as running:
        ready_s = round(time.monotonic() - started, 1)
        for label, folder in folders.items():
            t0 = time.monotonic()
            served = evaluate(folder, test, images, max_new_tokens=16, server=running.url)
            served_s = time.monotonic() - t0
            course = evaluate(folder, test, images, max_new_tokens=16)  # transformers, float32, CPU
            gpu = make_engine(folder, backend="transformers", device="cuda")  # bf16
            greedy = Sampling(max_new_tokens=16)
            gpu_answers = [gpu.ask(a.question, image=Path(images) / a.image, settings=greedy) for a in course.answers]
            engine = make_engine(folder, server=running.url)
            first = course.answers[0]
            picture = Path(images) / first.image
            streamed = "".join(engine.stream(first.question, image=picture, settings=greedy))
            pairs = list(zip(served.answers, course.answers))
            row = {
                "model": label, "questions": len(pairs), "engine": "lmdeploy-pytorch via labkit deploy",
                "equal_to_transformers_cpu_fp32": sum(s.answer == c.answer for s, c in pairs),
                "equal_to_transformers_cuda_bf16": sum(s.answer == g for (s, _), g in zip(pairs, gpu_answers)),
                "accuracy_served": {k: served.accuracy(k) for k in ("held_back", "known")},
                "accuracy_transformers_cpu": {k: course.accuracy(k) for k in ("held_back", "known")},
                "stream_joined_equals_ask": streamed == engine.ask(first.question, image=picture, settings=greedy),
                "served_seconds": round(served_s, 1), "ready_s": ready_s,
                "differences": [{"image": s.image, "served": s.answer, "transformers_cpu": c.answer}
                                for s, c in pairs if s.answer != c.answer][:5],
            }
            rows.append(row)
            say(json.dumps(row, ensure_ascii=False))
    return rows


def picture(width, height, seed=0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def decode_rows(args):
    """Part 2, in LMDeploy's environment (this script run again there with ``--decode-only``)."""
    import lmdeploy
    import torch
    import transformers
    from lmdeploy import ChatTemplateConfig, GenerationConfig, PytorchEngineConfig

    from labkit.chat.prompt import lmdeploy_chat_template
    from labkit.checkpoints.remote_code import FolderTemplates
    from labkit.fileio import read_config

    folder = Path(args.decode_only)
    config = read_config(folder)
    size = config["force_image_size"]
    pipe = lmdeploy.pipeline(
        str(folder), backend_config=PytorchEngineConfig(session_len=8192, cache_max_entry_count=0.5),
        chat_template_config=ChatTemplateConfig(**lmdeploy_chat_template(config["template"], None, FolderTemplates(folder))),
        trust_remote_code=True)

    def run(prompts, n):
        gen = GenerationConfig(max_new_tokens=n, do_sample=False, top_k=1, ignore_eos=True)
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = pipe.infer(prompts, gen_config=gen)
        torch.cuda.synchronize()
        return time.perf_counter() - start, out

    def best(prompts, n, repeat=2):
        return min((run(prompts, n) for _ in range(repeat)), key=lambda r: r[0])

    rows = []
    run([(QUESTION, picture(size, size))], 8)  # warm-up
    for cols, rows_ in GRIDS:
        prompt = [(QUESTION, picture(cols * size, rows_ * size))]
        ttft, first = best(prompt, 1)
        total, out = best(prompt, args.new_tokens)
        made = out[0].generate_token_len
        rows.append({"batch": 1, "tiles": cols * rows_ + (1 if cols * rows_ > 1 else 0),
                     "prompt_tokens": first[0].input_token_len, "engine": "lmdeploy-pytorch",
                     "ttft_ms": round(ttft * 1000, 1), "new_tokens": made,
                     "decode_tok_s": round((made - 1) / (total - ttft), 1), "total_s": round(total, 3)})
        print(json.dumps(rows[-1]), flush=True)
    for batch in args.batches:
        prompts = [(QUESTION + "请详细说明。" * (i % 5), picture(size, size, seed=i)) for i in range(batch)]
        ttft, first = best(prompts, 1)
        total, out = best(prompts, args.batch_tokens)
        made = min(o.generate_token_len for o in out)
        rows.append({"batch": batch, "tiles": 1, "prompt_tokens": max(o.input_token_len for o in first),
                     "engine": "lmdeploy-pytorch", "ttft_ms": round(ttft * 1000, 1), "new_tokens": made,
                     "decode_tok_s": round(batch * (made - 1) / (total - ttft), 1), "total_s": round(total, 3)})
        print(json.dumps(rows[-1]), flush=True)
    pipe.close()
    return {"lmdeploy": lmdeploy.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "rows": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", type=Path, default=ROOT / ".venv-lmdeploy", help="LMDeploy's environment")
    parser.add_argument("--tuned", type=Path, help="a converted tuned folder (the main job's RUN/tuned-model)")
    parser.add_argument("--port", type=int, default=23333)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batch-tokens", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="*", default=[8, 32])
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--decode-only", metavar="FOLDER", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.decode_only:  # the child run inside LMDeploy's environment
        print("RESULT " + json.dumps(decode_rows(args)), flush=True)
        return
    import torch
    import transformers

    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "transformers": transformers.__version__, "python": platform.python_version(),
              "command": "python benchmarks/gpu_lmdeploy.py " + " ".join(argv or sys.argv[1:])}

    def save():
        if args.out:
            args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")

    from labkit.chat.deploy import LMDeployEnv

    report["lmdeploy_env"] = LMDeployEnv(args.env).versions()
    if not args.skip_serve:
        report["serve"] = serve_rows(args, lambda line: print(line, flush=True))
        save()
    if not args.skip_decode:
        from labkit.checkpoints.folder import INTERNVL2_2B_CONFIG, build_model, load_config, write_checkpoint

        config = load_config(INTERNVL2_2B_CONFIG)
        folder = write_checkpoint(Path(tempfile.mkdtemp(prefix="gpu-lmdeploy-2b-")) / "model", config=config,
                                  max_shard_size="5GB",
                                  model=build_model(config, seed=0, dtype=torch.bfloat16, device="cuda"))
        torch.cuda.empty_cache()
        from labkit.chat.deploy import child_environment

        child = subprocess.run([str(args.env / "bin" / "python"), __file__, "--decode-only", str(folder),
                                "--new-tokens", str(args.new_tokens), "--batch-tokens", str(args.batch_tokens),
                                "--batches", *map(str, args.batches)],
                               capture_output=True, text=True, env=child_environment())
        result = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if child.returncode != 0 or not result:
            print(child.stdout[-3000:], child.stderr[-6000:], sep="\n")
            report["decode_error"] = (child.stderr or child.stdout)[-2000:]
        else:
            report["decode"] = json.loads(result[0][len("RESULT "):])
            for row in report["decode"]["rows"]:
                print(json.dumps(row), flush=True)
        save()


if __name__ == "__main__":
    main()
