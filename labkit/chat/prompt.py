"""The prompt: how a question, its history and a picture become the one string the model reads.

labkit has one prompt builder. The conversation is written by the model folder's own template
module (``conversation.py``, through :meth:`labkit.checkpoints.remote_code.FolderTemplates.render`),
the same module the folder's ``chat()`` uses; :func:`render_prompt` then puts the image tokens
where the ``<image>`` marker sits: ``<img>`` + ``<IMG_CONTEXT>`` x (tokens per tile x tiles) +
``</img>``. The tokenizer's Jinja ``chat_template`` is written from the same template
(:func:`labkit.checkpoints.tokenizer.jinja_chat_template`), and LMDeploy gets its fields from
prompts this builder renders (:func:`lmdeploy_chat_template`).

Also here: what an answer looks like once cleaned (:func:`clean_answer`, :func:`trim_pieces`)
and a conversation in the OpenAI message format (:func:`openai_messages`).
"""
from __future__ import annotations

import functools
import re
from typing import Iterable, Iterator

from labkit.chat.inputs import IMAGE_MARKER, ChatInputError, ImageInput, display_question
from labkit.checkpoints.remote_code import LABKIT_TEMPLATE, FolderTemplates

IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
DEFAULT_TEMPLATE = LABKIT_TEMPLATE  # what labkit's folders name; an engine uses its folder's own


# -- templates ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def labkit_templates() -> FolderTemplates:
    """labkit's own template module (``labkit/model/conversation.py``)."""
    return FolderTemplates()


def resolve_template(name, templates: FolderTemplates | None = None) -> str:
    """Check a template name against a folder's template module (default: labkit's own)."""
    templates = templates or labkit_templates()
    name = name or DEFAULT_TEMPLATE
    if name not in templates:
        raise ChatInputError(f"Unknown chat template {name!r}; {templates.source} knows: {', '.join(templates.names())}.")
    return name


def render_prompt(template: str, system: str | None, question: str, history, image_tokens: int = 0,
                  templates: FolderTemplates | None = None) -> str:
    """The exact string the model reads, ending where the assistant's answer begins.

    ``template`` names a template of ``templates`` (a model folder's own ``conversation.py``;
    default labkit's). ``question`` and ``history`` already carry the ``<image>`` marker where
    the picture sits (see :func:`labkit.chat.inputs.place_image`); it becomes ``image_tokens``
    ``<IMG_CONTEXT>`` placeholders.
    """
    text = (templates or labkit_templates()).render(template, question, history, system)
    if image_tokens:
        text = text.replace(IMAGE_MARKER, IMG_START + IMG_CONTEXT * image_tokens + IMG_END, 1)
    return text


def abbreviate(prompt: str) -> str:
    """Shorten each run of ``<IMG_CONTEXT>`` placeholders to ``<IMG_CONTEXT>×N``."""
    return re.sub(
        f"(?:{re.escape(IMG_CONTEXT)})+",
        lambda run: f"{IMG_CONTEXT}×{len(run.group(0)) // len(IMG_CONTEXT)}",
        prompt,
    )


# -- answers --------------------------------------------------------------------------------
# Trailing whitespace, and "\ufffd" left where the length limit cut a character's bytes in two
_RAGGED_END = re.compile(r"[\s\ufffd]+$")


def clean_answer(text: str) -> str:
    """An answer without surrounding whitespace or a half character at its end (as LMDeploy shows it)."""
    return _RAGGED_END.sub("", text.lstrip())


def trim_pieces(pieces: Iterable[str]) -> Iterator[str]:
    """Pass streamed text through, cleaned like :func:`clean_answer`.

    The joined pieces then equal the answer that ``ask`` returns. A ragged end (whitespace, a
    half character) is held back until more text follows it, so it never reaches the reader.
    """
    started, pending = False, ""
    for piece in pieces:
        if not started:
            piece = piece.lstrip()
            if not piece:
                continue
            started = True
        text = pending + piece
        body = _RAGGED_END.sub("", text)
        pending = text[len(body):]
        if body:
            yield body


# -- the same conversation for other programs -----------------------------------------------
def openai_messages(question: str, history, image: ImageInput | None, system: str | None = None) -> list[dict]:
    """A conversation in the OpenAI chat format; the picture as a data URL in the turn that shows it."""

    def user_turn(text):
        if IMAGE_MARKER not in text:
            return {"role": "user", "content": text}
        return {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image.data_url()}},
                {"type": "text", "text": display_question(text)},
            ],
        }

    messages = [{"role": "system", "content": system}] if system is not None else []
    for old_question, old_answer in history:
        messages += [user_turn(old_question), {"role": "assistant", "content": old_answer}]
    messages.append(user_turn(question))
    return messages


def lmdeploy_chat_template(template: str, system: str | None = None,
                           templates: FolderTemplates | None = None) -> dict:
    """A template as LMDeploy's ``ChatTemplateConfig`` fields (also usable as the JSON file of
    ``lmdeploy serve api_server --chat-template``), so LMDeploy prompts exactly as labkit does.

    The fields are read off prompts the template itself renders, so any folder's
    ``conversation.py`` (labkit's or OpenGVLab's) gives them the same way.
    """
    templates = templates or labkit_templates()
    template = resolve_template(template, templates)
    conv = templates.get(template)
    user, assistant = conv.roles
    marks = ("\x01S\x01", "\x01Q\x01", "\x01A\x01", "\x01R\x01")
    text = render_prompt(template, marks[0], marks[3], [(marks[1], marks[2])], 0, templates)
    before, sys_to_q, q_to_a, a_to_r, after = re.split("|".join(map(re.escape, marks)), text)
    fields = {
        "model_name": f"labkit-{template}",
        "system": before,
        "meta_instruction": conv.system_message if system is None else system,
        "eosys": _strip_end(sys_to_q, user, template),
        "user": user,
        "eoh": _strip_end(q_to_a, assistant, template),
        "assistant": assistant,
        "eoa": _strip_end(a_to_r, user, template),
        "separator": "",
        "capability": "chat",
        "stop_words": [conv.sep.strip()],
    }
    if after != fields["eoh"] + assistant:
        raise ChatInputError(f"Template {template!r} does not end a question the way it ends the first one; "
                             "LMDeploy cannot reproduce it.")
    return fields


def _strip_end(text, suffix, template):
    if not text.endswith(suffix):
        raise ChatInputError(f"Template {template!r}: expected {suffix!r} before each turn; LMDeploy cannot reproduce it.")
    return text[: len(text) - len(suffix)]
