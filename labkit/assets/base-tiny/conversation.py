"""Chat templates: how a conversation becomes the one string the model reads.

Two templates of InternLM2's ChatML-style turns exist in this course; they differ in the system prompt:

* ``internlm2-chat`` - InternVL2's own ``chat()`` layout: no newline after ``<|im_end|>`` and a
  Chinese system prompt introducing the model as 书生多模态大模型.
* ``internlm2-chat-xtuner`` - what XTuner's InternVL dataset trains on: the same layout (XTuner
  removes the newlines its plain ``internlm2_chat`` template puts after ``<|im_end|>``) with
  XTuner's English system prompt instead.

A model answers best in the layout it was trained with, so labkit-built checkpoints name
``internlm2-chat-xtuner`` in ``config.json`` and every labkit engine uses it end to end.
"""
from dataclasses import dataclass, field, replace

INTERNVL_SYSTEM = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)
XTUNER_SYSTEM = "You are an AI assistant whose name is InternLM (书生·浦语)."


@dataclass
class Conversation:
    """A conversation being assembled; ``get_prompt()`` renders it for the model."""

    name: str
    system_template: str  # wraps the system message
    user_template: str  # wraps a question and opens the assistant's turn
    answer_template: str  # wraps a finished answer
    system_message: str = ""
    sep: str = "<|im_end|>"  # the end-of-turn marker; generation stops on it
    roles: tuple = ("<|im_start|>user\n", "<|im_start|>assistant\n")
    messages: list = field(default_factory=list)

    def append_message(self, role, message):
        self.messages.append([role, message])

    def get_prompt(self):
        text = self.system_template.format(system=self.system_message) if self.system_message else ""
        for role, message in self.messages:
            if role == self.roles[0]:
                text += self.user_template.format(query=message)
            elif message is not None:
                text += self.answer_template.format(answer=message)
        return text

    def copy(self):
        return replace(self, messages=[list(m) for m in self.messages])


TEMPLATES = {
    "internlm2-chat": Conversation(
        name="internlm2-chat",
        system_template="<|im_start|>system\n{system}<|im_end|>",
        user_template="<|im_start|>user\n{query}<|im_end|><|im_start|>assistant\n",
        answer_template="{answer}<|im_end|>",
        system_message=INTERNVL_SYSTEM,
    ),
    "internlm2-chat-xtuner": Conversation(
        name="internlm2-chat-xtuner",
        system_template="<|im_start|>system\n{system}<|im_end|>",
        user_template="<|im_start|>user\n{query}<|im_end|><|im_start|>assistant\n",
        answer_template="{answer}<|im_end|>",
        system_message=XTUNER_SYSTEM,
    ),
}


def get_conv_template(name):
    """A fresh copy of the named template."""
    if name not in TEMPLATES:
        raise KeyError(f"Unknown chat template {name!r}; known: {', '.join(TEMPLATES)}.")
    return TEMPLATES[name].copy()
