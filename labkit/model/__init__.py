"""labkit's own InternVL2 implementation, written in the official checkpoint format.

These files are also the "remote code" copied into every checkpoint labkit writes, so they
import nothing from labkit and only relative to each other.
"""
from .configuration_intern_vit import InternVisionConfig
from .configuration_internlm2 import InternLM2Config
from .configuration_internvl_chat import InternVLChatConfig
from .modeling_intern_vit import InternVisionModel
from .modeling_internlm2 import InternLM2ForCausalLM, InternLM2Model
from .modeling_internvl_chat import InternVLChatModel, pixel_shuffle

REMOTE_CODE_FILES = (
    "configuration_intern_vit.py",
    "configuration_internlm2.py",
    "configuration_internvl_chat.py",
    "conversation.py",
    "modeling_intern_vit.py",
    "modeling_internlm2.py",
    "modeling_internvl_chat.py",
)
