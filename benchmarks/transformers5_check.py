"""Does a labkit checkpoint still work under transformers 5.x? (The GPU machine runs 5.17.)

The CPU course pins transformers 4.57 (XTuner 0.2.0 does not import under 5.x), but the same
checkpoint is also opened on a GPU machine with transformers 5.17. This script runs the
checkpoint through every public path there, on the CPU, in a few seconds::

    python benchmarks/transformers5_check.py --make-overlay /tmp/tf5      # once: transformers 5 beside 4.57
    labkit checkpoint --tiny /tmp/tiny
    PYTHONPATH=/tmp/tf5 python benchmarks/transformers5_check.py /tmp/tiny

The overlay is a folder of packages that shadows the virtualenv's own when it is first on
PYTHONPATH; the virtualenv itself is not touched. Without PYTHONPATH the same script checks
whatever transformers is installed (4.57 in the course venv). ``--save FILE`` writes the logits
of the test prompt, so two runs under two versions can be compared (tests/model/test_model.py does).

Checks: versions; AutoTokenizer/AutoModel with trust_remote_code; the loaded weights equal the
safetensors files; forward with labels (finite loss, gradients reach the vision tower, the
projector and the LLM; gradient checkpointing gives the same loss); generation with and without
the KV cache; chat(), multi-turn chat with history, batch_chat(); bfloat16 loading; and, when
labkit is importable, equal logits from transformers' own InternVL (labkit/checkpoints/reference.py).
Prints OK at the end, or FAILED and the reason (exit status 1).
"""
import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

# transformers 5.17 and the versions of its dependencies it needs, beside the course venv's
# torch, numpy, httpx, hf-xet... (installed with --no-deps into a separate folder)
TF5_OVERLAY = (
    "transformers==5.17.0",
    "huggingface-hub==1.33.0",
    "tokenizers==0.23.2",
    "safetensors==0.8.0",
    "typer==0.27.2",
    "shellingham==1.5.4",
    "annotated-doc==0.0.7",
)
REPO_ROOT = Path(__file__).resolve().parents[1]
QUESTION = "图中的菜是什么？"


def make_overlay(target, timeout=600):
    """pip-install TF5_OVERLAY into ``target`` (a folder to put first on PYTHONPATH)."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--no-deps", "--target", str(target), *TF5_OVERLAY]
    subprocess.run(command, check=True, timeout=timeout)
    print(f"transformers 5 overlay ready: PYTHONPATH={target}")


def step(name, started):
    print(f"  {name:<44} {time.perf_counter() - started:6.2f} s", flush=True)


def prompt(model, tiles, question=QUESTION):
    """The InternLM2 chat layout with one picture, built from public attributes only."""
    image = "<img>" + "<IMG_CONTEXT>" * (model.num_image_token * tiles) + "</img>"
    return f"<|im_start|>user\n{image}\n{question}<|im_end|><|im_start|>assistant\n"


def stored_weights(folder):
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    files = ["model.safetensors"]
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    weights = {}
    for name in files:
        weights.update(load_file(folder / name))
    return weights


def check(folder, save=None):
    import huggingface_hub
    import safetensors
    import tokenizers
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    folder = Path(folder)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, tokenizers {tokenizers.__version__}, "
          f"huggingface_hub {huggingface_hub.__version__}, safetensors {safetensors.__version__}")
    print(f"checkpoint {folder}")

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
    model = AutoModel.from_pretrained(str(folder), trust_remote_code=True, dtype=torch.float32).eval()
    model.img_context_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    step("load (AutoTokenizer + AutoModel, remote code)", started)

    started = time.perf_counter()
    stored, loaded = stored_weights(folder), model.state_dict()
    assert sorted(stored) == sorted(loaded), f"weight names differ: {sorted(set(stored) ^ set(loaded))[:5]}"
    changed = [k for k in stored if not torch.equal(stored[k].float(), loaded[k].float())]
    assert not changed, f"weights changed while loading: {changed[:5]}"
    step(f"{len(stored)} weights equal the safetensors file", started)

    started = time.perf_counter()
    size = model.config.force_image_size or model.config.vision_config.image_size
    tiles = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    text = prompt(model, len(tiles))
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    answer_ids = tokenizer("图中的菜是肠粉。<|im_end|>", add_special_tokens=False, return_tensors="pt").input_ids
    ids = torch.cat([ids, answer_ids], dim=1)
    labels = ids.clone()
    labels[:, : ids.shape[1] - answer_ids.shape[1]] = -100
    model.train()
    out = model(pixel_values=tiles, input_ids=ids, labels=labels, image_flags=torch.ones(len(tiles), dtype=torch.long))
    out.loss.backward()
    assert torch.isfinite(out.loss), f"loss is {out.loss}"
    for name in ("vision_model.embeddings.patch_embedding.weight", "mlp1.1.weight",
                 "language_model.model.layers.0.attention.wqkv.weight", "language_model.output.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, f"no gradient for {name}"
    model.zero_grad()
    model.gradient_checkpointing_enable()
    loss_gc = model(pixel_values=tiles, input_ids=ids, labels=labels).loss
    loss_gc.backward()
    model.gradient_checkpointing_disable()
    model.zero_grad()
    model.eval()
    assert torch.allclose(out.loss, loss_gc, atol=1e-5), f"gradient checkpointing changed the loss to {loss_gc}"
    step(f"forward + backward with labels, loss {out.loss.item():.4f}", started)

    started = time.perf_counter()
    with torch.no_grad():
        logits = model(pixel_values=tiles, input_ids=ids).logits
    inputs = tokenizer(text, return_tensors="pt")
    cached = model.generate(pixel_values=tiles, input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                            max_new_tokens=10, do_sample=False, eos_token_id=None)
    # without a cache: the whole sequence through forward() at every step (generate() always
    # caches when it starts from embeddings, so it cannot show this)
    recomputed = inputs["input_ids"]
    for _ in range(10):
        with torch.no_grad():
            last = model(pixel_values=tiles, input_ids=recomputed, use_cache=False).logits[:, -1]
        recomputed = torch.cat([recomputed, last.argmax(-1, keepdim=True)], dim=1)
    recomputed = recomputed[:, inputs["input_ids"].shape[1]:]
    assert cached.shape == (1, 10) and torch.equal(cached, recomputed), f"KV cache changes tokens: {cached} {recomputed}"
    step("10 greedy tokens with KV cache = recomputed", started)

    started = time.perf_counter()
    gen = dict(max_new_tokens=8, do_sample=False)
    answer, history = model.chat(tokenizer, tiles, QUESTION, gen, return_history=True)
    again, history = model.chat(tokenizer, tiles, "这是哪一道菜？", gen, history=history, return_history=True)
    batch = model.batch_chat(tokenizer, torch.cat([tiles, tiles[:2]]), [QUESTION, "这是哪一道菜？"], gen,
                             num_patches_list=[3, 2])
    alone = model.chat(tokenizer, tiles[:2], "这是哪一道菜？", gen)
    assert isinstance(answer, str) and isinstance(again, str) and len(history) == 2
    assert batch == [answer, alone], f"batch_chat {batch} differs from chat {[answer, alone]}"
    step("chat, multi-turn chat, batch_chat", started)

    started = time.perf_counter()
    half = AutoModel.from_pretrained(str(folder), trust_remote_code=True, dtype=torch.bfloat16).eval()
    half.img_context_token_id = model.img_context_token_id
    with torch.no_grad():
        loss = half(pixel_values=tiles.to(torch.bfloat16), input_ids=ids, labels=labels).loss
    assert half.language_model.output.weight.dtype == torch.bfloat16 and torch.isfinite(loss)
    step("bfloat16 load + forward (as XTuner loads it)", started)

    try:
        sys.path.insert(0, str(REPO_ROOT))
        from labkit.checkpoints.reference import build_reference_model
    except ImportError:
        print("  (labkit not importable: skipping the comparison with transformers' InternVL)")
    else:
        started = time.perf_counter()
        reference = build_reference_model(model, model.img_context_token_id)
        with torch.no_grad():
            theirs = reference(pixel_values=tiles, input_ids=ids).logits
        diff = (logits - theirs).abs().max().item()
        assert diff <= 1e-4, f"logits differ from transformers' InternVL by {diff}"
        step(f"transformers' InternVL: max |logit diff| {diff:.1e}", started)

    if save:
        from safetensors.torch import save_file

        save_file({"logits": logits.contiguous(), "loss": out.loss.detach().reshape(1)}, str(save))
        print(f"  logits saved to {save}")
    print("OK")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="a labkit checkpoint folder")
    parser.add_argument("--save", help="write the test prompt's logits to this .safetensors file")
    parser.add_argument("--make-overlay", metavar="DIR", help="install transformers 5.17 into DIR and stop")
    args = parser.parse_args(argv)
    if args.make_overlay:
        make_overlay(args.make_overlay)
        return 0
    if not args.checkpoint:
        parser.error("give a checkpoint folder (or --make-overlay DIR)")
    try:
        check(args.checkpoint, args.save)
    except Exception as err:  # report any breakage as a failed check, with its traceback
        traceback.print_exc()
        print(f"FAILED: {type(err).__name__}: {err}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
