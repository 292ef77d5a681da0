"""labkit's InternVL2 against transformers' own InternVL, an independent implementation.

The tiny parity checkpoint (every weight random, see tests/conftest.py) is loaded through its
remote code, its weights are renamed and split into ``InternVLForConditionalGeneration``
(labkit/checkpoints/reference.py), and both models read the same prompt with the same image tiles.
Equal logits mean labkit computes what InternVL2 computes: fused wqkv split per kv group,
pixel shuffle v2, layer scales, the projector, rotary positions with dynamic NTK scaling.
"""
from __future__ import annotations

import pytest
import torch

from helpers import image_tiles, load_remote, randomize_
from labkit.checkpoints.folder import build_model, tiny_config
from labkit.checkpoints.reference import build_reference_model, split_wqkv, to_reference_state_dict

TOLERANCE = 1e-4  # float32 on both sides; observed differences are about 3e-6


@pytest.fixture(scope="module")
def pair(parity_checkpoint):
    """(labkit model, transformers' InternVL with the same weights, tokenizer)."""
    model, tokenizer = load_remote(parity_checkpoint)
    return model, build_reference_model(model, model.img_context_token_id), tokenizer


def prompt_with_image(model, tokenizer, tiles, question="图中的菜是什么？"):
    query, _ = model.build_prompt(f"<image>\n{question}", None, [len(tiles)])
    encoded = tokenizer(query, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def test_every_weight_is_carried_over_and_the_head_stays_untied(pair):
    model, reference, _ = pair
    theirs = reference.state_dict()
    mapped = to_reference_state_dict(model.state_dict(), model.config.llm_config)
    assert mapped.keys() == theirs.keys()
    assert all(torch.equal(mapped[name], theirs[name]) for name in mapped)
    assert not torch.equal(reference.lm_head.weight, reference.get_input_embeddings().weight)


def test_wqkv_is_split_per_key_value_group():
    """Rows of wqkv: per kv group, its query heads, then its key head, then its value head."""
    heads, kv_heads, head_dim = 4, 2, 3
    # label every row with (group, slot in group, row in head): slots 0-1 queries, 2 key, 3 value
    rows = torch.tensor([[g, s, r] for g in range(kv_heads) for s in range(4) for r in range(head_dim)])
    q, k, v = split_wqkv(rows, heads, kv_heads)
    assert q[:, :2].tolist() == [[g, s] for g in range(2) for s in (0, 1) for _ in range(head_dim)]
    assert k[:, :2].tolist() == [[g, 2] for g in range(2) for _ in range(head_dim)]
    assert v[:, :2].tolist() == [[g, 3] for g in range(2) for _ in range(head_dim)]


def test_image_features_match(pair):
    model, reference, _ = pair
    tiles = image_tiles(model.config, 192, 64, seed=11)
    with torch.no_grad():
        ours = model.extract_feature(tiles)
        theirs = reference.model.get_image_features(tiles)
    assert ours.shape == theirs.shape == (4, 16, 128)
    assert (ours - theirs).abs().max() <= TOLERANCE


def test_logits_match_on_a_prompt_with_several_tiles(pair):
    model, reference, tokenizer = pair
    tiles = image_tiles(model.config, 192, 64, seed=12)  # 3 tiles + thumbnail
    assert len(tiles) == 4
    inputs = prompt_with_image(model, tokenizer, tiles)
    assert int((inputs["input_ids"] == model.img_context_token_id).sum()) == 4 * 16
    with torch.no_grad():
        ours = model(pixel_values=tiles, **inputs).logits
        theirs = reference(pixel_values=tiles, **inputs).logits
    assert ours.std() > 0.5  # logits of order one: the tolerance below is a real constraint
    diff = (ours - theirs).abs().max().item()
    print(f"max |logit difference| = {diff:.2e} over {ours.numel()} logits (max |logit| {ours.abs().max():.2f})")
    assert diff <= TOLERANCE
    # a different tile order is a different picture: the comparison is sensitive to it
    with torch.no_grad():
        shuffled = model(pixel_values=tiles[[1, 0, 2, 3]], input_ids=inputs["input_ids"]).logits
    assert (shuffled - ours).abs().max() > 100 * TOLERANCE


def test_twenty_greedy_tokens_match(pair):
    model, reference, tokenizer = pair
    tiles = image_tiles(model.config, 64, 192, seed=13)  # a tall picture: 1x3 tiles + thumbnail
    inputs = prompt_with_image(model, tokenizer, tiles, "这是哪一道菜？")
    settings = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False)
    ours = model.generate(pixel_values=tiles, **inputs, **settings)
    theirs = reference.generate(pixel_values=tiles, **inputs, **settings)[:, inputs["input_ids"].shape[1]:]
    assert ours.shape == (1, 20)
    assert ours.tolist() == theirs.tolist()
    assert len(set(ours[0].tolist())) > 3  # not one token repeated: the steps really differ


def test_logits_match_beyond_max_position_embeddings_with_dynamic_rope(tiny_tokenizer):
    """A prompt longer than max_position_embeddings switches on dynamic NTK rotary scaling."""
    config = tiny_config(len(tiny_tokenizer))
    config["llm_config"]["max_position_embeddings"] = 48
    model = randomize_(build_model(config, seed=0), seed=2).eval()
    model.img_context_token_id = tiny_tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    reference = build_reference_model(model, model.img_context_token_id)
    tiles = image_tiles(model.config, 128, 64, seed=14)
    inputs = prompt_with_image(model, tiny_tokenizer, tiles)
    assert inputs["input_ids"].shape[1] > 48
    with torch.no_grad():
        ours = model(pixel_values=tiles, input_ids=inputs["input_ids"]).logits
        theirs = reference(pixel_values=tiles, input_ids=inputs["input_ids"]).logits
        model.language_model.model.rotary_emb.kind = None  # the same model without scaling
        unscaled = model(pixel_values=tiles, input_ids=inputs["input_ids"]).logits
    assert (ours - theirs).abs().max() <= TOLERANCE
    assert (ours - unscaled).abs().max() > 100 * TOLERANCE  # scaling was really in play
