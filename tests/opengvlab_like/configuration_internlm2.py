"""InternLM2 configuration of the OpenGVLab-like test folder (same keys as the real ``llm_config``).

Like the real class, ``attn_implementation`` is a plain attribute (XTuner sets it to
``flash_attention_2``) and ``rope_scaling`` must be ``{"type": "linear"|"dynamic", "factor": float}``.
"""
from transformers import PretrainedConfig


class InternLM2Config(PretrainedConfig):
    model_type = "internlm2"
    _auto_class = "AutoConfig"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, vocab_size=103168, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=None, hidden_act="silu", max_position_embeddings=2048,
                 initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True, pad_token_id=0, bos_token_id=1,
                 eos_token_id=2, tie_word_embeddings=False, bias=True, rope_theta=10000, rope_scaling=None,
                 attn_implementation="eager", **kwargs):
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.hidden_act, self.max_position_embeddings = hidden_act, max_position_embeddings
        self.initializer_range, self.rms_norm_eps, self.use_cache = initializer_range, rms_norm_eps, use_cache
        self.bias, self.rope_theta, self.rope_scaling = bias, rope_theta, rope_scaling
        self.attn_implementation = attn_implementation or "eager"
        if rope_scaling is not None:
            kind, factor = rope_scaling.get("type"), rope_scaling.get("factor")
            if len(rope_scaling) != 2 or kind not in ("linear", "dynamic"):
                raise ValueError(f"rope_scaling must be {{'type': 'linear'|'dynamic', 'factor': f}}, got {rope_scaling}")
            if not isinstance(factor, float) or factor < 1.0:
                raise ValueError(f"rope_scaling's factor must be a float >= 1, got {factor!r}")
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
