"""The model's sizes, read from the checkpoint's ``config.json``, and what they add up to.

``read_model_shape`` keeps the handful of sizes that decide memory; ``count_parameters`` and
``lora_parameters`` count weights from them (``tests/train/test_plan.py`` checks both against real
modules and PEFT).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from labkit import fileio
from labkit.tiling import tokens_per_tile

GIB = 1024**3
BF16 = 2  # bytes
FP32 = 4  # bytes
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit + 8-bit block scale + fp32 scale-of-scales

LLM_LINEARS = ("wqkv", "wo", "w1", "w3", "w2")  # every Linear of an InternLM2 decoder layer


@dataclass(frozen=True)
class ModelShape:
    """The handful of sizes from ``config.json`` that decide memory."""

    vision_hidden: int
    vision_layers: int
    vision_intermediate: int
    image_size: int
    patch_size: int
    num_channels: int
    vision_qkv_bias: bool
    llm_hidden: int
    llm_layers: int
    llm_heads: int
    llm_kv_heads: int
    llm_intermediate: int
    vocab_size: int
    tie_word_embeddings: bool
    downsample_ratio: float
    force_image_size: int
    max_tiles: int  # max_dynamic_patch + 1 thumbnail when use_thumbnail
    use_thumbnail: bool

    @property
    def head_dim(self) -> int:
        return self.llm_hidden // self.llm_heads

    @property
    def num_image_token(self) -> int:
        """Tokens one 448 px tile becomes: (448/14)^2 patches, pixel-shuffled by 0.5 -> 256."""
        return tokens_per_tile(self.force_image_size, self.patch_size, self.downsample_ratio)

    @property
    def vision_tokens_per_tile(self) -> int:
        """Tokens inside the vision tower: one per patch plus the class token (1025)."""
        return (self.image_size // self.patch_size) ** 2 + 1

    def llm_linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each Linear in one decoder layer."""
        h, kv = self.llm_hidden, self.llm_kv_heads * self.head_dim
        q = self.llm_heads * self.head_dim
        i = self.llm_intermediate
        return {"wqkv": (h, q + 2 * kv), "wo": (q, h), "w1": (h, i), "w3": (h, i), "w2": (i, h)}


def _load_config_dict(config) -> tuple[dict, str]:
    """Accept a dict, a config.json path or a checkpoint folder; return (dict, where)."""
    if isinstance(config, dict):
        return config, "the config dict"
    if not isinstance(config, (str, Path)):
        raise ValueError(
            f"config must be a dict or the path of a config.json / checkpoint folder, "
            f"got {type(config).__name__}."
        )
    path = fileio.config_path(config)
    return fileio.read_config(path), str(path)


def _get(cfg: dict, where: str, *keys: str, default=None):
    """Read a nested key such as ('llm_config', 'hidden_size') or explain what is missing."""
    node = cfg
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            if default is not None:
                return default
            raise ValueError(
                f"{where} has no '{'.'.join(keys)}'. The planner needs an InternVL2 config with "
                "nested 'vision_config' and 'llm_config' (see the model's config.json)."
            )
        node = node[k]
    return node


def read_model_shape(config) -> ModelShape:
    """Read the sizes that matter from an InternVL2 ``config.json`` (dict, file or folder)."""
    cfg, where = _load_config_dict(config)

    def vis(key, default=None):
        return _get(cfg, where, "vision_config", key, default=default)

    def llm(key, default=None):
        return _get(cfg, where, "llm_config", key, default=default)

    heads = int(llm("num_attention_heads"))
    image_size = int(vis("image_size"))
    use_thumbnail = bool(_get(cfg, where, "use_thumbnail", default=False))
    return ModelShape(
        vision_hidden=int(vis("hidden_size")),
        vision_layers=int(vis("num_hidden_layers")),
        vision_intermediate=int(vis("intermediate_size")),
        image_size=image_size,
        patch_size=int(vis("patch_size")),
        num_channels=int(vis("num_channels", default=3)),
        vision_qkv_bias=bool(vis("qkv_bias", default=True)),
        llm_hidden=int(llm("hidden_size")),
        llm_layers=int(llm("num_hidden_layers")),
        llm_heads=heads,
        llm_kv_heads=int(llm("num_key_value_heads", default=heads)),
        llm_intermediate=int(llm("intermediate_size")),
        vocab_size=int(llm("vocab_size")),
        tie_word_embeddings=bool(llm("tie_word_embeddings", default=False)),
        downsample_ratio=float(_get(cfg, where, "downsample_ratio")),
        force_image_size=int(_get(cfg, where, "force_image_size", default=image_size)),
        max_tiles=int(_get(cfg, where, "max_dynamic_patch", default=12)) + (1 if use_thumbnail else 0),
        use_thumbnail=use_thumbnail,
    )


def count_parameters(shape: ModelShape) -> dict[str, int]:
    """Parameters per part: vision tower, projector mlp1, LLM layers, embeddings, output head."""
    d, iv, p = shape.vision_hidden, shape.vision_intermediate, shape.patch_size
    patches = (shape.image_size // p) ** 2
    vision_embed = d + (1 + patches) * d + shape.num_channels * p * p * d + d
    qkv_bias = 3 * d if shape.vision_qkv_bias else 0
    vision_layer = (
        2 * d  # norm1 weight + bias
        + d * 3 * d + qkv_bias  # attn.qkv
        + d * d + d  # attn.proj
        + 2 * d  # norm2
        + d * iv + iv + iv * d + d  # mlp.fc1, mlp.fc2
        + 2 * d  # ls1, ls2
    )
    h = shape.llm_hidden
    shuffled = int(round(d / shape.downsample_ratio**2))  # 4 * d after pixel shuffle
    projector = 2 * shuffled + shuffled * h + h + h * h + h  # LayerNorm, Linear, GELU, Linear
    llm_layer = sum(i * o for i, o in shape.llm_linear_shapes().values()) + 2 * h  # + two RMSNorms
    head = 0 if shape.tie_word_embeddings else shape.vocab_size * h
    return {
        "vision": vision_embed + shape.vision_layers * vision_layer,
        "projector": projector,
        "llm_linears": shape.llm_layers * (llm_layer - 2 * h),
        "llm_other": shape.llm_layers * 2 * h + h,  # RMSNorm weights
        "embeddings": shape.vocab_size * h,
        "head": head,
    }


def lora_parameters(shape: ModelShape, rank: int, targets: tuple[str, ...]) -> int:
    """LoRA adds A (rank x in) and B (out x rank) to each targeted Linear of every layer."""
    linears = shape.llm_linear_shapes()
    return shape.llm_layers * sum(rank * (linears[t][0] + linears[t][1]) for t in targets)
