"""Configuration of the whole InternVL2 chat model: a vision tower, a projector and an LLM.

``config.json`` of an InternVL2 checkpoint nests ``vision_config`` (InternViT) and ``llm_config``
(InternLM2) beside the top-level keys that describe how images become tokens.
"""
from transformers import PretrainedConfig

from .configuration_intern_vit import InternVisionConfig
from .configuration_internlm2 import InternLM2Config

SUPPORTED_LLMS = ("InternLM2ForCausalLM",)


class InternVLChatConfig(PretrainedConfig):
    model_type = "internvl_chat"
    is_composition = True
    sub_configs = {"vision_config": InternVisionConfig, "llm_config": InternLM2Config}

    def __init__(
        self,
        vision_config=None,
        llm_config=None,
        use_backbone_lora=0,
        use_llm_lora=0,
        select_layer=-1,
        force_image_size=None,
        downsample_ratio=0.5,
        template=None,
        dynamic_image_size=False,
        use_thumbnail=False,
        ps_version="v1",
        min_dynamic_patch=1,
        max_dynamic_patch=6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(vision_config, InternVisionConfig):
            vision_config = vision_config.to_dict()
        if isinstance(llm_config, InternLM2Config):
            llm_config = llm_config.to_dict()
        vision_config = dict(vision_config or {})
        llm_config = dict(llm_config or {"architectures": ["InternLM2ForCausalLM"]})
        architecture = (llm_config.get("architectures") or ["InternLM2ForCausalLM"])[0]
        if architecture not in SUPPORTED_LLMS:
            raise ValueError(
                f"config.json: llm_config.architectures[0] is {architecture!r}, but this model code "
                f"only implements {', '.join(SUPPORTED_LLMS)}. Use a checkpoint with an InternLM2 "
                "language model (InternVL2-1B/2B style), or the checkpoint's own remote code."
            )
        self.vision_config = InternVisionConfig(**vision_config)
        self.llm_config = InternLM2Config(**llm_config)
        self.use_backbone_lora = use_backbone_lora
        self.use_llm_lora = use_llm_lora
        self.select_layer = select_layer
        self.force_image_size = force_image_size
        self.downsample_ratio = downsample_ratio
        self.template = template
        self.dynamic_image_size = dynamic_image_size
        self.use_thumbnail = use_thumbnail
        self.ps_version = ps_version
        self.min_dynamic_patch = min_dynamic_patch
        self.max_dynamic_patch = max_dynamic_patch

    def to_dict(self):
        output = super().to_dict()
        output["vision_config"] = self.vision_config.to_dict()
        output["llm_config"] = self.llm_config.to_dict()
        return output
