"""Configuration of the whole OpenGVLab-like chat model: nested ``vision_config`` and ``llm_config``."""
from transformers import PretrainedConfig

from .configuration_intern_vit import InternVisionConfig
from .configuration_internlm2 import InternLM2Config


class InternVLChatConfig(PretrainedConfig):
    model_type = "internvl_chat"
    is_composition = True

    def __init__(self, vision_config=None, llm_config=None, use_backbone_lora=0, use_llm_lora=0, select_layer=-1,
                 force_image_size=None, downsample_ratio=0.5, template=None, dynamic_image_size=False,
                 use_thumbnail=False, ps_version="v1", min_dynamic_patch=1, max_dynamic_patch=6, **kwargs):
        super().__init__(**kwargs)
        vision_config = vision_config or {"architectures": ["InternVisionModel"]}
        llm_config = llm_config or {"architectures": ["InternLM2ForCausalLM"]}
        if isinstance(vision_config, PretrainedConfig):
            vision_config = vision_config.to_dict()
        if isinstance(llm_config, PretrainedConfig):
            llm_config = llm_config.to_dict()
        arch = llm_config.get("architectures")[0]
        if arch != "InternLM2ForCausalLM":  # the real class also allows LlamaForCausalLM; the fixture does not
            raise ValueError(f"Unsupported architecture: {arch}")
        self.vision_config = InternVisionConfig(**vision_config)
        self.llm_config = InternLM2Config(**llm_config)
        self.use_backbone_lora, self.use_llm_lora = use_backbone_lora, use_llm_lora
        self.select_layer, self.force_image_size = select_layer, force_image_size
        self.downsample_ratio, self.template, self.ps_version = downsample_ratio, template, ps_version
        self.dynamic_image_size, self.use_thumbnail = dynamic_image_size, use_thumbnail
        self.min_dynamic_patch, self.max_dynamic_patch = min_dynamic_patch, max_dynamic_patch
        self.tie_word_embeddings = self.llm_config.tie_word_embeddings

    def to_dict(self):
        output = super().to_dict()
        output["vision_config"] = self.vision_config.to_dict()
        output["llm_config"] = self.llm_config.to_dict()
        return output
