"""InternViT: the vision tower of InternVL2 (step 1 of ViT -> pixel shuffle -> MLP -> LLM).

A plain pre-norm Vision Transformer. Each tile of S x S pixels is cut into (S/p)^2 patches of
p x p pixels, each patch becomes one D-dimensional token, a class token is prepended and a learned
position embedding is added. Every encoder block scales its two residual branches by learned
per-channel vectors (layer scale ``ls1``/``ls2``).

Shapes for InternVL2-2B (S=448, p=14, D=1024): pixels (tiles, 3, 448, 448)
-> patches (tiles, 1024, 1024) -> with class token (tiles, 1025, 1024).
"""
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling

from .configuration_intern_vit import InternVisionConfig


class InternRMSNorm(nn.Module):
    """Root-mean-square norm (used when ``norm_type`` is ``rms_norm``, e.g. InternViT-6B)."""

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        dtype = hidden_states.dtype
        x = hidden_states.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


def make_norm(config, size=None):
    size = size or config.hidden_size
    if config.norm_type == "rms_norm":
        return InternRMSNorm(size, eps=config.layer_norm_eps)
    if config.norm_type == "layer_norm":
        return nn.LayerNorm(size, eps=config.layer_norm_eps)
    raise ValueError(f"vision_config.norm_type is {config.norm_type!r}; use 'layer_norm' or 'rms_norm'.")


class InternVisionEmbeddings(nn.Module):
    """Pixels -> patch tokens, plus a class token and learned positions."""

    def __init__(self, config):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.class_embedding = nn.Parameter(torch.randn(1, 1, self.embed_dim))
        # a convolution with kernel = stride = patch size is "cut into patches + one Linear"
        self.patch_embedding = nn.Conv2d(
            config.num_channels, self.embed_dim, kernel_size=self.patch_size, stride=self.patch_size
        )
        self.num_patches = (self.image_size // self.patch_size) ** 2
        self.num_positions = self.num_patches + 1
        self.position_embedding = nn.Parameter(torch.randn(1, self.num_positions, self.embed_dim))

    def _positions_for(self, grid_h, grid_w):
        """Position embeddings for a grid of patches, resized if the tile size differs."""
        cls_pos, patch_pos = self.position_embedding[:, :1], self.position_embedding[:, 1:]
        side = self.image_size // self.patch_size
        if (grid_h, grid_w) != (side, side):
            grid = patch_pos.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
            patch_pos = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1).to(cls_pos.dtype)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward(self, pixel_values):
        weight_dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values.to(weight_dtype))  # (tiles, D, S/p, S/p)
        tiles, _, grid_h, grid_w = patches.shape
        patches = patches.flatten(2).transpose(1, 2)  # (tiles, (S/p)^2, D)
        cls = self.class_embedding.expand(tiles, 1, -1).to(patches.dtype)
        tokens = torch.cat([cls, patches], dim=1)  # (tiles, 1 + (S/p)^2, D)
        return tokens + self._positions_for(grid_h, grid_w).to(tokens.dtype)


class InternAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection."""

    def __init__(self, config):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        if self.head_dim * self.num_heads != self.embed_dim:
            raise ValueError(
                f"vision_config.hidden_size ({self.embed_dim}) must be divisible by "
                f"num_attention_heads ({self.num_heads})."
            )
        self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=config.qkv_bias)
        self.attn_drop = config.attention_dropout
        self.qk_normalization = config.qk_normalization
        if self.qk_normalization:
            self.q_norm = InternRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
            self.k_norm = InternRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
        self.proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, hidden_states):
        batch, length, _ = hidden_states.shape
        q, k, v = self.qkv(hidden_states).chunk(3, dim=-1)  # each (tiles, N, D)
        if self.qk_normalization:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        dropout = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # (tiles, heads, N, hd)
        out = out.transpose(1, 2).reshape(batch, length, self.embed_dim)
        return self.proj(out)


class InternMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.act = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states):
        return self.fc2(self.act(self.fc1(hidden_states)))


class InternVisionEncoderLayer(nn.Module):
    """x + ls1 * attn(norm1(x)), then x + ls2 * mlp(norm2(x))."""

    def __init__(self, config):
        super().__init__()
        self.attn = InternAttention(config)
        self.mlp = InternMLP(config)
        self.norm1 = make_norm(config)
        self.norm2 = make_norm(config)
        self.ls1 = nn.Parameter(config.initializer_factor * torch.ones(config.hidden_size))
        self.ls2 = nn.Parameter(config.initializer_factor * torch.ones(config.hidden_size))

    def forward(self, hidden_states):
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states)) * self.ls1
        hidden_states = hidden_states + self.mlp(self.norm2(hidden_states)) * self.ls2
        return hidden_states


class InternVisionEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList([InternVisionEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(self, inputs_embeds, output_hidden_states=False):
        hidden_states = inputs_embeds
        all_states = (hidden_states,) if output_hidden_states else None
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                hidden_states = self._gradient_checkpointing_func(layer.__call__, hidden_states)
            else:
                hidden_states = layer(hidden_states)
            if output_hidden_states:
                all_states = all_states + (hidden_states,)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_states)


class InternVisionModel(PreTrainedModel):
    """The vision tower: embeddings + encoder. The class token is the pooled output."""

    main_input_name = "pixel_values"
    config_class = InternVisionConfig
    supports_gradient_checkpointing = True
    _no_split_modules = ["InternVisionEncoderLayer"]

    def __init__(self, config):
        super().__init__(config)
        self.config = config
        self.embeddings = InternVisionEmbeddings(config)
        self.encoder = InternVisionEncoder(config)
        self.post_init()

    def _init_weights(self, module):
        init_vision_weights(module, self.config)

    def get_input_embeddings(self):
        return self.embeddings

    def forward(self, pixel_values=None, output_hidden_states=None, return_dict=None, pixel_embeds=None):
        if pixel_values is None and pixel_embeds is None:
            raise ValueError("InternVisionModel needs pixel_values (tiles, 3, S, S) or pixel_embeds.")
        if pixel_embeds is not None:
            hidden_states = pixel_embeds
        elif pixel_values.ndim == 4:
            hidden_states = self.embeddings(pixel_values)
        else:
            raise ValueError(f"pixel_values must have 4 dims (tiles, 3, S, S), got shape {tuple(pixel_values.shape)}.")
        encoded = self.encoder(hidden_states, output_hidden_states=bool(output_hidden_states))
        last = encoded.last_hidden_state
        output = BaseModelOutputWithPooling(
            last_hidden_state=last, pooler_output=last[:, 0, :], hidden_states=encoded.hidden_states
        )
        return output if return_dict is not False else output.to_tuple()


def init_vision_weights(module, config):
    """Random initialisation used when a checkpoint is built from a config."""
    std = config.initializer_range
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, InternRMSNorm):
        nn.init.ones_(module.weight)
    elif isinstance(module, InternVisionEmbeddings):
        nn.init.normal_(module.class_embedding, std=std)
        nn.init.normal_(module.position_embedding, std=std)
    elif isinstance(module, InternVisionEncoderLayer):
        nn.init.constant_(module.ls1, config.initializer_factor)
        nn.init.constant_(module.ls2, config.initializer_factor)
