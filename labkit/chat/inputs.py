"""What a question arrives with, checked: the sampling settings, the picture, the history.

Every check raises :class:`ChatInputError` with a message that says what is wrong and what to
do, before any model runs.

One picture per conversation: the turn that shows it carries the marker ``<image>`` in front
of its question (:func:`place_image`); the prompt later turns that marker into image tokens
(:func:`labkit.chat.prompt.render_prompt`).
"""
from __future__ import annotations

import base64
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

from labkit.tiling import DEFAULT_MAX_PIXELS, open_image

IMAGE_MARKER = "<image>"  # where the picture sits in a question, before it becomes tokens
MAX_NEW_TOKENS_LIMIT = 8192


class ChatInputError(ValueError):
    """A question, picture, history or setting the engine cannot use; the message says why."""


# -- how to pick each next token ------------------------------------------------------------
def _number(name, value, low, high, low_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ChatInputError(f"{name} must be a number, got {value!r}.")
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ChatInputError(f"{name}={value} is out of range: use a value in {bracket}{low}, {high}].")
    return value


@dataclass(frozen=True)
class Sampling:
    """How to pick each next token.

    ``temperature`` 0 means greedy decoding (always the most likely token: the same answer
    every time); above 0 the model samples, from the smallest set of tokens whose
    probabilities add up to ``top_p``. ``max_new_tokens`` caps the answer's length.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 0.8

    def __post_init__(self):
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise ChatInputError(f"max_new_tokens must be a whole number, got {self.max_new_tokens!r}.")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ChatInputError(
                f"max_new_tokens={self.max_new_tokens} is out of range: use 1 to {MAX_NEW_TOKENS_LIMIT}."
            )
        _number("temperature", self.temperature, 0.0, 2.0)
        _number("top_p", self.top_p, 0.0, 1.0, low_open=True)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def hf_kwargs(self) -> dict:
        """The keyword arguments for transformers' ``generate``."""
        if self.greedy:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": True,
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "top_k": 0,  # no top-k cut: temperature and top_p alone decide, as in the OpenAI API
        }


# -- the picture ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageInput:
    """A picture that opened cleanly: the decoded RGB image, plus its original file bytes."""

    image: object  # PIL.Image.Image, RGB
    data: bytes | None  # the file's own bytes (sent as they are to a server), None for a PIL input
    mime: str  # e.g. image/jpeg
    name: str

    def data_url(self) -> str:
        """The picture as a ``data:`` URL, the way the OpenAI API carries images."""
        data, mime = self.data, self.mime
        if data is None:
            buffer = io.BytesIO()
            self.image.save(buffer, format="PNG")
            data, mime = buffer.getvalue(), "image/png"
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def read_image(source, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageInput:
    """Open a path, upload bytes or a PIL image; :class:`ChatInputError` if it is not a usable picture."""
    if isinstance(source, ImageInput):
        return source
    if isinstance(source, memoryview):
        source = source.tobytes()
    try:
        image = open_image(source, max_pixels=max_pixels)
    except ValueError as err:
        raise ChatInputError(str(err)) from err
    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), f"<{len(source)} bytes>"
    elif isinstance(source, (str, os.PathLike)):
        data, name = Path(source).read_bytes(), str(source)
    else:
        data, name = None, "<PIL image>"
    fmt = _image_format(data) if data is not None else None
    mime = f"image/{fmt.lower()}" if fmt else "image/png"
    return ImageInput(image=image, data=data, mime=mime, name=name)


def _image_format(data: bytes) -> str | None:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as probe:
        return probe.format


# -- the question and the conversation so far -----------------------------------------------
def check_question(question) -> str:
    if not isinstance(question, str):
        raise ChatInputError(f"The question must be text, got {type(question).__name__}.")
    if not question.strip():
        raise ChatInputError("The question is empty: type a question first.")
    return question.strip()


def check_history(history) -> list[tuple[str, str]]:
    """History as a list of ``(question, answer)`` string pairs."""
    turns = []
    for number, turn in enumerate(history or [], start=1):
        if not (isinstance(turn, (tuple, list)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise ChatInputError(f"History turn {number} is {turn!r}; each turn must be a (question, answer) pair of text.")
        turns.append((turn[0], turn[1]))
    return turns


def place_image(question: str, has_image: bool, history) -> str:
    """The question as it enters the conversation: with ``<image>\\n`` in front when it shows the picture.

    The picture belongs to the turn that first showed it. So ``<image>`` is added to this
    question only if a picture is given and no earlier turn (nor the question) carries it.
    """
    markers = sum(q.count(IMAGE_MARKER) for q, _ in history) + question.count(IMAGE_MARKER)
    if markers > 1:
        raise ChatInputError(
            f"The conversation has {markers} {IMAGE_MARKER} markers; labkit chats about one picture per "
            "conversation. Clear the history to talk about another picture."
        )
    if markers == 1 and not has_image:
        raise ChatInputError(
            f"The history shows a picture ({IMAGE_MARKER} in an earlier question) but no image was passed: "
            "pass the same image again, or clear the history."
        )
    if has_image and markers == 0:
        return f"{IMAGE_MARKER}\n{question}"
    return question


def display_question(question: str) -> str:
    """A question without the picture marker, for showing to people."""
    return question.replace(f"{IMAGE_MARKER}\n", "").replace(IMAGE_MARKER, "").strip()
