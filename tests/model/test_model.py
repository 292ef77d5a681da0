"""labkit's InternVL2 implementation: loading, chat, KV cache, shapes and pixel shuffle.

Parity with transformers' own InternVL lives in test_parity.py; broken folders in
test_checkpoint.py.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import image_tiles, load_remote, noise_image, run_python

from labkit.checkpoints.folder import INTERNVL2_2B_CONFIG, build_model, load_config
from labkit.fileio import REPO_ROOT
from labkit.model import pixel_shuffle

# --- 1. a checkpoint stands on its own: fresh process, Auto classes, remote code ------------

FRESH_PROCESS_SCRIPT = r"""
import contextlib, io, json, sys
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

ckpt, tiles_file = sys.argv[1], sys.argv[2]
model = AutoModel.from_pretrained(ckpt, trust_remote_code=True, dtype=torch.float32).eval()
tokenizer = AutoTokenizer.from_pretrained(ckpt, trust_remote_code=True)
tiles = load_file(tiles_file)
gen = dict(max_new_tokens=8, do_sample=False)

def chat(*args, **kwargs):
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        result = model.chat(tokenizer, *args, verbose=True, **kwargs)
    return result, shown.getvalue()

(first, history), prompt1 = chat(tiles["wide"], "图中的菜是什么？", gen, return_history=True)
(second, history), prompt2 = chat(tiles["wide"], "这是哪一道菜？", gen, history=history, return_history=True)
asks = (("wide", "图中的菜是什么？"), ("mid", "这是哪一道菜？"))
batch = model.batch_chat(tokenizer, torch.cat([tiles[k] for k, _ in asks]), [q for _, q in asks], gen,
                         num_patches_list=[len(tiles[k]) for k, _ in asks])
singles = [model.chat(tokenizer, tiles[k], q, gen) for k, q in asks]
stored = load_file(f"{ckpt}/model.safetensors")
loaded = model.state_dict()
print(json.dumps({
    "module": type(model).__module__,
    "labkit_imported": any(name.split(".")[0] == "labkit" for name in sys.modules),
    "first": first, "second": second, "history": history, "prompt1": prompt1, "prompt2": prompt2,
    "batch": batch, "singles": singles,
    "same_names": sorted(stored) == sorted(loaded),
    "same_values": all(torch.equal(stored[k].float(), loaded[k].float()) for k in stored),
}, ensure_ascii=False))
"""


def test_checkpoint_chats_in_a_fresh_process(tiny_checkpoint, tmp_path):
    """AutoModel/AutoTokenizer load the CLI-written folder with nothing but its own files."""
    config = load_config(tiny_checkpoint / "config.json")
    tiles = {"wide": image_tiles(config, 192, 64, seed=1), "mid": image_tiles(config, 128, 64, seed=2)}
    assert tiles["wide"].shape == (4, 3, 64, 64) and tiles["mid"].shape == (3, 3, 64, 64)
    save_file(tiles, tmp_path / "tiles.safetensors")
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_PROCESS_SCRIPT, encoding="utf-8")
    # run from an empty folder with no PYTHONPATH: labkit itself cannot even be imported there
    done = run_python([script, tiny_checkpoint, tmp_path / "tiles.safetensors"], cwd=tmp_path, pythonpath=())
    out = json.loads(done.stdout.strip().splitlines()[-1])

    assert out["module"].startswith("transformers_modules.") and out["module"].endswith(".modeling_internvl_chat")
    assert out["labkit_imported"] is False
    assert out["same_names"] and out["same_values"], "the loaded weights differ from model.safetensors"
    assert isinstance(out["first"], str) and isinstance(out["second"], str)
    # turn 1 shows the 4 tiles (3 + thumbnail) as 4 runs of 16 <IMG_CONTEXT> tokens
    assert out["prompt1"].count("<IMG_CONTEXT x16>") == 4
    assert out["prompt1"].count("<img>") == 1 and "图中的菜是什么？" in out["prompt1"]
    # turn 2 repeats turn 1 (with its image) and its answer before the new question
    assert out["prompt2"].count("<IMG_CONTEXT x16>") == 4
    prompt2 = out["prompt2"]
    turn1 = prompt2.index("图中的菜是什么？")
    assert turn1 < prompt2.index(out["first"] + "<|im_end|>", turn1) < prompt2.index("这是哪一道菜？")
    assert [q for q, _ in out["history"]] == ["<image>\n图中的菜是什么？", "这是哪一道菜？"]
    assert [a for _, a in out["history"]] == [out["first"], out["second"]]
    # a left-padded batch answers as each question alone does
    assert out["batch"] == out["singles"]


# --- chat prompt = XTuner's training prompt ---------------------------------------------------

def test_chat_prompt_is_what_xtuner_trains_on(tiny_checkpoint, tiny_tokenizer, tmp_path):
    """chat()'s prompt, token for token, is the prefix XTuner's InternVL dataset trains on.

    A model answers best in the layout it was trained in: a stray newline after ``<|im_end|>``
    is a different token sequence and costs a tiny fine-tuned model its answer.
    """
    xtuner = pytest.importorskip("xtuner.dataset.internvl_dataset", reason="XTuner is the reference")
    from xtuner.utils import PROMPT_TEMPLATE

    (tmp_path / "img").mkdir()
    noise_image(150, 64).save(tmp_path / "img" / "dish.png")
    question, answer = "图中的菜是什么？", "图中的菜是肠粉。"
    sample = {"image": "dish.png", "conversations": [
        {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]}
    (tmp_path / "data.json").write_text(json.dumps([sample], ensure_ascii=False), encoding="utf-8")
    dataset = xtuner.InternVL_V1_5_Dataset(
        str(tiny_checkpoint), PROMPT_TEMPLATE.internlm2_chat, [str(tmp_path / "data.json")], [str(tmp_path / "img")]
    )
    item = dataset[0]
    tiles = item["pixel_values"].shape[0]
    trained = [int(t) for t in item["input_ids"]]

    model, tokenizer = load_remote(tiny_checkpoint)
    query, template = model.build_prompt(f"<image>\n{question}", None, [tiles])
    prompt = tokenizer(query)["input_ids"]
    completion = tokenizer(answer + template.sep, add_special_tokens=False)["input_ids"]
    assert prompt + completion == trained, (tokenizer.decode(prompt), tokenizer.decode(trained))
    # the tokenizer's own chat template (what LMDeploy uses) renders the same layout
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False)
    assert rendered == tokenizer.bos_token + model.build_prompt(question)[0]



@pytest.mark.parametrize("name", ["internlm2-chat-xtuner", "internlm2-chat"])
def test_the_tokenizers_chat_template_renders_the_models_own_prompt(tiny_checkpoint, name):
    """The Jinja template written from conversation.py renders what ``build_prompt`` renders.

    A question after two turns (the first showing the picture), with the template's own system
    prompt and with a ``system`` message in its place (quotes, a backslash and a newline included).
    """
    from labkit.checkpoints.tokenizer import jinja_chat_template
    from labkit.model.conversation import get_conv_template

    model, tokenizer = load_remote(tiny_checkpoint)
    tokenizer.chat_template = jinja_chat_template(name)
    model.template, model.system_message = name, get_conv_template(name).system_message
    history = [("<image>\n图中的菜是什么？", "图中的菜是肠粉。"), ("它是哪里的？", "广东。")]
    messages = [{"role": role, "content": text} for turn in history for role, text in zip(("user", "assistant"), turn)]
    messages.append({"role": "user", "content": "怎么做？"})
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == tokenizer.bos_token + model.build_prompt("怎么做？", history)[0]
    assert get_conv_template(name).system_message in rendered
    model.system_message = "你是'美食'专家 (\\n)。\n"
    system = [{"role": "system", "content": model.system_message}]
    rendered = tokenizer.apply_chat_template(system + messages, tokenize=False)
    assert rendered == tokenizer.bos_token + model.build_prompt("怎么做？", history)[0]


def test_checkpoints_carry_the_chat_template_written_from_conversation_py(tiny_checkpoint):
    """The CLI-written folder and the committed base model hold the generated template, no pasted copy."""
    from labkit.checkpoints.tokenizer import jinja_chat_template
    from labkit.course.base_model import ASSET_DIR

    for folder in (tiny_checkpoint, ASSET_DIR):
        assert (folder / "chat_template.jinja").read_text(encoding="utf-8") == jinja_chat_template(), folder


# --- KV cache, batching, training forward ----------------------------------------------------

@pytest.fixture(scope="module")
def parity_model(parity_checkpoint):
    return load_remote(parity_checkpoint)


def greedy_without_cache(model, tiles, input_ids, steps):
    """Greedy decoding the slow way: the whole sequence through forward() at every step.

    (``generate`` cannot do this: transformers always caches when it starts from embeddings,
    which InternVL's ``generate`` does, so ``generate(use_cache=False)`` still caches.)
    """
    ids, step_logits = input_ids, []
    for _ in range(steps):
        with torch.no_grad():
            out = model(pixel_values=tiles, input_ids=ids, use_cache=False)
        assert out.past_key_values is None
        step_logits.append(out.logits[:, -1])
        ids = torch.cat([ids, out.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[:, input_ids.shape[1]:], step_logits


def test_generation_with_and_without_kv_cache_is_identical(parity_model):
    model, tokenizer = parity_model
    tiles = image_tiles(model.config, 192, 64, seed=3)
    query, _ = model.build_prompt("<image>\n图中的菜是什么？", None, [len(tiles)])
    inputs = tokenizer(query, return_tensors="pt")
    cached = model.generate(
        pixel_values=tiles, **inputs, max_new_tokens=20, do_sample=False,
        eos_token_id=None, output_logits=True, return_dict_in_generate=True,
    )
    tokens, logits = greedy_without_cache(model, tiles, inputs["input_ids"], steps=20)
    assert cached.sequences.shape == (1, 20) and len(set(tokens[0].tolist())) > 3
    assert torch.equal(cached.sequences, tokens)
    diff = max((a - b).abs().max().item() for a, b in zip(cached.logits, logits))
    assert diff <= 1e-4, diff


def test_left_padded_batch_gives_the_logits_of_each_prompt_alone(parity_model):
    model, tokenizer = parity_model
    wide, small = image_tiles(model.config, 192, 64, seed=4), image_tiles(model.config, 64, 64, seed=5)
    queries = [model.build_prompt("<image>\n图中的菜是什么？", None, [len(t)])[0] for t in (wide, small)]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        batch = tokenizer(queries, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()  # the second row is padded
    position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        together = model(pixel_values=torch.cat([wide, small]), position_ids=position_ids, **batch).logits[:, -1]
        for row, (tiles, query) in enumerate(zip((wide, small), queries)):
            alone = model(pixel_values=tiles, **tokenizer(query, return_tensors="pt")).logits[0, -1]
            assert (together[row] - alone).abs().max() <= 1e-4


def test_right_padded_training_batch_skips_the_mask_with_the_same_logits(parity_model):
    """XTuner pads training batches on the right: plain causal attention (no explicit mask, so
    SDPA may use FlashAttention) must give every real token the logits the explicit mask gives."""
    import sys

    model, tokenizer = parity_model
    wide, small = image_tiles(model.config, 192, 64, seed=4), image_tiles(model.config, 64, 64, seed=5)
    queries = [model.build_prompt("<image>\n图中的菜是什么？", None, [len(t)])[0] + "图中的菜是肠粉。"
               for t in (wide, small)]
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        batch = tokenizer(queries, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    real = batch["attention_mask"].bool()
    assert not real.all()  # the second row is padded
    module = sys.modules[type(model.language_model).__module__]
    assert module.build_attention_mask(batch["attention_mask"], 2, real.shape[1], 0, "cpu") is None
    left = batch["attention_mask"].flip(-1)
    assert module.build_attention_mask(left, 2, real.shape[1], 0, "cpu") is not None  # left padding keeps it
    logits = []
    try:
        for shortcut in (True, False):
            module.CAUSAL_SHORTCUT = shortcut
            with torch.no_grad():
                logits.append(model(pixel_values=torch.cat([wide, small]), **batch).logits)
    finally:
        module.CAUSAL_SHORTCUT = True
    assert (logits[0][real] - logits[1][real]).abs().max() <= 1e-5


def test_training_forward_loss_and_gradient_checkpointing(parity_model):
    """Labels give the next-token loss; gradient checkpointing changes memory, not numbers."""
    model, tokenizer = parity_model
    tiles = image_tiles(model.config, 128, 64, seed=6)
    query, _ = model.build_prompt("<image>\n图中的菜是什么？", None, [len(tiles)])
    ids = tokenizer(query + "图中的菜是肠粉。<|im_end|>", return_tensors="pt")["input_ids"]
    labels = ids.clone()
    labels[:, : len(tokenizer(query)["input_ids"])] = -100  # learn the answer only
    results = []
    for checkpointing in (False, True):
        model.train()
        model.zero_grad()
        if checkpointing:
            model.gradient_checkpointing_enable()
        flags = torch.ones(len(tiles), dtype=torch.long)  # as XTuner passes them: every tile is real
        out = model(pixel_values=tiles, input_ids=ids, labels=labels, image_flags=flags)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        expected = torch.nn.functional.cross_entropy(out.logits[0, :-1].detach(), labels[0, 1:])
        assert torch.isfinite(out.loss) and torch.allclose(out.loss, expected, atol=1e-5)
        results.append((out.loss.detach(), grads))
        model.gradient_checkpointing_disable()
    model.eval()
    model.zero_grad()
    (loss, grads), (loss_gc, grads_gc) = results
    assert torch.allclose(loss, loss_gc, atol=1e-6)
    assert grads.keys() == grads_gc.keys() == {n for n, _ in model.named_parameters()}
    assert grads["vision_model.embeddings.patch_embedding.weight"].abs().sum() > 0  # the image is learned from
    assert all(torch.allclose(grads[n], grads_gc[n], atol=1e-5) for n in grads)


def test_bfloat16_forward_as_xtuner_loads_it(tiny_checkpoint):
    model, tokenizer = load_remote(tiny_checkpoint, dtype=torch.bfloat16)
    tiles = image_tiles(model.config, 128, 64).to(torch.bfloat16)
    query, _ = model.build_prompt("<image>\n图中的菜是什么？", None, [len(tiles)])
    ids = tokenizer(query, return_tensors="pt")["input_ids"]
    out = model(pixel_values=tiles, input_ids=ids, labels=ids)
    assert model.language_model.output.weight.dtype == torch.bfloat16
    assert torch.isfinite(out.loss) and out.logits.shape == (1, ids.shape[1], len(tokenizer))


def test_generate_takes_the_tokenizer_output_as_it_is(parity_model):
    """``model.generate(**tokenizer(prompt))``: the tokenizer gives only what the model reads."""
    model, tokenizer = parity_model
    tiles = image_tiles(model.config, 64, 64)
    query, _ = model.build_prompt("<image>\n图中的菜是什么？", None, [len(tiles)])
    inputs = tokenizer(query, return_tensors="pt")
    assert sorted(inputs) == ["attention_mask", "input_ids"]
    assert model.generate(pixel_values=tiles, **inputs, max_new_tokens=2, do_sample=False).shape[0] == 1


def test_image_token_count_mismatch_is_explained(parity_model):
    model, tokenizer = parity_model
    tiles = image_tiles(model.config, 192, 64)
    query, _ = model.build_prompt("<image>\n图中的菜是什么？", None, [len(tiles) - 1])  # one tile short
    with pytest.raises(ValueError, match=r"48 <IMG_CONTEXT> tokens but the images gave 64 \(16 per tile\)"):
        model(pixel_values=tiles, **tokenizer(query, return_tensors="pt"))


# --- 3. the full-size architecture: names, shapes, parameter count --------------------------

def expected_internvl2_2b_shapes():
    """Every parameter of InternVL2-2B with its shape, written out from the format description.

    Vision D=1024, I=4096, 24 layers, 448/14 = 32x32 patches; projector 4D=4096 -> H=2048;
    LLM H=2048, I=8192, 24 layers, V=92553, wqkv out = (16 + 2*8) * 128 = 4096.
    """
    D, I, H, FF, V = 1024, 4096, 2048, 8192, 92553
    shapes = {
        "vision_model.embeddings.class_embedding": (1, 1, D),
        "vision_model.embeddings.position_embedding": (1, 1 + 32 * 32, D),
        "vision_model.embeddings.patch_embedding.weight": (D, 3, 14, 14),
        "vision_model.embeddings.patch_embedding.bias": (D,),
        "mlp1.0.weight": (4 * D,), "mlp1.0.bias": (4 * D,),
        "mlp1.1.weight": (H, 4 * D), "mlp1.1.bias": (H,),
        "mlp1.3.weight": (H, H), "mlp1.3.bias": (H,),
        "language_model.model.tok_embeddings.weight": (V, H),
        "language_model.model.norm.weight": (H,),
        "language_model.output.weight": (V, H),
    }
    for n in range(24):
        vit = f"vision_model.encoder.layers.{n}."
        shapes.update({
            vit + "norm1.weight": (D,), vit + "norm1.bias": (D,),
            vit + "attn.qkv.weight": (3 * D, D), vit + "attn.qkv.bias": (3 * D,),
            vit + "attn.proj.weight": (D, D), vit + "attn.proj.bias": (D,),
            vit + "ls1": (D,),
            vit + "norm2.weight": (D,), vit + "norm2.bias": (D,),
            vit + "mlp.fc1.weight": (I, D), vit + "mlp.fc1.bias": (I,),
            vit + "mlp.fc2.weight": (D, I), vit + "mlp.fc2.bias": (D,),
            vit + "ls2": (D,),
        })
        llm = f"language_model.model.layers.{n}."
        shapes.update({
            llm + "attention_norm.weight": (H,),
            llm + "attention.wqkv.weight": ((16 + 2 * 8) * 128, H),
            llm + "attention.wo.weight": (H, H),
            llm + "ffn_norm.weight": (H,),
            llm + "feed_forward.w1.weight": (FF, H),
            llm + "feed_forward.w3.weight": (FF, H),
            llm + "feed_forward.w2.weight": (H, FF),
        })
    return shapes


@pytest.fixture(scope="module")
def full_size_meta_model():
    """InternVL2-2B's architecture from labkit/assets/internvl2-2b/config.json, on the meta device."""
    return build_model(load_config(INTERNVL2_2B_CONFIG), device="meta")


def test_full_size_names_and_shapes_match_the_official_checkpoint(full_size_meta_model):
    actual = {name: tuple(t.shape) for name, t in full_size_meta_model.state_dict().items()}
    expected = expected_internvl2_2b_shapes()
    assert sorted(set(expected) - set(actual)) == [], "parameters missing"
    assert sorted(set(actual) - set(expected)) == [], "parameters the official checkpoint does not have"
    assert {n: s for n, s in actual.items() if s != expected[n]} == {}
    assert full_size_meta_model.num_image_token == 256


def test_full_size_parameter_count_equals_transformers_internvl(full_size_meta_model):
    from transformers import InternVLForConditionalGeneration

    from labkit.checkpoints.reference import reference_config

    ours = sum(p.numel() for p in full_size_meta_model.parameters())
    with torch.device("meta"):
        theirs = InternVLForConditionalGeneration(reference_config(full_size_meta_model.config, image_token_id=92546))
    head, embed = theirs.lm_head.weight, theirs.get_input_embeddings().weight
    assert head is not embed  # untied, as InternVL2-2B
    assert ours == sum(p.numel() for p in theirs.parameters()) == 2_205_754_368
    assert ours == sum(torch.Size(s).numel() for s in expected_internvl2_2b_shapes().values())


# --- 4. pixel shuffle v2 ---------------------------------------------------------------------

def pixel_shuffle_by_loops(x):
    """The definition: output token (i, j) = the 2x2 block at rows 2i..2i+1, cols 2j..2j+1,
    its four channel vectors concatenated row by row: (2i,2j), (2i,2j+1), (2i+1,2j), (2i+1,2j+1)."""
    tiles, height, width, channels = x.shape
    out = torch.empty(tiles, height // 2, width // 2, 4 * channels)
    for t in range(tiles):
        for i in range(height // 2):
            for j in range(width // 2):
                block = [x[t, 2 * i + di, 2 * j + dj] for di in (0, 1) for dj in (0, 1)]
                out[t, i, j] = torch.cat(block)
    return out


@pytest.mark.parametrize("side", [4, 8])
def test_pixel_shuffle_v2_is_the_loop_definition(side):
    x = torch.randn(3, side, side, 5)
    assert torch.equal(pixel_shuffle(x, 0.5, "v2"), pixel_shuffle_by_loops(x))


def test_pixel_shuffle_v2_equals_transformers_internvl():
    from transformers.models.internvl.modeling_internvl import InternVLModel

    x = torch.randn(2, 8, 8, 6)
    assert torch.equal(pixel_shuffle(x, 0.5, "v2"), InternVLModel.pixel_shuffle(None, x, scale_factor=0.5))


def test_pixel_shuffle_v1_leaves_the_grid_transposed():
    x = torch.randn(1, 4, 4, 3)
    with pytest.warns(UserWarning, match="v1"):
        v1 = pixel_shuffle(x, 0.5, "v1")
    assert torch.equal(v1, pixel_shuffle_by_loops(x).transpose(1, 2))


def test_pixel_shuffle_rejects_an_odd_grid():
    with pytest.raises(ValueError, match="5x5"):
        pixel_shuffle(torch.randn(1, 5, 5, 3))


def test_extract_feature_shapes(parity_model):
    model, _ = parity_model
    with torch.no_grad():
        features = model.extract_feature(torch.randn(3, 3, 64, 64))
    assert features.shape == (3, 16, 128)  # 8x8 patches -> 4x4 tokens per tile, LLM hidden 128


# --- 6. transformers 5.x (the GPU machine's 5.17) ---------------------------------------------

def _load_script():
    import importlib.util

    path = REPO_ROOT / "benchmarks" / "transformers5_check.py"
    spec = importlib.util.spec_from_file_location("transformers5_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _complete(folder, pins):
    """Every pinned package of the overlay is installed in ``folder``."""
    for pin in pins:
        name, version = pin.split("==")
        if not (folder / f"{name.replace('-', '_')}-{version}.dist-info").is_dir():
            return False
    return True


def transformers5_overlay(script):
    """A folder holding transformers 5.17 to put first on PYTHONPATH; built once, then reused.

    Looks at $LABKIT_TF5_PATH, /tmp/tf5, then the user cache; builds the last one with pip
    (from the package index; no model or data download) and skips the test when pip cannot.
    """
    import os
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "labkit" / "transformers-5.17.0"
    candidates = [Path(p) for p in (os.environ.get("LABKIT_TF5_PATH"), "/tmp/tf5") if p] + [cache]
    for folder in candidates:
        if _complete(folder, script.TF5_OVERLAY):
            return folder
    cache.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".transformers5-", dir=cache.parent))
    try:
        script.make_overlay(building, timeout=100)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        shutil.rmtree(building, ignore_errors=True)
        pytest.skip(f"cannot pip-install transformers 5.17 here ({err}); set LABKIT_TF5_PATH to an overlay folder")
    os.replace(building, cache)
    return cache


@pytest.mark.slow
def test_checkpoint_works_under_transformers_5(tiny_checkpoint, tmp_path):
    """benchmarks/transformers5_check.py passes under 4.57 and 5.17, with the same logits."""
    script = _load_script()
    overlay = transformers5_overlay(script)
    runs = {}
    for name, path in (("4", ()), ("5", (overlay,))):
        done = run_python([REPO_ROOT / "benchmarks" / "transformers5_check.py", tiny_checkpoint,
                           "--save", tmp_path / f"v{name}.safetensors"], pythonpath=path, timeout=300)
        assert done.stdout.startswith(f"transformers {name}.") and done.stdout.rstrip().endswith("OK"), done.stdout
        runs[name] = load_file(tmp_path / f"v{name}.safetensors")
    assert (runs["4"]["logits"] - runs["5"]["logits"]).abs().max() <= 1e-5
