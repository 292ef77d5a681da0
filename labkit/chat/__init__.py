"""Chatting with a model folder: the inputs, the prompt, the engines (transformers, LMDeploy, an
OpenAI-compatible server), the session, the notebook chat cell, the server and the web demo.

In a notebook::

    from labkit import chat

    engine = chat.make_engine("models/tiny")   # prints which engine it picked, and why
    engine.ask("这是什么菜？", image="dish.jpg", settings=chat.Sampling(max_new_tokens=64))

The modules, in reading order: ``inputs`` (checks, :class:`Sampling`), ``prompt`` (the one
prompt builder), ``engine`` (the interface, :func:`make_engine`), one module per engine,
``session``, then ``widget``, ``demo``, ``server``, ``deploy`` (LMDeploy's servers on a GPU)
and ``cli`` on top. The names below load
their module on first use, so ``import labkit.chat`` stays cheap (no torch).
"""
from __future__ import annotations

import importlib

_HOMES = {
    "inputs": ("ChatInputError", "IMAGE_MARKER", "ImageInput", "MAX_NEW_TOKENS_LIMIT", "Sampling",
               "check_history", "check_question", "display_question", "place_image", "read_image"),
    "prompt": ("DEFAULT_TEMPLATE", "IMG_CONTEXT", "IMG_END", "IMG_START", "abbreviate", "clean_answer",
               "lmdeploy_chat_template", "openai_messages", "render_prompt", "resolve_template", "trim_pieces"),
    "engine": ("ChatEngine", "make_engine"),
    "transformers_engine": ("TransformersEngine",),
    "lmdeploy_engine": ("LMDeployEngine",),
    "openai_engine": ("OpenAIEngine", "check_base_url"),
    "session": ("ChatSession",),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_HOME_OF)


def __getattr__(name):
    if name not in _HOME_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME_OF[name]}"), name)
    globals()[name] = value  # found once; later look-ups do not come here
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
