"""InternViT configuration of the OpenGVLab-like test folder (same keys as the real ``vision_config``)."""
from transformers import PretrainedConfig


class InternVisionConfig(PretrainedConfig):
    model_type = "intern_vit_6b"

    def __init__(self, num_channels=3, patch_size=14, image_size=224, qkv_bias=False, hidden_size=3200,
                 num_attention_heads=25, intermediate_size=12800, qk_normalization=True, num_hidden_layers=48,
                 use_flash_attn=True, hidden_act="gelu", norm_type="rms_norm", layer_norm_eps=1e-6, dropout=0.0,
                 drop_path_rate=0.0, attention_dropout=0.0, initializer_range=0.02, initializer_factor=0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_channels, self.patch_size, self.image_size = num_channels, patch_size, image_size
        self.qkv_bias, self.qk_normalization = qkv_bias, qk_normalization
        self.hidden_size, self.num_attention_heads = hidden_size, num_attention_heads
        self.intermediate_size, self.num_hidden_layers = intermediate_size, num_hidden_layers
        self.use_flash_attn, self.hidden_act = use_flash_attn, hidden_act
        self.norm_type, self.layer_norm_eps = norm_type, layer_norm_eps
        self.dropout, self.drop_path_rate, self.attention_dropout = dropout, drop_path_rate, attention_dropout
        self.initializer_range, self.initializer_factor = initializer_range, initializer_factor

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Read the vision part of a whole chat-model config.json too (as the real class does)."""
        config_dict, kwargs = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
        config_dict = config_dict.get("vision_config", config_dict)
        return cls.from_dict(config_dict, **kwargs)
