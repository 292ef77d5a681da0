"""InternLM2: the language model of InternVL2-2B (the "LLM" of ViT -> MLP -> LLM).

A decoder-only transformer: RMSNorm before each block, grouped-query attention with rotary
positions, and a SwiGLU feed-forward. Parameter names follow the official checkpoints:
``tok_embeddings``, ``attention.wqkv`` / ``attention.wo``, ``feed_forward.w1/w3/w2``,
``attention_norm`` / ``ffn_norm``, ``norm`` and the untied head ``output``.

The one unusual detail is ``wqkv``: queries, keys and values come out of ONE matrix whose rows
are grouped per key/value head. For each of the ``kv_heads`` groups it holds that group's
``heads / kv_heads`` query heads, then its key head, then its value head.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import CrossEntropyLoss
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import logging

from .configuration_internlm2 import InternLM2Config

logger = logging.get_logger(__name__)


class InternLM2RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 for stability."""

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        dtype = hidden_states.dtype
        x = hidden_states.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class InternLM2RotaryEmbedding(nn.Module):
    """Rotary position angles, with optional linear or dynamic-NTK scaling.

    Dynamic scaling (InternVL2-2B: factor 2.0, 32768 positions) keeps the angles unchanged for
    sequences up to ``max_position_embeddings`` and enlarges the base beyond that.
    """

    def __init__(self, config):
        super().__init__()
        self.dim = config.hidden_size // config.num_attention_heads
        self.base = float(config.rope_theta)
        self.max_positions = config.max_position_embeddings
        scaling = config.rope_scaling or {}
        self.kind = scaling.get("type") or scaling.get("rope_type")
        self.factor = float(scaling.get("factor", 1.0))

    def inv_freq(self, seq_len, device):
        base = self.base
        if self.kind == "dynamic" and seq_len > self.max_positions:
            grow = (self.factor * seq_len / self.max_positions) - (self.factor - 1)
            base = base * grow ** (self.dim / (self.dim - 2))
        exponents = torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float() / self.dim
        return 1.0 / (base**exponents)

    def traced_inv_freq(self, position_ids):
        """``inv_freq`` without reading the sequence length back to the host (for torch.compile).
        The unscaled angles are the ones an eager call kept (a prefill always runs eagerly)."""
        plain = getattr(self, "_plain_inv_freq", None)
        if plain is None or plain.device != position_ids.device:
            plain = self.inv_freq(1, position_ids.device)
        if self.kind != "dynamic":
            return plain
        seq_len = position_ids.max() + 1
        grow = (self.factor * seq_len / self.max_positions) - (self.factor - 1)
        exponents = torch.arange(0, self.dim, 2, dtype=torch.int64, device=position_ids.device).float() / self.dim
        scaled = 1.0 / ((self.base * grow ** (self.dim / (self.dim - 2))) ** exponents)
        return torch.where(seq_len > self.max_positions, scaled, plain)

    @torch.no_grad()
    def forward(self, position_ids, dtype):
        if torch.compiler.is_compiling():
            inv_freq = self.traced_inv_freq(position_ids)
        else:
            seq_len = int(position_ids.max()) + 1
            inv_freq = self.inv_freq(seq_len, position_ids.device)
            if self.kind != "dynamic" or seq_len <= self.max_positions:
                self._plain_inv_freq = inv_freq  # the unscaled angles, for traced_inv_freq
        positions = position_ids.float()
        if self.kind == "linear":
            positions = positions / self.factor
        freqs = positions[..., None] * inv_freq  # (batch, seq, dim/2)
        angles = torch.cat([freqs, freqs], dim=-1)  # (batch, seq, dim)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(q, k, cos, sin):
    """Rotate queries and keys (batch, heads, seq, head_dim) by their positions' angles."""
    cos, sin = cos[:, None], sin[:, None]
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def _attention_backend(config):
    wanted = getattr(config, "attn_implementation", None) or "eager"
    if wanted == "flash_attention_2":
        # PyTorch's SDPA runs FlashAttention-2 kernels itself on GPUs that support them, so the
        # flash-attn package is optional; this is also the CPU path XTuner gets.
        return "sdpa"
    if wanted not in ("eager", "sdpa"):
        logger.warning_once(f"llm_config.attn_implementation={wanted!r} is unknown; using SDPA.")
        return "sdpa"
    return wanted


class InternLM2Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"llm_config.num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})."
            )
        self.group = self.num_heads // self.num_kv_heads  # query heads per key/value head
        self.backend = _attention_backend(config)
        out_features = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.wqkv = nn.Linear(self.hidden_size, out_features, bias=config.bias)
        self.wo = nn.Linear(self.num_heads * self.head_dim, self.hidden_size, bias=config.bias)

    def split_qkv(self, fused):
        """(b, n, (heads + 2 kv) * hd) -> q (b, heads, n, hd), k and v (b, kv, n, hd)."""
        b, n, _ = fused.shape
        grouped = fused.view(b, n, self.num_kv_heads, self.group + 2, self.head_dim)
        q = grouped[..., : self.group, :].reshape(b, n, self.num_heads, self.head_dim)
        k = grouped[..., -2, :]
        v = grouped[..., -1, :]
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, hidden_states, cos, sin, mask, past_key_values=None, output_attentions=False,
                cache_position=None):
        b, n, _ = hidden_states.shape
        q, k, v = self.split_qkv(self.wqkv(hidden_states))
        q, k = apply_rotary(q, k, cos, sin)
        if past_key_values is not None:
            # a static cache writes k and v at cache_position; a dynamic one appends them
            k, v = past_key_values.update(k, v, self.layer_idx, {"cache_position": cache_position})
        # each key/value head serves `group` query heads
        k = k.repeat_interleave(self.group, dim=1)
        v = v.repeat_interleave(self.group, dim=1)
        weights = None
        if mask is None and (self.backend == "eager" or output_attentions):
            mask = build_attention_mask(None, b, n, 0, q.device, shortcut=False)
        if self.backend == "eager" or output_attentions:
            scores = (q @ k.transpose(-1, -2)) / self.head_dim**0.5
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            weights = F.softmax(scores.float(), dim=-1).to(q.dtype)
            out = weights @ v
        else:
            # no mask = plain causal: SDPA may then use its FlashAttention kernel
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        out = out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.wo(out), weights


class InternLM2MLP(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, config):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.w2(self.act_fn(self.w1(x)) * self.w3(x))


class InternLM2DecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attention = InternLM2Attention(config, layer_idx)
        self.feed_forward = InternLM2MLP(config)
        self.attention_norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.ffn_norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, cos, sin, mask, past_key_values=None, output_attentions=False,
                cache_position=None):
        attended, weights = self.attention(
            self.attention_norm(hidden_states), cos, sin, mask, past_key_values, output_attentions, cache_position
        )
        hidden_states = hidden_states + attended
        hidden_states = hidden_states + self.feed_forward(self.ffn_norm(hidden_states))
        return hidden_states, weights


# Skip the explicit mask when plain causal attention gives the same answer at every real token
# (a switch so benchmarks can measure what the shortcut is worth).
CAUSAL_SHORTCUT = True


def right_padded(attention_mask):
    """True when every row of the 0/1 mask is ones then zeros (or there is no mask)."""
    if attention_mask is None:
        return True
    keep = attention_mask.bool()
    return bool((keep[:, 1:] <= keep[:, :-1]).all())


def build_attention_mask(attention_mask, batch, q_len, past_len, device, shortcut=None):
    """Boolean mask (batch, 1, q_len, past_len + q_len): True where a query may look.

    Causal (a token sees itself and earlier tokens) and padding-aware. Each token always sees
    itself, so rows of left padding never become all-masked (which would give NaNs).

    Returns None (meaning: plain causal) when there is no cache and any padding is on the right,
    as in XTuner's training batches: real tokens come before the padding, so causal attention
    already keeps them from seeing it, and the padding's own outputs carry no loss. Without an
    explicit mask SDPA can run its FlashAttention kernel, which is much faster for long
    sequences. ``shortcut=False`` always builds the mask.
    """
    shortcut = CAUSAL_SHORTCUT if shortcut is None else shortcut
    if shortcut and past_len == 0 and right_padded(attention_mask):
        return None
    kv_len = past_len + q_len
    query_pos = torch.arange(past_len, kv_len, device=device)[:, None]
    key_pos = torch.arange(kv_len, device=device)[None, :]
    mask = (key_pos <= query_pos)[None, None].expand(batch, 1, q_len, kv_len)
    if attention_mask is not None:
        keep = attention_mask[:, None, None, -kv_len:].bool()
        mask = (mask & keep) | (key_pos == query_pos)[None, None]
    return mask


def static_cache_mask(attention_mask, batch, cache_position, kv_len):
    """The same mask as build_attention_mask, over all ``kv_len`` slots of a static cache.

    Key slot j is visible to the query at slot ``cache_position[i]`` when j <= that slot (the
    slots after it are not written yet) and the 0/1 ``attention_mask`` (one column per slot
    written so far) keeps j; each token always sees itself. Needs no host synchronisation.
    """
    key_pos = torch.arange(kv_len, device=cache_position.device)[None, :]
    query_pos = cache_position[:, None]
    mask = (key_pos <= query_pos)[None, None].expand(batch, 1, -1, -1)
    if attention_mask is not None:
        keep = torch.ones(batch, kv_len, dtype=torch.bool, device=attention_mask.device)
        keep[:, : attention_mask.shape[1]] = attention_mask.bool()
        mask = (mask & keep[:, None, None, :]) | (key_pos == query_pos)[None, None]
    return mask


class InternLM2PreTrainedModel(PreTrainedModel):
    config_class = InternLM2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["InternLM2DecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_cache_class = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, InternLM2RMSNorm):
            nn.init.ones_(module.weight)


class InternLM2Model(InternLM2PreTrainedModel):
    """Token embeddings -> N decoder layers -> final RMSNorm."""

    def __init__(self, config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([InternLM2DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = InternLM2RotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.tok_embeddings

    def set_input_embeddings(self, value):
        self.tok_embeddings = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        cache_position=None,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.tok_embeddings(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputation and a growing cache do not mix
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        elif isinstance(past_key_values, (tuple, list)):
            past_key_values = DynamicCache.from_legacy_cache(past_key_values)
        batch, q_len, _ = inputs_embeds.shape
        if use_cache and getattr(past_key_values, "is_compileable", False):
            # a static (fixed-size) cache: positions come from cache_position, nothing is read back
            if cache_position is None:
                raise ValueError("A static cache needs cache_position (the slots the new tokens fill).")
            if position_ids is None:
                position_ids = cache_position[None].expand(batch, -1)
            if attention_mask is not None and attention_mask.dim() == 4:
                mask = attention_mask.bool()
            else:
                mask = static_cache_mask(attention_mask, batch, cache_position, past_key_values.get_max_cache_shape())
        else:
            past_len = past_key_values.get_seq_length() if isinstance(past_key_values, Cache) else 0
            if position_ids is None:
                position_ids = torch.arange(past_len, past_len + q_len, device=inputs_embeds.device)[None].expand(batch, -1)
            mask = build_attention_mask(attention_mask, batch, q_len, past_len, inputs_embeds.device)
        cos, sin = self.rotary_emb(position_ids, inputs_embeds.dtype)

        hidden_states = inputs_embeds
        all_states = () if output_hidden_states else None
        all_weights = () if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:
                all_states += (hidden_states,)
            if self.gradient_checkpointing and self.training:
                hidden_states, weights = self._gradient_checkpointing_func(
                    layer.__call__, hidden_states, cos, sin, mask, None, bool(output_attentions)
                )
            else:
                hidden_states, weights = layer(
                    hidden_states, cos, sin, mask, past_key_values if use_cache else None, bool(output_attentions),
                    cache_position,
                )
            if output_attentions:
                all_weights += (weights,)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_states += (hidden_states,)
        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=all_states,
            attentions=all_weights,
        )
        return output if return_dict is not False else output.to_tuple()


class InternLM2ForCausalLM(InternLM2PreTrainedModel, GenerationMixin):
    """InternLM2Model + an untied output head over the vocabulary."""

    _tied_weights_keys = []
    labkit_static_cache = True  # takes a transformers StaticCache with cache_position (labkit.fast_decode)

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

    def get_decoder(self):
        return self.model

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        cache_position=None,
        logits_to_keep=0,
        **kwargs,
    ):
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            cache_position=cache_position,
        )
        hidden_states = outputs.last_hidden_state
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.output(hidden_states).float()
        loss = None
        if labels is not None:
            loss = shifted_cross_entropy(logits, labels)
        result = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return result if return_dict is not False else result.to_tuple()


def shifted_cross_entropy(logits, labels):
    """Next-token loss: position t predicts token t+1; labels of -100 are ignored."""
    shift_logits = logits[..., :-1, :].reshape(-1, logits.shape[-1])
    shift_labels = labels[..., 1:].reshape(-1).to(shift_logits.device)
    return CrossEntropyLoss()(shift_logits, shift_labels)
