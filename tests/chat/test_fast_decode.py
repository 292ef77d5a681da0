"""labkit.chat.fast_decode: greedy decoding with a static KV cache gives generate's tokens.

On the CPU nothing is compiled: the static cache, its mask over every slot, the positions and
the end-token handling run eagerly, against transformers' ``generate`` with its dynamic cache.
The tiny model is float32 here, so the two paths agree token for token.
"""
from __future__ import annotations

import pytest
import torch

from helpers import noise_image
from labkit.chat import Sampling, TransformersEngine
from labkit.chat.fast_decode import StaticGreedyDecoder, _after_end, prompt_embeddings

LONG = Sampling(max_new_tokens=40)


@pytest.fixture(scope="module")
def engines(tiny_checkpoint):
    return TransformersEngine(tiny_checkpoint), TransformersEngine(tiny_checkpoint, fast_decode=True)


@pytest.mark.parametrize("with_image", [False, True])
def test_fast_decode_gives_generates_tokens(engines, with_image):
    eager, fast = engines
    image = noise_image(192, 64) if with_image else None
    kwargs = eager.generate_inputs("这是什么菜？", image, settings=LONG)
    with torch.inference_mode():
        expected = eager.model.generate(**kwargs)
        got = fast._fast_generate(kwargs)
    assert got.tolist() == expected.tolist()
    assert fast.ask("这是什么菜？", image, settings=LONG) == eager.ask("这是什么菜？", image, settings=LONG)
    assert "".join(fast.stream("这是什么菜？", image, settings=LONG)) == fast.ask("这是什么菜？", image, settings=LONG)


def test_fast_decode_matches_a_left_padded_batch(engines):
    """Rows of different lengths (left padding): per-row positions and the padding mask."""
    eager, _ = engines
    model, tokenizer = eager.model, eager.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        inputs = tokenizer(["你好", "这是一道很有名的四川菜，叫什么？", "甜点"], return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    eos, pad = eager.stop_token_id, tokenizer.pad_token_id or eager.stop_token_id
    with torch.inference_mode():
        expected = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                  max_new_tokens=24, do_sample=False, eos_token_id=eos, pad_token_id=pad)
        embeds = prompt_embeddings(model, inputs["input_ids"])
        got = StaticGreedyDecoder(model.language_model).generate(embeds, inputs["attention_mask"], 24, eos, pad)
    assert got.tolist() == expected.tolist()


def test_rows_are_padded_after_their_end_token_and_cut_when_all_ended():
    tokens = torch.tensor([[5, 2, 7, 8], [5, 6, 2, 9]])
    assert _after_end(tokens, 2, 0).tolist() == [[5, 2, 0], [5, 6, 2]]
    assert _after_end(torch.tensor([[5, 2, 7], [5, 6, 9]]), 2, 0).tolist() == [[5, 2, 0], [5, 6, 9]]


def test_fast_decode_refuses_model_code_without_a_static_cache(tiny_checkpoint, monkeypatch):
    from labkit.model import modeling_internlm2

    monkeypatch.setattr(modeling_internlm2.InternLM2ForCausalLM, "labkit_static_cache", False)
    engine = TransformersEngine(tiny_checkpoint, code="labkit")
    from labkit.chat.fast_decode import supports_static_cache

    assert not supports_static_cache(engine.model)
