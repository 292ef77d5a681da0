"""transformers' own InternVL as an independent reference for labkit's InternVL2 code.

transformers ships ``InternVLForConditionalGeneration``, written by other people from other
sources: a vision tower with separate q/k/v projections, a projector named
``multi_modal_projector`` and a Llama language model. InternLM2 *is* a Llama with renamed and
fused weights, so the same numbers can be poured into both implementations. If both then give
the same logits for the same prompt and the same image tiles, labkit's model computes what
InternVL2 computes - the strongest check available without downloading real weights.

The weight names change like this (labkit / official checkpoint -> transformers):

=========================================  =====================================================
``vision_model.embeddings.class_embedding``  ``model.vision_tower.embeddings.cls_token``
``...embeddings.position_embedding``          ``...embeddings.position_embeddings``
``...embeddings.patch_embedding``             ``...embeddings.patch_embeddings.projection``
``...encoder.layers.N.norm1`` / ``norm2``     ``...encoder.layer.N.layernorm_before`` / ``_after``
``...attn.qkv`` (one fused matrix)            ``...attention.q_proj`` / ``k_proj`` / ``v_proj``
``...attn.proj``                              ``...attention.projection_layer``
``...ls1`` / ``ls2``                          ``...lambda_1`` / ``lambda_2``
``mlp1.0`` / ``mlp1.1`` / ``mlp1.3``          ``model.multi_modal_projector.layer_norm`` /
                                              ``linear_1`` / ``linear_2``
``language_model.model.tok_embeddings``       ``model.language_model.embed_tokens``
``...attention.wqkv`` (fused, per kv group)   ``...self_attn.q_proj`` / ``k_proj`` / ``v_proj``
``...attention.wo``                           ``...self_attn.o_proj``
``...feed_forward.w1`` / ``w3`` / ``w2``      ``...mlp.gate_proj`` / ``up_proj`` / ``down_proj``
``...attention_norm`` / ``ffn_norm``          ``...input_layernorm`` / ``post_attention_layernorm``
``language_model.output``                     ``lm_head``
=========================================  =====================================================

Usage (any labkit or official InternVL2 model with an InternLM2 language model)::

    reference = build_reference_model(model, image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"))
    reference(input_ids=ids, pixel_values=tiles).logits   # compare with model(...).logits
"""
import inspect
import re

from labkit.tiling import tokens_per_tile

# (labkit pattern, transformers replacement) applied to every name that is not split below.
_RENAMES = [
    (r"^vision_model\.embeddings\.class_embedding$", "model.vision_tower.embeddings.cls_token"),
    (r"^vision_model\.embeddings\.position_embedding$", "model.vision_tower.embeddings.position_embeddings"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "model.vision_tower.embeddings.patch_embeddings.projection."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.norm1\.", r"model.vision_tower.encoder.layer.\1.layernorm_before."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.norm2\.", r"model.vision_tower.encoder.layer.\1.layernorm_after."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.attn\.proj\.",
     r"model.vision_tower.encoder.layer.\1.attention.projection_layer."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.attn\.(q_norm|k_norm)\.",
     r"model.vision_tower.encoder.layer.\1.attention.\2."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.ls1$", r"model.vision_tower.encoder.layer.\1.lambda_1"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.ls2$", r"model.vision_tower.encoder.layer.\1.lambda_2"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"model.vision_tower.encoder.layer.\1.mlp."),
    (r"^mlp1\.0\.", "model.multi_modal_projector.layer_norm."),
    (r"^mlp1\.1\.", "model.multi_modal_projector.linear_1."),
    (r"^mlp1\.3\.", "model.multi_modal_projector.linear_2."),
    (r"^language_model\.model\.tok_embeddings\.", "model.language_model.embed_tokens."),
    (r"^language_model\.model\.norm\.", "model.language_model.norm."),
    (r"^language_model\.model\.layers\.(\d+)\.attention\.wo\.", r"model.language_model.layers.\1.self_attn.o_proj."),
    (r"^language_model\.model\.layers\.(\d+)\.feed_forward\.w1\.", r"model.language_model.layers.\1.mlp.gate_proj."),
    (r"^language_model\.model\.layers\.(\d+)\.feed_forward\.w3\.", r"model.language_model.layers.\1.mlp.up_proj."),
    (r"^language_model\.model\.layers\.(\d+)\.feed_forward\.w2\.", r"model.language_model.layers.\1.mlp.down_proj."),
    (r"^language_model\.model\.layers\.(\d+)\.attention_norm\.", r"model.language_model.layers.\1.input_layernorm."),
    (r"^language_model\.model\.layers\.(\d+)\.ffn_norm\.", r"model.language_model.layers.\1.post_attention_layernorm."),
    (r"^language_model\.output\.", "lm_head."),
]
_VISION_QKV = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
_LLM_WQKV = re.compile(r"^language_model\.model\.layers\.(\d+)\.attention\.wqkv\.(weight|bias)$")


def split_wqkv(wqkv, num_heads, num_kv_heads):
    """Split InternLM2's fused ``wqkv`` rows into separate q, k and v rows.

    The rows come in ``num_kv_heads`` groups; each group holds its ``num_heads / num_kv_heads``
    query heads, then one key head, then one value head. InternVL2-2B: 8 groups of
    (2 + 1 + 1) heads of 128 rows = 4096 rows -> q 2048, k 1024, v 1024 rows.
    """
    group = num_heads // num_kv_heads
    head_dim = wqkv.shape[0] // (num_heads + 2 * num_kv_heads)
    grouped = wqkv.reshape(num_kv_heads, group + 2, head_dim, *wqkv.shape[1:])
    q = grouped[:, :group].reshape(num_heads * head_dim, *wqkv.shape[1:])
    k = grouped[:, group].reshape(num_kv_heads * head_dim, *wqkv.shape[1:])
    v = grouped[:, group + 1].reshape(num_kv_heads * head_dim, *wqkv.shape[1:])
    return q, k, v


def _rename(name):
    for pattern, replacement in _RENAMES:
        new_name, hits = re.subn(pattern, replacement, name)
        if hits:
            return new_name
    raise KeyError(f"No transformers name known for the weight {name!r}.")


def to_reference_state_dict(state_dict, llm_config):
    """labkit/official InternVL2 weights -> ``InternVLForConditionalGeneration`` weights."""
    out = {}
    for name, tensor in state_dict.items():
        if match := _VISION_QKV.match(name):
            layer, kind = match.groups()
            prefix = f"model.vision_tower.encoder.layer.{layer}.attention"
            for part, piece in zip("qkv", tensor.chunk(3, dim=0)):  # rows: all q, all k, all v
                out[f"{prefix}.{part}_proj.{kind}"] = piece
        elif match := _LLM_WQKV.match(name):
            layer, kind = match.groups()
            prefix = f"model.language_model.layers.{layer}.self_attn"
            pieces = split_wqkv(tensor, llm_config.num_attention_heads, llm_config.num_key_value_heads)
            for part, piece in zip("qkv", pieces):
                out[f"{prefix}.{part}_proj.{kind}"] = piece
        else:
            out[_rename(name)] = tensor
    return out


def _text_config(llm):
    """A LlamaConfig equal to an InternLM2 config (InternLM2 is a Llama with renamed weights)."""
    from transformers import LlamaConfig

    keys = dict(
        vocab_size=llm.vocab_size,
        hidden_size=llm.hidden_size,
        intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_hidden_layers,
        num_attention_heads=llm.num_attention_heads,
        num_key_value_heads=llm.num_key_value_heads,
        head_dim=llm.hidden_size // llm.num_attention_heads,
        hidden_act=llm.hidden_act,
        max_position_embeddings=llm.max_position_embeddings,
        rms_norm_eps=llm.rms_norm_eps,
        attention_bias=llm.bias,
        mlp_bias=False,
        tie_word_embeddings=False,
        pad_token_id=llm.pad_token_id,
        bos_token_id=llm.bos_token_id,
        eos_token_id=llm.eos_token_id,
    )
    scaling = dict(llm.rope_scaling or {})
    if scaling:
        scaling = {"rope_type": scaling.get("type") or scaling.get("rope_type"), "factor": float(scaling["factor"])}
    if "rope_parameters" in inspect.signature(LlamaConfig.__init__).parameters:  # transformers 5
        keys["rope_parameters"] = {"rope_type": "default", **scaling, "rope_theta": float(llm.rope_theta)}
    else:  # transformers 4
        keys.update(rope_theta=float(llm.rope_theta), rope_scaling=scaling or None)
    return LlamaConfig(**keys)


def reference_config(config, image_token_id):
    """The ``InternVLConfig`` equal to an ``InternVLChatConfig`` (untied head, ps v2)."""
    from transformers import InternVLConfig, InternVLVisionConfig

    if config.llm_config.architectures and config.llm_config.architectures[0] != "InternLM2ForCausalLM":
        raise ValueError(f"Only InternLM2 language models map onto Llama, not {config.llm_config.architectures[0]}.")
    if config.ps_version != "v2":
        raise ValueError("transformers' InternVL implements pixel shuffle v2 only.")
    vit = config.vision_config
    tile = config.force_image_size or vit.image_size
    vision = InternVLVisionConfig(
        hidden_size=vit.hidden_size,
        num_hidden_layers=vit.num_hidden_layers,
        num_attention_heads=vit.num_attention_heads,
        intermediate_size=vit.intermediate_size,
        hidden_act=vit.hidden_act,
        attention_bias=vit.qkv_bias,
        use_qk_norm=vit.qk_normalization,
        norm_type=vit.norm_type,
        layer_norm_eps=vit.layer_norm_eps,
        image_size=vit.image_size,
        patch_size=vit.patch_size,
        num_channels=vit.num_channels,
        layer_scale_init_value=vit.initializer_factor,
        use_mean_pooling=True,  # InternViT has no final norm: transformers then uses Identity
        use_absolute_position_embeddings=True,
    )
    return InternVLConfig(
        vision_config=vision,
        text_config=_text_config(config.llm_config),
        image_token_id=image_token_id,
        image_seq_length=tokens_per_tile(tile, vit.patch_size, config.downsample_ratio),
        downsample_ratio=config.downsample_ratio,
        projector_hidden_act="gelu",
        vision_feature_layer=config.select_layer,
        vision_feature_select_strategy="default",  # drop the class token
        tie_word_embeddings=False,
    )


def build_reference_model(model, image_token_id, attn_implementation="eager"):
    """transformers' ``InternVLForConditionalGeneration`` holding ``model``'s weights (fp32, eval).

    Raises if any weight is left over or missing on either side, so a silent partial load
    cannot make a comparison pass.
    """
    from transformers import InternVLForConditionalGeneration

    config = reference_config(model.config, image_token_id)
    config._attn_implementation = attn_implementation
    config.text_config._attn_implementation = attn_implementation
    config.vision_config._attn_implementation = attn_implementation
    reference = InternVLForConditionalGeneration(config)
    weights = to_reference_state_dict(model.state_dict(), model.config.llm_config)
    missing, unexpected = reference.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise KeyError(f"Weights do not line up: missing in labkit {missing}, unknown to transformers {unexpected}.")
    return reference.float().eval()
