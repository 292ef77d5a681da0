"""InternViT of the OpenGVLab-like test folder.

Same parameter names and shapes as OpenGVLab's (and labkit's) vision tower. Like the real file it
imports ``timm`` at the top, unguarded (for ``DropPath``), so the folder does not load without timm,
and flash-attn is optional. ``InternVisionModel`` does not call ``post_init()``, like the real one.
"""
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.models.layers import DropPath
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.modeling_utils import PreTrainedModel

from .configuration_intern_vit import InternVisionConfig

try:
    from flash_attn.flash_attn_interface import flash_attn_varlen_qkvpacked_func  # noqa: F401
    has_flash_attn = True
except ImportError:
    has_flash_attn = False


class InternRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


NORM2FN = {"rms_norm": InternRMSNorm, "layer_norm": nn.LayerNorm}


class InternVisionEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_dim, self.image_size, self.patch_size = config.hidden_size, config.image_size, config.patch_size
        self.class_embedding = nn.Parameter(torch.randn(1, 1, self.embed_dim))
        self.patch_embedding = nn.Conv2d(3, self.embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.num_patches = (self.image_size // self.patch_size) ** 2
        self.num_positions = self.num_patches + 1
        self.position_embedding = nn.Parameter(torch.randn(1, self.num_positions, self.embed_dim))

    def _grid_positions(self, height, width):
        side = self.image_size // self.patch_size
        grid = self.position_embedding[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
        return grid.flatten(2).transpose(1, 2).to(self.position_embedding.dtype)

    def forward(self, pixel_values):
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values)  # (tiles, D, h, w)
        tiles, _, height, width = patches.shape
        tokens = torch.cat([self.class_embedding.expand(tiles, 1, -1).to(dtype), patches.flatten(2).transpose(1, 2)], 1)
        positions = torch.cat([self.position_embedding[:, :1], self._grid_positions(height, width)], dim=1)
        return tokens + positions.to(dtype)


class InternAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_dim, self.num_heads = config.hidden_size, config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        if self.head_dim * self.num_heads != self.embed_dim:
            raise ValueError(f"hidden_size {self.embed_dim} is not divisible by num_attention_heads {self.num_heads}")
        self.use_flash_attn = config.use_flash_attn and has_flash_attn  # never true here: eager attention below
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=config.qkv_bias)
        self.attn_drop = nn.Dropout(config.attention_dropout)
        self.proj_drop = nn.Dropout(config.dropout)
        self.qk_normalization = config.qk_normalization
        if self.qk_normalization:
            self.q_norm = InternRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
            self.k_norm = InternRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
        self.proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        if self.qk_normalization:  # normalised over all heads together
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        attn = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, d)))


class InternMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.act = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class InternVisionEncoderLayer(nn.Module):
    def __init__(self, config, drop_path_rate):
        super().__init__()
        self.attn, self.mlp = InternAttention(config), InternMLP(config)
        self.norm1 = NORM2FN[config.norm_type](config.hidden_size, eps=config.layer_norm_eps)
        self.norm2 = NORM2FN[config.norm_type](config.hidden_size, eps=config.layer_norm_eps)
        self.ls1 = nn.Parameter(config.initializer_factor * torch.ones(config.hidden_size))
        self.ls2 = nn.Parameter(config.initializer_factor * torch.ones(config.hidden_size))
        self.drop_path1 = DropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()
        self.drop_path2 = DropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path1(self.attn(self.norm1(x).to(x.dtype)) * self.ls1)
        return x + self.drop_path2(self.mlp(self.norm2(x).to(x.dtype)) * self.ls2)


class InternVisionEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers).tolist()  # stochastic depth
        self.layers = nn.ModuleList([InternVisionEncoderLayer(config, rate) for rate in rates])
        self.gradient_checkpointing = True  # only acts in training mode, as in the real file

    def forward(self, inputs_embeds, output_hidden_states=None, return_dict=None):
        hidden, states = inputs_embeds, (() if output_hidden_states else None)
        for layer in self.layers:
            if output_hidden_states:
                states += (hidden,)
            if self.gradient_checkpointing and self.training:
                hidden = torch.utils.checkpoint.checkpoint(layer, hidden, use_reentrant=True)
            else:
                hidden = layer(hidden)
        if output_hidden_states:
            states += (hidden,)
        if return_dict is False:
            return tuple(v for v in (hidden, states) if v is not None)
        return BaseModelOutput(last_hidden_state=hidden, hidden_states=states)


class InternVisionModel(PreTrainedModel):
    main_input_name = "pixel_values"
    config_class = InternVisionConfig
    supports_gradient_checkpointing = True
    _no_split_modules = ["InternVisionEncoderLayer"]

    def __init__(self, config):
        super().__init__(config)
        self.config = config
        self.embeddings = InternVisionEmbeddings(config)
        self.encoder = InternVisionEncoder(config)

    def get_input_embeddings(self):
        return self.embeddings

    def forward(self, pixel_values=None, output_hidden_states=None, return_dict=None, pixel_embeds=None):
        if pixel_values is None and pixel_embeds is None:
            raise ValueError("You have to specify pixel_values or pixel_embeds")
        if pixel_embeds is None and pixel_values.ndim != 4:
            raise ValueError(f"wrong pixel_values size: {pixel_values.shape}")
        hidden = pixel_embeds if pixel_embeds is not None else self.embeddings(pixel_values)
        encoded = self.encoder(hidden, output_hidden_states=output_hidden_states, return_dict=True)
        last = encoded.last_hidden_state
        if return_dict is False:
            return (last, last[:, 0]) + ((encoded.hidden_states,) if output_hidden_states else ())
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=last[:, 0],
                                          hidden_states=encoded.hidden_states)
