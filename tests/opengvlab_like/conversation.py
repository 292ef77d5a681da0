"""Chat templates of the OpenGVLab-like test folder: a fastchat-style ``Conversation``.

Only the MPT separator style that InternLM2 chat uses is implemented. A prompt reads::

    <|im_start|>system\\n{system}<|im_end|><|im_start|>user\\n{question}<|im_end|><|im_start|>assistant\\n

(no newline after ``<|im_end|>``). Two templates: ``internlm2-chat`` with InternVL's own Chinese
system prompt, and ``opengvlab-like-chat``, the same layout with a system prompt of the fixture's own:
a name labkit's template module does not know, so labkit must take the prompt from the folder.
"""
import dataclasses
from typing import List, Tuple


@dataclasses.dataclass
class Conversation:
    name: str
    system_template: str = "{system_message}"
    system_message: str = ""
    roles: Tuple[str, str] = ("USER", "ASSISTANT")
    messages: List[List[str]] = dataclasses.field(default_factory=list)
    offset: int = 0
    sep_style: str = "MPT"
    sep: str = "\n"
    sep2: str = None
    stop_str: str = None
    stop_token_ids: List[int] = None

    def get_prompt(self):
        if self.sep_style != "MPT":
            raise ValueError(f"Invalid style: {self.sep_style}")
        text = self.system_template.format(system_message=self.system_message) + self.sep
        for role, message in self.messages:
            text += role + message + self.sep if message else role  # None/empty: open the role's turn
        return text

    def set_system_message(self, system_message):
        self.system_message = system_message

    def append_message(self, role, message):
        self.messages.append([role, message])

    def update_last_message(self, message):
        self.messages[-1][1] = message

    def copy(self):
        return dataclasses.replace(self, messages=[[role, message] for role, message in self.messages])

    def dict(self):
        return {"template_name": self.name, "system_message": self.system_message, "roles": self.roles,
                "messages": self.messages, "offset": self.offset}


conv_templates = {}


def register_conv_template(template, override=False):
    if template.name in conv_templates and not override:
        raise ValueError(f"{template.name} has been registered.")
    conv_templates[template.name] = template


def get_conv_template(name):
    """A fresh copy of a registered template; KeyError for an unknown name (as the real one)."""
    return conv_templates[name].copy()


INTERNVL_SYSTEM_MESSAGE = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
FIXTURE_SYSTEM_MESSAGE = "你是一个测试用的多模态助手。"

for _name, _system in (("internlm2-chat", INTERNVL_SYSTEM_MESSAGE), ("opengvlab-like-chat", FIXTURE_SYSTEM_MESSAGE)):
    register_conv_template(Conversation(
        name=_name, system_template="<|im_start|>system\n{system_message}", system_message=_system,
        roles=("<|im_start|>user\n", "<|im_start|>assistant\n"), sep_style="MPT", sep="<|im_end|>"))
