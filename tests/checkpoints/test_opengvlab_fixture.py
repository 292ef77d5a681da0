"""The OpenGVLab-like folder (tests/opengvlab_like_folder.py) behaves as intended under transformers 4.57.

It must load like OpenGVLab's InternVL2-2B folder (its own remote code and slow sentencepiece
tokenizer, every weight key found), compute what labkit computes on the same weights, and fail
where the real folder fails: without timm it does not import, and ``chat()`` raises
``AttributeError: 'InternLM2ForCausalLM' object has no attribute 'generate'``. Its legacy tuple
cache must still work, so a tool can decode with it by hand.
"""
from __future__ import annotations

import copy
import importlib
import json
import re
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import image_tiles, randomize_, run_python
from labkit.checkpoints.folder import build_model, tiny_config, write_checkpoint
from opengvlab_like_folder import (
    ADDED_TOKENS, FIXTURE_SYSTEM_MESSAGE, REMOTE_CODE_FILES, SP_SPECIALS, TEMPLATE, build_opengvlab_like,
)

TOLERANCE = 1e-4  # float32 on both sides


def load_folder(path, dtype=torch.float32):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(path), trust_remote_code=True, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=True)
    model.img_context_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    return model, tokenizer


@pytest.fixture(scope="module")
def folder_config(opengvlab_like_checkpoint):
    return json.loads((opengvlab_like_checkpoint / "config.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def loaded(opengvlab_like_checkpoint):
    """(model, tokenizer) of the folder, float32, its own weights."""
    return load_folder(opengvlab_like_checkpoint)


@pytest.fixture(scope="module")
def random_pair(opengvlab_like_checkpoint, loaded):
    """(fixture model, labkit model, tokenizer) sharing one set of order-one random weights.

    The folder's own weights are default-initialised (biases 0, norms 1, tiny logits), which would
    hide a forgotten bias or norm; randomize_ makes every weight matter.
    """
    model, tokenizer = load_folder(opengvlab_like_checkpoint)
    randomize_(model, seed=1)
    labkit_model = build_model(tiny_config(len(tokenizer))).eval()  # labkit's code, labkit's template name
    labkit_model.load_state_dict(model.state_dict(), strict=True)
    labkit_model.img_context_token_id = model.img_context_token_id
    return model, labkit_model, tokenizer


def prompt(model, tokenizer, question, num_tiles=0):
    """The prompt as the folder's chat() builds it: its own conversation template."""
    conv = model.conv_template.copy()
    conv.system_message = model.system_message
    conv.append_message(conv.roles[0], ("<image>\n" if num_tiles else "") + question)
    conv.append_message(conv.roles[1], None)
    image = "<img>" + "<IMG_CONTEXT>" * (model.num_image_token * num_tiles) + "</img>"
    return conv.get_prompt().replace("<image>", image, 1)


def spliced_embeds(model, input_ids, pixel_values):
    embeds = model.language_model.get_input_embeddings()(input_ids)
    selected = input_ids == model.img_context_token_id
    embeds[selected] = model.extract_feature(pixel_values).reshape(-1, embeds.shape[-1])
    return embeds


# -- the folder and its tokenizer --------------------------------------------------------------
def test_folder_is_laid_out_like_opengvlabs(opengvlab_like_checkpoint, folder_config):
    from labkit.checkpoints.folder import check_model_folder

    names = {p.name for p in opengvlab_like_checkpoint.iterdir()}
    assert set(REMOTE_CODE_FILES) | {"config.json", "generation_config.json", "model.safetensors", "tokenizer.model",
                                     "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"} == names
    assert folder_config["template"] == TEMPLATE
    assert folder_config["auto_map"]["AutoModel"] == "modeling_internvl_chat.InternVLChatModel"
    assert folder_config["llm_config"]["auto_map"]["AutoModelForCausalLM"] == "modeling_internlm2.InternLM2ForCausalLM"
    code = "".join((opengvlab_like_checkpoint / n).read_text(encoding="utf-8") for n in REMOTE_CODE_FILES)
    assert not re.search(r"^\s*(from|import) labkit", code, re.MULTILINE)  # an independent implementation
    assert "def build_prompt" not in code and "def splice_image_tokens" not in code
    assert not re.search(r"^\s*(from|import) .*GenerationMixin", code, re.MULTILINE)
    vit = (opengvlab_like_checkpoint / "modeling_intern_vit.py").read_text(encoding="utf-8")
    assert "\nfrom timm.models.layers import DropPath\n" in vit  # top level, unguarded, like the real file
    check_model_folder(opengvlab_like_checkpoint)  # labkit's own pre-load check accepts it


def test_tokenizer_is_the_slow_sentencepiece_internlm2_tokenizer(loaded, folder_config, opengvlab_like_checkpoint):
    _, tokenizer = loaded
    assert type(tokenizer).__name__ == "InternLM2Tokenizer" and not tokenizer.is_fast
    assert type(tokenizer).__module__.startswith("transformers_modules.")  # the folder's code, not labkit's
    sp_size = tokenizer.sp_model.get_piece_size()
    assert tokenizer.vocab_size == sp_size and len(tokenizer) == sp_size + len(ADDED_TOKENS)
    assert folder_config["llm_config"]["vocab_size"] == len(tokenizer)
    for token in SP_SPECIALS:  # inside the sentencepiece range, as InternLM2's <|im_end|> 92542
        assert tokenizer.convert_tokens_to_ids(token) == tokenizer.sp_model.piece_to_id(token) < sp_size
    ids = tokenizer.convert_tokens_to_ids(list(ADDED_TOKENS))  # above it, as <IMG_CONTEXT> 92546
    assert ids == list(range(sp_size, sp_size + len(ADDED_TOKENS)))
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2, 2)
    generation = json.loads((opengvlab_like_checkpoint / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"])


@pytest.mark.parametrize("text", ["图中的菜是肠粉。", "Hello!  What dish is this?\n\n看图回答。", "龘 (not in the corpus)"])
def test_tokenizer_round_trips_text(loaded, text):
    _, tokenizer = loaded
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids  # byte fallback: no <unk>
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.decode(ids) == "<s>" + text


def test_tokenizer_keeps_special_tokens_whole(loaded):
    model, tokenizer = loaded
    text = prompt(model, tokenizer, "图中的菜是什么？", num_tiles=1)
    ids = tokenizer(text)["input_ids"][1:]
    context = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert ids.count(context) == model.num_image_token
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_end|>")) == 2
    # transformers' slow decode puts spaces around added tokens above the sentencepiece range unless asked not to
    assert tokenizer.decode(ids, spaces_between_special_tokens=False) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == f"system\n{FIXTURE_SYSTEM_MESSAGE}user\n\n图中的菜是什么？assistant\n"


def test_prompt_uses_the_folders_own_template(loaded):
    from labkit.model.conversation import INTERNVL_SYSTEM, TEMPLATES

    model, tokenizer = loaded
    assert (model.template, model.conv_template.name, model.system_message) == (TEMPLATE, TEMPLATE, FIXTURE_SYSTEM_MESSAGE)
    assert TEMPLATE not in TEMPLATES  # labkit's template module does not know the name
    assert prompt(model, tokenizer, "图中的菜是什么？") == (
        f"<|im_start|>system\n{FIXTURE_SYSTEM_MESSAGE}<|im_end|><|im_start|>user\n图中的菜是什么？<|im_end|>"
        "<|im_start|>assistant\n")
    conversation = importlib.import_module(type(model).__module__.rsplit(".", 1)[0] + ".conversation")
    assert conversation.get_conv_template("internlm2-chat").system_message == INTERNVL_SYSTEM
    with pytest.raises(KeyError):
        conversation.get_conv_template("internlm2-chat-xtuner")


# -- loading the model ----------------------------------------------------------------------------
def test_model_loads_every_key_of_labkits_weights(opengvlab_like_checkpoint, loaded):
    from transformers import AutoModel

    _, info = AutoModel.from_pretrained(str(opengvlab_like_checkpoint), trust_remote_code=True,
                                        output_loading_info=True)
    assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    model, tokenizer = loaded
    assert type(model).__name__ == "InternVLChatModel" and type(model).__module__.startswith("transformers_modules.")
    assert model.num_image_token == 16 and model.ps_version == "v2" and model.select_layer == -1
    assert not hasattr(model, "build_prompt") and not hasattr(model, "splice_image_tokens")
    labkit_weights = build_model(tiny_config(len(tokenizer)), seed=0).to(torch.bfloat16).float().state_dict()
    ours = model.state_dict()
    assert ours.keys() == labkit_weights.keys()
    assert all(torch.equal(ours[k], labkit_weights[k]) for k in ours)  # labkit's seed-0 weights, bf16
    assert type(model.vision_model.encoder.layers[0].drop_path1).__name__ == "Identity"  # drop_path_rate 0


def test_unknown_template_fails_when_the_model_is_built(loaded):
    model, _ = loaded
    config = type(model.config).from_dict({**model.config.to_dict(), "template": "no-such-template"})
    with pytest.raises(KeyError, match="no-such-template"):
        type(model)(config)


def test_without_timm_the_model_does_not_import(opengvlab_like_checkpoint):
    """timm hidden as if not installed: config and tokenizer load, the model does not.

    transformers' check_imports() only scans the entry file (modeling_internvl_chat.py), so the error
    is Python's own ModuleNotFoundError from modeling_intern_vit.py, not transformers' "pip install" hint.
    """
    script = textwrap.dedent(f"""
        import sys, traceback
        from importlib.machinery import PathFinder

        class HideTimm(PathFinder):
            @classmethod
            def find_spec(cls, name, path=None, target=None):
                return None if name.split(".")[0] == "timm" else PathFinder.find_spec(name, path, target)

        sys.meta_path[:] = [HideTimm if f is PathFinder else f for f in sys.meta_path]
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        path = {str(opengvlab_like_checkpoint)!r}
        AutoConfig.from_pretrained(path, trust_remote_code=True)
        AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        try:
            AutoModel.from_pretrained(path, trust_remote_code=True)
        except Exception as err:
            where = traceback.extract_tb(err.__traceback__)[-1]
            print("RAISED", type(err).__name__, getattr(err, "name", None), where.filename.rsplit("/", 1)[-1], err)
        else:
            print("LOADED")
    """)
    done = run_python(["-c", script])
    assert "RAISED ModuleNotFoundError timm modeling_intern_vit.py No module named 'timm'" in done.stdout


def test_language_model_has_no_generate_so_chat_fails(folder_config, loaded):
    from transformers import GenerationMixin

    model, tokenizer = loaded
    assert GenerationMixin not in type(model.language_model).__mro__
    assert not hasattr(model.language_model, "generate") and not model.language_model.can_generate()
    # AutoModel mixes GenerationMixin into the top class (it defines generate), never into the inner LLM
    assert GenerationMixin in type(model).__bases__
    pixel_values = image_tiles(folder_config, 128, 64)
    message = "'InternLM2ForCausalLM' object has no attribute 'generate'"
    with pytest.raises(AttributeError, match=message) as failure:
        model.chat(tokenizer, pixel_values, "图中的菜是什么？", dict(max_new_tokens=3, do_sample=False))
    frames = [(Path(str(entry.path)).name, entry.name) for entry in failure.traceback]
    assert ("modeling_internvl_chat.py", "generate") in frames  # the last line of the folder's generate()
    with pytest.raises(AttributeError, match=message):
        model.batch_chat(tokenizer, pixel_values, ["这是哪一道菜？"], dict(max_new_tokens=3),
                         num_patches_list=[len(pixel_values)])


# -- numbers: the same as labkit's, and a working cache -------------------------------------------
@torch.no_grad()
def test_logits_and_loss_equal_labkits(random_pair, loaded, folder_config):
    model, labkit_model, tokenizer = random_pair
    pixel_values = image_tiles(folder_config, 192, 64)  # 3 tiles + thumbnail
    encoded = tokenizer(prompt(model, tokenizer, "图中的菜是什么？", len(pixel_values)) + "肠粉", return_tensors="pt")
    inputs = dict(pixel_values=pixel_values, **encoded, image_flags=torch.ones(len(pixel_values), 1, dtype=torch.long))
    labels = encoded["input_ids"].clone()
    ours, theirs = model(**inputs, labels=labels), labkit_model(**inputs, labels=labels)
    assert ours.logits.abs().max() > 1.0  # order-one logits: a difference would show
    assert (ours.logits - theirs.logits).abs().max() < TOLERANCE
    assert abs(ours.loss - theirs.loss) < TOLERANCE

    folder_model, _ = loaded  # and on the folder's own (default-initialised) weights
    labkit_model.load_state_dict(folder_model.state_dict())
    assert (folder_model(**inputs).logits - labkit_model(**inputs).logits).abs().max() < TOLERANCE

    # a left-padded text batch: equal wherever attention_mask is 1
    labkit_model.load_state_dict(model.state_dict())
    tokenizer.padding_side = "left"
    batch = tokenizer([prompt(model, tokenizer, "这是哪一道菜？"), "图中的菜是什么？"], return_tensors="pt", padding=True)
    ours, theirs = model.language_model(**batch).logits, labkit_model.language_model(**batch).logits
    keep = batch["attention_mask"].bool()
    assert (~keep).any() and (ours[keep] - theirs[keep]).abs().max() < TOLERANCE


def greedy(language_model, steps, input_ids, attention_mask=None, inputs_embeds=None, cache=True):
    """Greedy decoding by hand, the way generate() would drive the folder's model."""
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    past, sequence, new = None, input_ids, []
    for _ in range(steps):
        if cache:
            step = language_model.prepare_inputs_for_generation(
                sequence, past_key_values=past, attention_mask=attention_mask, inputs_embeds=inputs_embeds, use_cache=True)
            assert ("inputs_embeds" in step) == (past is None and inputs_embeds is not None)
            out = language_model(**step)
            past = out.past_key_values
            assert isinstance(past, tuple) and all(isinstance(layer, tuple) and len(layer) == 2 for layer in past)
            assert past[0][0].shape[2] == sequence.shape[1]
        else:
            embeds = language_model.get_input_embeddings()(sequence)
            if inputs_embeds is not None:
                embeds[:, : inputs_embeds.shape[1]] = inputs_embeds
            out = language_model(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
            assert out.past_key_values is None
        new.append(out.logits[:, -1])
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        sequence = torch.cat([sequence, token], dim=1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(token)], dim=1)
    return sequence[:, input_ids.shape[1]:], torch.stack(new, 1)


@torch.no_grad()
def test_tuple_cache_greedy_decode_equals_uncached(random_pair, folder_config):
    model, _, tokenizer = random_pair
    pixel_values = image_tiles(folder_config, 128, 64)
    input_ids = tokenizer(prompt(model, tokenizer, "图中的菜是什么？", len(pixel_values)), return_tensors="pt")["input_ids"]
    embeds = spliced_embeds(model, input_ids, pixel_values)
    cached, cached_logits = greedy(model.language_model, 6, input_ids, inputs_embeds=embeds)
    plain, plain_logits = greedy(model.language_model, 6, input_ids, inputs_embeds=embeds, cache=False)
    assert torch.equal(cached, plain)
    assert (cached_logits - plain_logits).abs().max() < TOLERANCE

    # left padding: positions come from the attention mask, so each row decodes as it would alone
    tokenizer.padding_side = "left"
    texts = [prompt(model, tokenizer, "这是哪一道菜？"), "图中的菜是什么？"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    first = model.language_model.prepare_inputs_for_generation(batch["input_ids"], attention_mask=batch["attention_mask"])
    real = batch["attention_mask"][1].bool()
    assert not real[0] and first["position_ids"][1][real].tolist() == list(range(int(real.sum())))
    together, _ = greedy(model.language_model, 4, batch["input_ids"], batch["attention_mask"])
    for row, text in enumerate(texts):
        alone, _ = greedy(model.language_model, 4, tokenizer(text, return_tensors="pt")["input_ids"])
        assert torch.equal(together[row], alone[0])

    past = model.language_model(input_ids=batch["input_ids"], use_cache=True).past_key_values
    swapped = model.language_model._reorder_cache(past, torch.tensor([1, 0]))
    assert torch.equal(swapped[0][0][0], past[0][0][1]) and torch.equal(swapped[-1][1][1], past[-1][1][0])


# -- the builder --------------------------------------------------------------------------------
def test_builder_takes_weights_only_from_a_source_with_the_same_vocabulary(opengvlab_like_checkpoint, random_pair,
                                                                           tmp_path):
    from safetensors.torch import load_file

    model, labkit_model, tokenizer = random_pair
    source = write_checkpoint(tmp_path / "labkit_trained", tokenizer=tokenizer, model=copy.deepcopy(labkit_model))
    out = build_opengvlab_like(tmp_path / "from_source", seed=7, source=source)
    built, theirs = load_file(str(out / "model.safetensors")), load_file(str(source / "model.safetensors"))
    assert built.keys() == theirs.keys() and all(torch.equal(built[k], theirs[k]) for k in built)
    assert json.loads((out / "config.json").read_text())["template"] == TEMPLATE

    build_opengvlab_like(out, seed=7)  # rebuilding in place replaces the folder, leaving nothing beside it
    assert not torch.equal(load_file(str(out / "model.safetensors"))["mlp1.1.weight"], built["mlp1.1.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["from_source", "labkit_trained"]

    labkit_own = write_checkpoint(tmp_path / "labkit_bpe")  # labkit's byte-level BPE tokenizer: other tokens
    with pytest.raises(ValueError, match="vocabulary"):
        build_opengvlab_like(tmp_path / "refused", source=labkit_own)
    assert not (tmp_path / "refused").exists() and not any(p.name.startswith(".refused") for p in tmp_path.iterdir())
