"""Greedy decoding with a static KV cache: the opt-in fast path of labkit.chat.TransformersEngine.

transformers' ``generate`` with the default (dynamic) cache launches every small kernel of every
layer from Python for each new token and reads the answer back to the host after each one, so a
2B model on a large GPU decodes at a few dozen tokens/s while its weights could be read a
thousand times a second. This module decodes the same greedy tokens another way:

1. the prompt (with the image tokens spliced in) goes through the model exactly as in
   ``generate``: the same call, the same dynamic cache, so the first token is the same;
2. the cache is copied into a transformers ``StaticCache`` of fixed size (prompt + new tokens);
3. each further token is one call of the language model on one token per row with
   ``cache_position`` and a boolean mask over all cache slots; on a CUDA GPU that step is
   compiled with ``torch.compile`` and captured once in a CUDA graph, then replayed, and the
   host looks at the tokens only every ``CHECK_EVERY`` steps (to stop at the end token).

Only labkit's own model code (labkit/model/modeling_internlm2.py, also what labkit writes into
model folders) takes a static cache. On the CPU nothing is compiled: the static cache runs
eagerly, which is what the tests check against ``generate``.
"""
from __future__ import annotations

import torch

CHECK_EVERY = 16  # decode steps between two looks at the tokens (end token, stop request)


def supports_static_cache(model) -> bool:
    """True when ``model`` (an InternVL chat model) runs labkit's static-cache code."""
    lm = getattr(model, "language_model", model)
    return bool(getattr(lm, "labkit_static_cache", False)) and hasattr(model, "splice_image_tokens")


def prompt_embeddings(model, input_ids, pixel_values=None):
    """The prompt as the LLM reads it: token embeddings with the image tokens spliced in
    (what the chat model's ``generate`` builds)."""
    embeds = model.language_model.get_input_embeddings()(input_ids)
    if pixel_values is not None:
        embeds = model.splice_image_tokens(input_ids, embeds, model.extract_feature(pixel_values))
    return embeds


class _Step:
    """The one-token decode step for one (batch, cache length): fixed buffers, a static cache and,
    on a GPU, the compiled step captured in a CUDA graph."""

    def __init__(self, lm, batch, max_len, forward, graph):
        from transformers import StaticCache

        device = lm.device
        self.lm, self.batch, self.max_len, self.forward = lm, batch, max_len, forward
        self.cache = StaticCache(config=lm.config, max_cache_len=max_len)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)  # cache_position of the fed token
        self.keep = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.out = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        self.index = torch.zeros(1, dtype=torch.long, device=device)  # column of out the next token fills
        self.want_graph, self.graph = graph, None

    def load(self, prefill_cache, attention_mask, first_token):
        """Take over a prefilled dynamic cache: its keys and values, the 0/1 mask and the first token."""
        length = attention_mask.shape[1]
        slots = torch.arange(length, device=attention_mask.device)
        for index, layer in enumerate(prefill_cache.layers):
            self.cache.update(layer.keys, layer.values, index, {"cache_position": slots})
        self.keep.zero_()
        self.keep[:, :length] = attention_mask.bool()
        # positions as generate counts them: real tokens so far (left padding does not count)
        self.positions.copy_(attention_mask.long().sum(-1, keepdim=True))
        self.slot.fill_(length)
        self.token.copy_(first_token[:, None])
        self.index.zero_()  # every buffer keeps its address: a captured graph reads them

    def _run(self):
        self.keep.index_fill_(1, self.slot, True)  # the fed token's own slot
        nxt = self.forward(self.token, self.positions, self.slot, self.keep, self.cache)
        self.token.copy_(nxt[:, None])
        self.out.index_copy_(1, self.index, nxt[:, None])
        self.positions.add_(1)
        self.slot.add_(1)
        self.index.add_(1)

    def step(self):
        if not self.want_graph:
            return self._run()
        if self.graph is None:
            saved = [t.clone() for t in (self.token, self.positions, self.slot, self.keep, self.index)]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # compiles on the first call; the slots it wrote are rewritten later
                    self._run()
            torch.cuda.current_stream().wait_stream(side)
            for buffer, value in zip((self.token, self.positions, self.slot, self.keep, self.index), saved):
                buffer.copy_(value)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._run()
        self.graph.replay()


def _one_token(lm, token, positions, slot, keep, cache):
    logits = lm(input_ids=token, position_ids=positions, attention_mask=keep[:, None, None, :],
                past_key_values=cache, cache_position=slot, use_cache=True, logits_to_keep=1,
                return_dict=True).logits
    return logits[:, -1].float().argmax(-1)


class StaticGreedyDecoder:
    """Greedy generation for one language model. ``compile`` and ``graph`` (the CUDA graph
    replay): None = on CUDA GPUs only. ``compile=False, graph=True`` replays eager kernels."""

    def __init__(self, lm, compile=None, graph=None):
        self.lm = lm
        on_gpu = lm.device.type == "cuda"
        self.compile = on_gpu if compile is None else bool(compile)
        forward = lambda *args: _one_token(lm, *args)  # noqa: E731
        if self.compile:
            # dynamic: one compilation serves every batch size and cache length
            forward = torch.compile(forward, fullgraph=True, dynamic=True, options=_inductor_options())
        self.forward, self.graph = forward, on_gpu and (on_gpu if graph is None else bool(graph))
        self._step = None

    def _step_for(self, batch, max_len):
        step = self._step
        if step is None or (step.batch, step.max_len) != (batch, max_len):
            self._step = None  # frees the old buffers and graph first
            step = self._step = _Step(self.lm, batch, max_len, self.forward, self.graph)
        return step

    @torch.inference_mode()
    def generate(self, inputs_embeds, attention_mask, max_new_tokens, eos_token_id=None, pad_token_id=None,
                 streamer=None, stop=None):
        """(batch, new tokens) ids, as ``generate(do_sample=False)`` returns them for ``inputs_embeds``:
        after a row's end token come pad tokens; it stops once every row has ended."""
        from transformers import DynamicCache

        lm, (batch, length) = self.lm, attention_mask.shape
        positions = attention_mask.long().cumsum(-1) - 1
        positions.masked_fill_(attention_mask == 0, 1)
        prefill = lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=positions,
                     past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1, return_dict=True)
        first = prefill.logits[:, -1].float().argmax(-1)
        tokens = [first[:, None]]
        streaming = streamer is not None  # row 0's tokens, up to and with its end token
        if streaming:
            streamer.put(torch.zeros(1, 0, dtype=torch.long))  # the prompt, as generate puts it (here: none)
            streamer.put(first.cpu())
            streaming = eos_token_id is None or int(first[0]) != eos_token_id
        done = 1
        if max_new_tokens > 1:
            step = self._step_for(batch, _round_up(length + max_new_tokens, 64))
            step.load(prefill.past_key_values, attention_mask, first)
            del prefill
            shown = 0
            while done < max_new_tokens:
                chunk = min(CHECK_EVERY, max_new_tokens - done)
                for _ in range(chunk):
                    step.step()
                done += chunk
                new = step.out[:, shown:done - 1].clone()
                shown = done - 1
                tokens.append(new)
                if streaming:
                    row = new[0].tolist()
                    if eos_token_id is not None and eos_token_id in row:
                        row, streaming = row[: row.index(eos_token_id) + 1], False
                    streamer.put(torch.tensor(row, dtype=torch.long))
                if eos_token_id is not None and _all_ended(torch.cat(tokens, 1), eos_token_id):
                    break
                if stop is not None and stop():
                    break
        if streamer is not None:
            streamer.end()
        return _after_end(torch.cat(tokens, 1)[:, :max_new_tokens], eos_token_id, pad_token_id)


def _inductor_options():
    """Round to bfloat16 wherever eager PyTorch does, so fused kernels give eager's numbers."""
    from torch._inductor import config

    return {"emulate_precision_casts": True} if hasattr(config, "emulate_precision_casts") else {}


def _round_up(n, multiple):
    return -(-n // multiple) * multiple


def _all_ended(tokens, eos_token_id):
    return bool((tokens == eos_token_id).any(-1).all())


def _after_end(tokens, eos_token_id, pad_token_id):
    """Pad every row after its first end token and cut where all rows have ended (as generate does)."""
    if eos_token_id is None:
        return tokens
    ended = (tokens == eos_token_id).long().cumsum(-1)
    after = (ended - (tokens == eos_token_id).long()) > 0  # strictly after the first end token
    tokens = tokens.masked_fill(after, eos_token_id if pad_token_id is None else pad_token_id)
    if bool(ended[:, -1].gt(0).all()):
        last = int((ended == 0).sum(-1).max()) + 1  # the longest row up to its end token
        tokens = tokens[:, :last]
    return tokens
