"""InternLM2 of the OpenGVLab-like test folder: the language model, written as OpenGVLab's behaves.

Same parameter names and shapes as the real one (and labkit's): ``model.tok_embeddings``, per layer
``attention.wqkv`` (ONE fused matrix, rows grouped per key/value head: that group's query heads, then
its key head, then its value head), ``attention.wo``, ``feed_forward.w1/w3/w2`` (SwiGLU),
``attention_norm``/``ffn_norm`` (RMSNorm), then ``model.norm`` and the untied head ``output``.

What it deliberately shares with OpenGVLab's code and NOT with labkit's:

* ``InternLM2PreTrainedModel(PreTrainedModel)``: no ``GenerationMixin`` anywhere. transformers >= 4.50
  no longer gives ``PreTrainedModel`` a ``generate`` method, so ``InternLM2ForCausalLM.generate`` does
  not exist; only ``prepare_inputs_for_generation`` and ``_reorder_cache`` are defined, as in the real file.
* The legacy cache only: each layer's past is a ``(key, value)`` tuple of (batch, kv_heads, seq, head_dim)
  tensors, the model reads ``past_key_values[0][0].shape[2]`` and returns a tuple of tuples. A
  transformers ``Cache`` object is not understood.
* Eager attention with an additive float mask (flash-attn is optional and never present here).
"""
import math

import torch
import torch.utils.checkpoint
from torch import nn
from torch.nn import CrossEntropyLoss
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import logging

from .configuration_internlm2 import InternLM2Config

logger = logging.get_logger(__name__)

try:
    from flash_attn import flash_attn_func  # noqa: F401
    has_flash_attn = True
except ImportError:
    has_flash_attn = False


class InternLM2RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class InternLM2RotaryEmbedding(nn.Module):
    """cos/sin tables for positions 0..seq_len-1; ``rope_scaling`` linear or dynamic NTK.

    Dynamic NTK (InternVL2-2B: factor 2.0 over 32768 positions) enlarges the base only when the
    sequence is longer than ``max_position_embeddings``; shorter sequences get plain RoPE.
    """

    def __init__(self, dim, max_position_embeddings=2048, base=10000, scaling=None):
        super().__init__()
        self.dim, self.max_position_embeddings, self.base = dim, max_position_embeddings, float(base)
        self.kind = (scaling or {}).get("type")
        self.factor = float((scaling or {}).get("factor", 1.0))

    def forward(self, x, seq_len):
        base = self.base
        if self.kind == "dynamic" and seq_len > self.max_position_embeddings:
            stretch = self.factor * seq_len / self.max_position_embeddings - (self.factor - 1)
            base = base * stretch ** (self.dim / (self.dim - 2))
        inv_freq = 1.0 / base ** (torch.arange(0, self.dim, 2, device=x.device).float() / self.dim)
        t = torch.arange(seq_len, device=x.device).float()
        if self.kind == "linear":
            t = t / self.factor
        freqs = torch.outer(t, inv_freq)
        table = torch.cat([freqs, freqs], dim=-1)
        return table.cos().to(x.dtype), table.sin().to(x.dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class InternLM2MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.w2(self.act_fn(self.w1(x)) * self.w3(x))


class InternLM2Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.hidden_size, self.num_heads = config.hidden_size, config.num_attention_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        if self.head_dim * self.num_heads != self.hidden_size:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        self.wqkv = nn.Linear(self.hidden_size, (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim,
                              bias=config.bias)
        self.wo = nn.Linear(self.num_heads * self.head_dim, self.hidden_size, bias=config.bias)
        self.rotary_emb = InternLM2RotaryEmbedding(self.head_dim, config.max_position_embeddings,
                                                   config.rope_theta, config.rope_scaling)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None,
                output_attentions=False, use_cache=False, **kwargs):
        b, n, _ = hidden_states.shape
        groups = self.wqkv(hidden_states).view(b, n, self.num_key_value_heads, self.num_key_value_groups + 2,
                                               self.head_dim)
        q = groups[..., :-2, :].reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = groups[..., -2, :].transpose(1, 2), groups[..., -1, :].transpose(1, 2)
        kv_len = n + (past_key_value[0].shape[-2] if past_key_value is not None else 0)
        cos, sin = self.rotary_emb(v, seq_len=max(kv_len, int(position_ids.max()) + 1))
        cos, sin = cos[position_ids].unsqueeze(1), sin[position_ids].unsqueeze(1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if past_key_value is not None:
            k = torch.cat([past_key_value[0], k], dim=2)
            v = torch.cat([past_key_value[1], v], dim=2)
        present = (k, v) if use_cache else None
        k = k.repeat_interleave(self.num_key_value_groups, dim=1)  # query head i reads kv head i // groups
        v = v.repeat_interleave(self.num_key_value_groups, dim=1)
        scores = q @ k.transpose(2, 3) / math.sqrt(self.head_dim)
        if attention_mask is not None:
            scores = scores + attention_mask
        weights = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
        out = (weights @ v).transpose(1, 2).reshape(b, n, self.hidden_size)
        return self.wo(out), (weights if output_attentions else None), present


class InternLM2DecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = InternLM2Attention(config)
        self.feed_forward = InternLM2MLP(config)
        self.attention_norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.ffn_norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None,
                output_attentions=False, use_cache=False, **kwargs):
        attended, weights, present = self.attention(self.attention_norm(hidden_states), attention_mask,
                                                    position_ids, past_key_value, output_attentions, use_cache)
        hidden_states = hidden_states + attended
        hidden_states = hidden_states + self.feed_forward(self.ffn_norm(hidden_states))
        return (hidden_states,) + ((weights,) if output_attentions else ()) + ((present,) if use_cache else ())


def additive_mask(attention_mask, batch, q_len, past_len, dtype, device):
    """(batch, 1, q_len, past_len + q_len): 0 where a query may look, the dtype's minimum elsewhere."""
    allowed = torch.ones(q_len, past_len + q_len, dtype=torch.bool, device=device).tril(past_len)
    allowed = allowed[None, None].expand(batch, 1, -1, -1)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :].bool().to(device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


class InternLM2PreTrainedModel(PreTrainedModel):
    config_class = InternLM2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["InternLM2DecoderLayer"]
    _skip_keys_device_placement = "past_key_values"

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()


class InternLM2Model(InternLM2PreTrainedModel):
    _auto_class = "AutoModel"

    def __init__(self, config):
        super().__init__(config)
        self.padding_idx, self.vocab_size = config.pad_token_id, config.vocab_size
        if not has_flash_attn:
            config.attn_implementation = "eager"  # as the real file does (it prints a warning)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([InternLM2DecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.tok_embeddings

    def set_input_embeddings(self, value):
        self.tok_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        use_cache = cfg.use_cache if use_cache is None else use_cache
        return_dict = cfg.use_return_dict if return_dict is None else return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You have to specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.tok_embeddings(input_ids)
        batch, seq_len = inputs_embeds.shape[:2]
        past_len = past_key_values[0][0].shape[2] if past_key_values is not None else 0  # the legacy tuple cache
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + seq_len, device=inputs_embeds.device)[None]
        mask = additive_mask(attention_mask, batch, seq_len, past_len, inputs_embeds.dtype, inputs_embeds.device)
        if self.gradient_checkpointing and self.training and use_cache:
            logger.warning_once("`use_cache=True` is incompatible with gradient checkpointing; using use_cache=False.")
            use_cache = False

        hidden = inputs_embeds
        all_hidden = () if output_hidden_states else None
        all_attn = () if output_attentions else None
        next_cache = () if use_cache else None
        for idx, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden += (hidden,)
            past = past_key_values[idx] if past_key_values is not None else None
            if self.gradient_checkpointing and self.training:
                outputs = torch.utils.checkpoint.checkpoint(
                    lambda h, m, p, layer=layer: layer(h, m, p, None, output_attentions, False), hidden, mask,
                    position_ids,
                    use_reentrant=True)
            else:
                outputs = layer(hidden, mask, position_ids, past, output_attentions, use_cache)
            hidden = outputs[0]
            if use_cache:
                next_cache += (outputs[-1],)
            if output_attentions:
                all_attn += (outputs[1],)
        hidden = self.norm(hidden)
        if output_hidden_states:
            all_hidden += (hidden,)
        if not return_dict:
            return tuple(v for v in (hidden, next_cache, all_hidden, all_attn) if v is not None)
        return BaseModelOutputWithPast(last_hidden_state=hidden, past_key_values=next_cache,
                                       hidden_states=all_hidden, attentions=all_attn)


class InternLM2ForCausalLM(InternLM2PreTrainedModel):
    """InternLM2Model + the output head. No GenerationMixin: ``generate`` is missing under transformers 4.57."""

    _auto_class = "AutoModelForCausalLM"
    _tied_weights_keys = ["output.weight"]  # as in the real file; tie_word_embeddings is false, so nothing ties

    def __init__(self, config):
        super().__init__(config)
        self.model = InternLM2Model(config)
        self.vocab_size = config.vocab_size
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.tok_embeddings

    def set_input_embeddings(self, value):
        self.model.tok_embeddings = value

    def get_output_embeddings(self):
        return self.output

    def set_output_embeddings(self, new_embeddings):
        self.output = new_embeddings

    def set_decoder(self, decoder):
        self.model = decoder

    def get_decoder(self):
        return self.model

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                             output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                             return_dict=return_dict)
        logits = self.output(outputs[0]).float()
        loss = None
        if labels is not None:  # position t predicts token t + 1; -100 is ignored
            shift_logits = logits[..., :-1, :].reshape(-1, self.config.vocab_size)
            loss = CrossEntropyLoss()(shift_logits, labels[..., 1:].reshape(-1).to(logits.device))
        if not return_dict:
            output = (logits,) + tuple(outputs[1:])
            return ((loss,) + output) if loss is not None else output
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, inputs_embeds=None,
                                      **kwargs):
        """One decoding step's inputs, as the real file builds them (legacy tuple cache)."""
        if past_key_values is not None:
            past_len = past_key_values[0][0].shape[2]
            # keep only the ids the cache has not seen (or just the last one)
            input_ids = input_ids[:, past_len if input_ids.shape[1] > past_len else input_ids.shape[1] - 1:]
        position_ids = kwargs.get("position_ids")
        if attention_mask is not None and position_ids is None:  # left padding: count real tokens only
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids.masked_fill_(attention_mask == 0, 1)
            if past_key_values:
                position_ids = position_ids[:, -input_ids.shape[1]:]
        if inputs_embeds is not None and past_key_values is None:  # the prompt's embeddings: first step only
            model_inputs = {"inputs_embeds": inputs_embeds}
        else:
            model_inputs = {"input_ids": input_ids}
        model_inputs.update(position_ids=position_ids, past_key_values=past_key_values,
                            use_cache=kwargs.get("use_cache"), attention_mask=attention_mask)
        return model_inputs

    @staticmethod
    def _reorder_cache(past_key_values, beam_idx):
        return tuple(tuple(state.index_select(0, beam_idx.to(state.device)) for state in layer)
                     for layer in past_key_values)
