"""A memory-lean XTuner model type: logits and loss only where an answer token is supervised.

XTuner's ``InternVL_V1_5`` runs the language model's output head on EVERY position of every
sequence and only then throws most of it away in the loss. For an InternVL2 training sample
almost every position is an image token: one 448 px tile is 256 tokens, a dozen tiles plus the
thumbnail are 3,328, while the answer is a few dozen tokens. The head turns each position into
a vocabulary-wide row of logits (92,553 numbers for InternVL2-2B), so for a batch of 4 such
samples the logits alone are 4 x 3,400 x 92,553 floats, about 2.5 GB in bf16 - plus the same
again for their gradient - and they dominate activation memory.

The loss only reads positions whose next token is supervised (``labels != -100`` after the
one-step shift: position t predicts token t+1). `LeanInternVL` therefore:

1. builds the input embeddings and splices in the image tokens, as XTuner does;
2. runs the decoder (the transformer layers) to get hidden states - shape (B, N, H);
3. keeps only the K hidden states whose next label is supervised - shape (K, H);
4. applies the output head to those alone - (K, V) logits instead of (B, N, V);
5. takes the mean cross-entropy over them, which is exactly XTuner's loss (the mean over the
   same K supervised positions).

It works with LoRA: PEFT wraps the language model, but the decoder and the ``output`` head are
still reached through the wrapped model (and XTuner's LoRA also wraps ``output`` itself; calling
the wrapped head applies its adapter).

Select it with ``Settings(lean_logits=True)``; the rendered config then names
``labkit.train.lean.LeanInternVL``. Its other options:

* ``weights_dtype="float32"`` keeps every weight in float32: XTuner loads InternVL in bfloat16,
  whose 8-bit mantissa rounds small updates away, which matters when training without mixed
  precision on a CPU. With ``"bfloat16"`` the frozen weights stay bfloat16: for LoRA, XTuner's
  preparation step (PEFT's ``prepare_model_for_kbit_training``) casts the whole language model
  to float32, which doubles its memory and makes autocast convert every weight back at every
  call; LeanInternVL undoes that cast for the weights that do not train. The values do not
  change (bfloat16 -> float32 -> bfloat16 is exact).
* Under autocast (bf16 AMP on a GPU) PEFT's cast of every LoRA input to the adapters' float32
  is skipped: autocast casts it straight back to bfloat16 for the matrix product, so the cast
  only copied activations (and made the dropout work on float32). Same numbers, less traffic.
* ``gradient_checkpointing=False`` keeps every layer's activations instead of recomputing them
  in the backward pass: about a third less compute per step, for much more memory (see
  ``labkit.train.plan``). XTuner always turns checkpointing on.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from transformers.modeling_outputs import CausalLMOutputWithPast

from xtuner.model import InternVL_V1_5
from xtuner.utils import IGNORE_INDEX


class LeanInternVL(InternVL_V1_5):
    """XTuner's InternVL_V1_5 with the output head applied to supervised positions only.

    Args (besides InternVL_V1_5's own):
        lean_logits: True computes logits only where the loss needs them; False behaves
            exactly like XTuner's model (useful to compare).
        weights_dtype: "bfloat16" (as XTuner loads) or "float32" (cast after loading).
    """

    def __init__(self, *args, lean_logits: bool = True, weights_dtype: str = "bfloat16",
                 gradient_checkpointing: bool = True, liger_kernels: bool = False, compile_layers: bool = False,
                 plain_layers: int = 0, **kwargs):
        if weights_dtype not in ("bfloat16", "float32"):
            raise ValueError(f"LeanInternVL: weights_dtype={weights_dtype!r}; use 'bfloat16' or 'float32'.")
        super().__init__(*args, **kwargs)
        self.lean_logits = lean_logits
        if weights_dtype == "float32":
            self.model.float()
        else:
            self.cast_frozen(torch.bfloat16)
        if not gradient_checkpointing:
            self.gradient_checkpointing_disable()
        if liger_kernels:
            self.use_liger_kernels()
        if plain_layers:
            self.keep_layers_unchecked(plain_layers)
        if compile_layers:
            for layer in self.decoder_and_head()[0].layers:
                layer.compile()
        self._reported = False

    # -- speed options (benchmarks/gpu_train.py measures them one at a time) ------------------
    def use_liger_kernels(self) -> int:
        """Liger's Triton kernels for the LLM's RMSNorm and SwiGLU product (same formulas, fused
        forward and backward); returns how many modules now use them."""
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction

        changed = 0
        for module in self.decoder_and_head()[0].modules():
            name = type(module).__name__
            if name == "InternLM2RMSNorm":
                module.forward = (lambda m: lambda x: LigerRMSNormFunction.apply(
                    x, m.weight, m.variance_epsilon, 0.0, "llama", False))(module)
                changed += 1
            elif name == "InternLM2MLP":
                module.forward = (lambda m: lambda x: m.w2(LigerSiLUMulFunction.apply(m.w1(x), m.w3(x))))(module)
                changed += 1
        return changed

    def keep_layers_unchecked(self, count: int) -> None:
        """Selective checkpointing: the last ``count`` decoder layers keep their activations (no
        recompute), the others are checkpointed as before."""
        decoder = self.decoder_and_head()[0]
        plain = {id(layer) for layer in list(decoder.layers)[len(decoder.layers) - count:]}
        original = decoder._gradient_checkpointing_func

        def checkpoint_some(call, *args, **kwargs):
            if id(getattr(call, "__self__", None)) in plain:
                return call(*args, **kwargs)
            return original(call, *args, **kwargs)

        decoder._gradient_checkpointing_func = checkpoint_some

    def forward(self, data, data_samples=None, mode="loss"):
        self.match_lora_input_dtype()
        return super().forward(data, data_samples, mode)

    def match_lora_input_dtype(self) -> bool:
        """Let PEFT cast LoRA inputs to float32 only when autocast is off; returns the choice."""
        device = next(self.model.parameters()).device.type
        cast = not torch.is_autocast_enabled(device)
        if getattr(self, "_lora_input_cast", None) is not cast:
            self.set_lora_input_cast(cast)
        return cast

    def set_lora_input_cast(self, cast: bool) -> None:
        """Turn PEFT's cast of every LoRA input to the adapters' dtype on or off."""
        for module in self.model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = cast
        self._lora_input_cast = cast

    def cast_frozen(self, dtype, module=None) -> int:
        """Cast the floating-point weights that do not train (in ``module``, default the whole
        model) to ``dtype``; returns how many changed. bf16 -> fp32 -> bf16 is exact."""
        changed = 0
        for param in (module or self.model).parameters():
            if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
                changed += 1
        return changed

    # -- where the language model's parts live ---------------------------------------------
    def causal_lm(self):
        """The language model with its head (InternLM2ForCausalLM), under a PEFT wrapper or not."""
        lm = self.model.language_model
        return lm.get_base_model() if hasattr(lm, "get_base_model") else lm

    def decoder_and_head(self):
        """(decoder, head): the transformer stack and the output projection of the LLM."""
        lm = self.causal_lm()
        decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model
        return decoder, lm.get_output_embeddings()

    # -- the forward pass -----------------------------------------------------------------
    def embed_with_images(self, input_ids, pixel_values, image_flags):
        """Token embeddings with every <IMG_CONTEXT> slot replaced by an image token: (B, N, H)."""
        embeds = self.model.language_model.get_input_embeddings()(input_ids)
        vit = self.model.extract_feature(pixel_values)  # (tiles, tokens per tile, H)
        vit = vit[image_flags.reshape(-1) == 1]  # drop the blank tiles of text-only samples
        image_tokens = vit.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
        slots = input_ids == self.model.img_context_token_id
        if int(slots.sum()) != image_tokens.shape[0]:
            raise ValueError(
                f"LeanInternVL: the batch has {int(slots.sum())} <IMG_CONTEXT> slots but its images gave "
                f"{image_tokens.shape[0]} image tokens. A sample was probably cut inside its image by "
                "max_length: raise max_length (or lower max_dynamic_patch)."
            )
        return embeds.masked_scatter(slots.unsqueeze(-1), image_tokens)

    def _llm_forward(self, pixel_values, input_ids=None, attention_mask=None, position_ids=None,
                     image_flags=None, past_key_values=None, labels=None, use_cache=None,
                     output_attentions=None, output_hidden_states=None, return_dict=None):
        if not self.lean_logits or labels is None:
            return super()._llm_forward(
                pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids, image_flags=image_flags, past_key_values=past_key_values,
                labels=labels, use_cache=use_cache, output_attentions=output_attentions,
                output_hidden_states=output_hidden_states, return_dict=return_dict)
        embeds = self.embed_with_images(input_ids, pixel_values, image_flags)
        decoder, head = self.decoder_and_head()
        hidden = decoder(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=False, return_dict=True).last_hidden_state  # (B, N, H)
        targets = labels[:, 1:]  # position t predicts token t + 1
        supervised = targets != IGNORE_INDEX  # (B, N - 1)
        picked = hidden[:, :-1][supervised]  # (K, H): only the positions the loss reads
        logits = head(picked)  # (K, V) instead of (B, N, V)
        if picked.shape[0] == 0:
            # No answer token in this batch: a zero loss that still touches the graph (XTuner's
            # mean over nothing would be NaN and poison the weights).
            loss = logits.sum() * 0.0 + hidden.sum() * 0.0
        else:
            loss = F.cross_entropy(logits, targets[supervised].to(logits.device))
        self._report_once(labels, supervised)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def _report_once(self, labels, supervised):
        if self._reported:
            return
        self._reported = True
        total, kept = labels.numel(), int(supervised.sum())
        print_log(
            f"LeanInternVL: the output head runs on {kept} of {total} positions "
            f"({100 * kept / max(total, 1):.1f}%); the rest are prompt and image tokens.",
            logger="current",
        )


