"""Chat with an InternVL2 checkpoint: one interface, three engines.

Every engine answers the same calls::

    engine = make_engine("models/tiny")                       # picks a backend and says which
    engine.ask("这是什么菜？", image="data/food/changfen.jpg")   # the whole answer
    for piece in engine.stream("这是什么菜？", image=...):        # the answer as it is written
        print(piece, end="")
    print(engine.prompt("这是什么菜？", image=...))              # the exact text the model reads

* :class:`TransformersEngine` runs the checkpoint with transformers on the CPU or a GPU. It
  builds the prompt itself from labkit's template module (``labkit/model/conversation.py``) and
  calls only the model's public methods (``num_image_token``, ``img_context_token_id``,
  ``generate``), so it runs labkit's tiny model and OpenGVLab's InternVL2-2B alike.
* :class:`LMDeployEngine` runs it with LMDeploy (GPU only, its own environment:
  ``requirements/lmdeploy.txt``).
* :class:`OpenAIEngine` talks to a server with the OpenAI chat API: ``lmdeploy serve
  api_server`` on a GPU, or ``python -m labkit.server`` (labkit's small CPU server).

A conversation is a list of ``(question, answer)`` turns. One picture per conversation: the
turn that showed it carries the marker ``<image>``, which becomes
``<img>`` + ``<IMG_CONTEXT>`` x (tokens per tile x tiles) + ``</img>`` in the prompt, so the
same picture must be passed again with every later question (:class:`ChatSession` does that).

The template: a model answers best in the layout it was trained with, so each engine uses the
model's own ``template`` from ``config.json`` (labkit checkpoints: ``internlm2-chat-xtuner``,
what XTuner trains with) unless you name another one.
"""
from __future__ import annotations

import argparse
import base64
import functools
import importlib.util
import io
import json
import logging
import math
import os
import re
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from labkit.remote_code import FolderTemplates
from labkit.tiling import DEFAULT_MAX_PIXELS, open_image, tiling_from_config

log = logging.getLogger("labkit.chat")

IMAGE_MARKER = "<image>"  # where the picture sits in a question, before it becomes tokens
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
DEFAULT_TEMPLATE = "internlm2-chat-xtuner"
MAX_NEW_TOKENS_LIMIT = 8192


class ChatInputError(ValueError):
    """A question, picture, history or setting the engine cannot use; the message says why."""


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def _number(name, value, low, high, low_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ChatInputError(f"{name} must be a number, got {value!r}.")
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ChatInputError(f"{name}={value} is out of range: use a value in {bracket}{low}, {high}].")
    return value


@dataclass(frozen=True)
class Settings:
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


# ---------------------------------------------------------------------------------------------
# Checking the inputs
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


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
    the picture sits (see :func:`place_image`); it becomes ``image_tokens`` ``<IMG_CONTEXT>``
    placeholders.
    """
    conv = (templates or labkit_templates()).get(template)
    if system is not None:
        conv.system_message = system
    user, assistant = conv.roles
    for old_question, old_answer in history:
        conv.append_message(user, old_question)
        conv.append_message(assistant, old_answer)
    conv.append_message(user, question)
    conv.append_message(assistant, None)
    text = conv.get_prompt()
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


# ---------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------


class ChatEngine:
    """What every engine offers. Subclasses implement :meth:`_stream` (and may speed up ``ask``)."""

    backend = "base"
    template: str = DEFAULT_TEMPLATE
    templates: FolderTemplates | None = None  # the model folder's own templates (None: labkit's)
    system: str | None = None  # None: the template's own system prompt
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    tiling = None  # labkit.tiling.Tiling of the model, where known

    def _prepare(self, question, image, history, settings):
        """Check everything; return (question with marker, history, ImageInput or None, Settings)."""
        question = check_question(question)
        history = check_history(history)
        picture = read_image(image, self.max_pixels) if image is not None else None
        settings = settings if settings is not None else Settings()
        if not isinstance(settings, Settings):
            raise ChatInputError(f"settings must be a labkit.chat.Settings, got {type(settings).__name__}.")
        return place_image(question, picture is not None, history), history, picture, settings

    def ask(self, question, image=None, history=None, settings=None) -> str:
        """The whole answer to ``question`` (about ``image``, after ``history``)."""
        return "".join(self.stream(question, image, history, settings))

    def stream(self, question, image=None, history=None, settings=None) -> Iterator[str]:
        """The answer in pieces, as the model writes them; joined they equal :meth:`ask`'s answer."""
        prepared = self._prepare(question, image, history, settings)
        return trim_pieces(self._stream(*prepared))

    def chat(self, question, image=None, history=None, settings=None) -> tuple[str, list]:
        """Like :meth:`ask`, but also return the history with this turn appended."""
        placed, turns, _, _ = self._prepare(question, image, history, settings)
        answer = self.ask(question, image, history, settings)
        return answer, turns + [(placed, answer)]

    def prompt(self, question, image=None, history=None, full=False) -> str:
        """The exact text the model reads; runs of image placeholders abbreviated unless ``full``."""
        placed, turns, picture, _ = self._prepare(question, image, history, None)
        tokens = 0
        if picture is not None:
            if self.tiling is None:
                raise ChatInputError(f"The {self.backend} engine does not know the model's tiling.")
            tokens = self.tiling.count_image_tokens(picture.image.width, picture.image.height)
        text = render_prompt(self.template, self.system, placed, turns, tokens, self.templates)
        return text if full else abbreviate(text)

    def _stream(self, question, history, picture, settings) -> Iterator[str]:
        raise NotImplementedError

    def __repr__(self):
        return f"<{type(self).__name__} {self.description}>"

    @property
    def description(self) -> str:
        return f"{self.backend}, template {self.template}"


# ---------------------------------------------------------------------------------------------
# transformers
# ---------------------------------------------------------------------------------------------


class TransformersEngine(ChatEngine):
    """Run an official-format checkpoint folder with transformers (``trust_remote_code``).

    ``device`` "cpu" or "cuda"; ``dtype`` defaults to float32 on the CPU and bfloat16 on a GPU.
    ``template`` names a template of the folder's own ``conversation.py`` (default: the one
    ``config.json`` names), ``system`` replaces the template's system prompt. The folder's own
    remote code runs (``code="labkit"`` runs its weights with labkit's model code instead).
    ``fast_decode=True`` decodes greedy answers with a static KV cache and, on a GPU, a compiled
    decode step replayed as a CUDA graph (labkit.fast_decode: the same tokens, many times faster;
    the first answer compiles for a minute). It needs labkit's model code; sampling (temperature
    > 0) still goes through ``generate``.
    """

    backend = "transformers"

    def __init__(self, model_dir, device="cpu", dtype=None, template=None, system=None,
                 max_pixels=DEFAULT_MAX_PIXELS, code="folder", fast_decode=False):
        import torch

        from labkit.checkpoint import load_checkpoint

        if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
            raise ValueError(f"device={device!r}: use 'cpu' or 'cuda'.")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device='cuda' but PyTorch sees no CUDA GPU here: use device='cpu'.")
        if dtype is None:
            dtype = torch.float32 if device == "cpu" else torch.bfloat16
        self.model_dir, self.device, self.dtype, self.max_pixels = Path(model_dir), device, dtype, max_pixels
        self.model, self.tokenizer = load_checkpoint(model_dir, dtype=dtype, device=device, code=code)
        self.templates = FolderTemplates(model_dir)
        self.template = resolve_template(template or getattr(self.model.config, "template", None), self.templates)
        self.system = system
        self.tiling = tiling_from_config(self.model.config)
        self.model.img_context_token_id = self.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
        self.stop_token_id = self.tokenizer.convert_tokens_to_ids(self.templates.get(self.template).sep)
        self._lock = threading.Lock()  # one generation at a time (a threaded server shares the engine)
        self.fast_decode = None
        if fast_decode:
            from labkit.fast_decode import StaticGreedyDecoder, supports_static_cache

            if not supports_static_cache(self.model):
                raise ValueError(f"fast_decode=True needs labkit's model code, which {model_dir} does not run: "
                                 "pass code='labkit' (or leave fast_decode off).")
            self.fast_decode = StaticGreedyDecoder(self.model.language_model)

    @property
    def description(self):
        return f"transformers on {self.device}, {self.model_dir.name}, template {self.template}"

    def generate_inputs(self, question, image=None, history=None, settings=None) -> dict:
        """The exact keyword arguments this engine hands to ``model.generate`` (for a closer look)."""
        return self._generate_kwargs(*self._prepare(question, image, history, settings))

    def _generate_kwargs(self, question, history, picture, settings) -> dict:
        pixel_values, tokens = None, 0
        if picture is not None:
            pixel_values = self.tiling.load(picture.image, max_pixels=None)  # (tiles, 3, S, S)
            pixel_values = pixel_values.to(self.device, self.dtype)
            tokens = self.model.num_image_token * len(pixel_values)
        prompt = render_prompt(self.template, self.system, question, history, tokens, self.templates)
        inputs = self.tokenizer(prompt, return_tensors="pt")
        pad = self.tokenizer.pad_token_id
        return dict(
            pixel_values=pixel_values,
            input_ids=inputs["input_ids"].to(self.device),
            attention_mask=inputs["attention_mask"].to(self.device),
            eos_token_id=self.stop_token_id,
            pad_token_id=pad if pad is not None else self.stop_token_id,
            **settings.hf_kwargs(),
        )

    def _decode(self, token_ids) -> str:
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return clean_answer(text.split(self.templates.get(self.template).sep)[0])

    def ask(self, question, image=None, history=None, settings=None) -> str:
        import torch

        kwargs = self._generate_kwargs(*self._prepare(question, image, history, settings))
        with self._lock, torch.inference_mode():
            if self._fast(kwargs):
                output = self._fast_generate(kwargs)
            else:
                output = self.model.generate(**kwargs)  # only the new tokens: the prompt went in as embeddings
        return self._decode(output[0])

    def _fast(self, kwargs) -> bool:
        return self.fast_decode is not None and not kwargs.get("do_sample")

    def _fast_generate(self, kwargs, streamer=None, stop=None):
        """labkit.fast_decode's greedy tokens for ``generate``'s keyword arguments."""
        from labkit.fast_decode import prompt_embeddings

        embeds = prompt_embeddings(self.model, kwargs["input_ids"], kwargs["pixel_values"])
        return self.fast_decode.generate(embeds, kwargs["attention_mask"], kwargs["max_new_tokens"],
                                         kwargs["eos_token_id"], kwargs["pad_token_id"], streamer=streamer, stop=stop)

    def _stream(self, question, history, picture, settings):
        """Generate in a worker thread; a TextIteratorStreamer hands the text over piece by piece."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        kwargs = self._generate_kwargs(question, history, picture, settings)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()  # set when the reader stops early: generation ends at the next token

        class StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids, scores, **_):
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        failure = []

        def work():
            try:
                with self._lock, torch.inference_mode():
                    if self._fast(kwargs):
                        self._fast_generate(kwargs, streamer=streamer, stop=stop.is_set)
                    else:
                        self.model.generate(**kwargs, streamer=streamer,
                                            stopping_criteria=StoppingCriteriaList([StopWhenAsked()]))
            except BaseException as err:  # handed to the reader below, never lost in the thread
                failure.append(err)
                streamer.end()

        worker = threading.Thread(target=work, name="labkit-generate", daemon=True)
        worker.start()
        try:
            yield from streamer
            worker.join()
            if failure:
                raise RuntimeError(f"Generation failed: {failure[0]}") from failure[0]
        finally:
            stop.set()
            worker.join(timeout=60)


# ---------------------------------------------------------------------------------------------
# LMDeploy (GPU only, own environment)
# ---------------------------------------------------------------------------------------------


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


def _import_lmdeploy():
    if importlib.util.find_spec("lmdeploy") is None:
        raise ImportError(
            "LMDeploy is not installed in this environment. It needs a CUDA GPU and torch <= 2.12.1, "
            "so it lives in its own environment: see requirements/lmdeploy.txt. On a CPU, use "
            "TransformersEngine (or make_engine(..., backend='transformers'))."
        )
    try:
        import lmdeploy
    except ImportError as err:  # installed, but one of its own dependencies is missing or broken
        raise ImportError(
            f"LMDeploy is installed but does not import: {err}. Reinstall its environment from "
            "requirements/lmdeploy.txt."
        ) from err
    return lmdeploy


class LMDeployEngine(ChatEngine):
    """Run the checkpoint with LMDeploy's TurboMind or PyTorch engine (CUDA GPU only).

    LMDeploy uses its own InternVL2 implementation and tiling; labkit hands it the
    conversation in the OpenAI format and labkit's template (via ``ChatTemplateConfig``).
    ``engine_options`` go to the engine config as they are, e.g. ``{"eager_mode": True}``
    (PyTorch engine without CUDA graphs) or ``{"cache_max_entry_count": 0.4}`` (a smaller
    KV cache, leaving GPU memory for other work).
    """

    backend = "lmdeploy"

    def __init__(self, model_dir, backend="turbomind", session_len=8192, template=None, system=None,
                 max_pixels=DEFAULT_MAX_PIXELS, engine_options=None):
        if backend not in ("turbomind", "pytorch"):
            raise ValueError(f"backend={backend!r}: LMDeploy offers 'turbomind' or 'pytorch'.")
        from labkit.checkpoint import check_model_folder

        config = check_model_folder(model_dir)  # a missing or broken folder is named before LMDeploy starts
        lmdeploy = _import_lmdeploy()
        if "ipykernel" in sys.modules:  # Jupyter already runs an event loop; LMDeploy needs its own
            import nest_asyncio

            nest_asyncio.apply()
        self.model_dir, self.engine_backend, self.max_pixels = Path(model_dir), backend, max_pixels
        self.templates = FolderTemplates(self.model_dir)
        self.template = resolve_template(template or config.get("template"), self.templates)
        self.system = system
        self.tiling = tiling_from_config(config)
        engine_config = (lmdeploy.TurbomindEngineConfig if backend == "turbomind" else lmdeploy.PytorchEngineConfig)
        try:
            self.pipe = lmdeploy.pipeline(
                str(self.model_dir),
                backend_config=engine_config(session_len=session_len, **(engine_options or {})),
                chat_template_config=lmdeploy.ChatTemplateConfig(**lmdeploy_chat_template(self.template, system, self.templates)),
                trust_remote_code=True,
            )
        except SystemExit as err:  # LMDeploy's environment checks end with exit(1) after logging why
            raise RuntimeError(
                f"LMDeploy refused to start ({backend} engine, {self.model_dir}): see its log lines above. "
                "In a script, build the engine under `if __name__ == '__main__':` (LMDeploy starts worker "
                "processes that re-import the script)."
            ) from err

    @property
    def description(self):
        return f"lmdeploy {self.engine_backend}, {self.model_dir.name}, template {self.template}"

    def _gen_config(self, settings):
        from lmdeploy import GenerationConfig

        if settings.greedy:
            return GenerationConfig(max_new_tokens=settings.max_new_tokens, do_sample=False, top_k=1)
        return GenerationConfig(max_new_tokens=settings.max_new_tokens, do_sample=True, top_k=0,
                                temperature=settings.temperature, top_p=settings.top_p)

    def _stream(self, question, history, picture, settings):
        messages = openai_messages(question, history, picture)
        for output in self.pipe.stream_infer(messages, gen_config=self._gen_config(settings)):
            yield output.text


# ---------------------------------------------------------------------------------------------
# An OpenAI-compatible server (lmdeploy serve api_server, or python -m labkit.server)
# ---------------------------------------------------------------------------------------------


class OpenAIEngine(ChatEngine):
    """A client for an OpenAI-compatible ``/v1/chat/completions`` server, standard library only.

    The server renders the prompt with its own template, so :meth:`prompt` shows the request
    labkit sends (the picture's data shortened), not the server's text.
    """

    backend = "openai"

    def __init__(self, base_url="http://127.0.0.1:23333/v1", model=None, api_key="none", timeout=600,
                 system=None, max_pixels=DEFAULT_MAX_PIXELS):
        self.base_url = check_base_url(base_url)
        self._model, self.api_key, self.timeout = model, api_key, timeout
        self.system, self.max_pixels, self.template = system, max_pixels, "the server's"

    @property
    def description(self):
        return f"openai client of {self.base_url}, model {self._model or '(ask the server)'}"

    @property
    def model(self) -> str:
        """The model name to request; asked from the server's /models when not given."""
        if self._model is None:
            with self._open("/models") as response:
                models = json.load(response).get("data") or []
            if not models:
                raise ChatInputError(f"{self.base_url}/models lists no model; is the server still loading?")
            self._model = models[0]["id"]
        return self._model

    def _open(self, path, payload=None):
        request = urllib.request.Request(
            self.base_url + path,
            data=None if payload is None else json.dumps(payload).encode("utf-8"),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"},
        )
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            detail = _error_message(err)
            if 400 <= err.code < 500:  # the request was wrong (input, model name, address): fixable here
                raise ChatInputError(f"The server refused the request (HTTP {err.code}): {detail}") from None
            raise RuntimeError(f"{self.base_url}{path} answered HTTP {err.code}: {detail}") from None
        except urllib.error.URLError as err:
            raise ConnectionError(
                f"No chat server answers at {self.base_url} ({err.reason}). Start one: "
                "`python -m labkit.server MODEL_DIR --port 23333` (CPU) or "
                "`lmdeploy serve api_server MODEL_DIR --trust-remote-code --server-port 23333` (GPU)."
            ) from None

    def _payload(self, question, history, picture, settings, stream):
        payload = {
            "model": self.model,
            "messages": openai_messages(question, history, picture, self.system),
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "stream": stream,
        }
        if settings.greedy:
            payload["top_k"] = 1  # LMDeploy's extension: make greedy explicit
        return payload

    def ask(self, question, image=None, history=None, settings=None) -> str:
        prepared = self._prepare(question, image, history, settings)
        with self._open("/chat/completions", self._payload(*prepared, stream=False)) as response:
            reply = json.load(response)
        return clean_answer(reply["choices"][0]["message"].get("content") or "")

    def _stream(self, question, history, picture, settings):
        with self._open("/chat/completions", self._payload(question, history, picture, settings, True)) as response:
            for line in response:  # server-sent events: "data: {...}" lines, ending with "data: [DONE]"
                line = line.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(f"The server failed while answering: {chunk['error'].get('message')}")
                for choice in chunk.get("choices", []):
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield piece

    def prompt(self, question, image=None, history=None, full=False) -> str:
        placed, turns, picture, _ = self._prepare(question, image, history, None)
        messages = openai_messages(placed, turns, picture, self.system)
        text = json.dumps(messages, ensure_ascii=False, indent=2)
        if full:
            return text
        return re.sub(r'"data:([^;"]+);base64,([^"]{40})[^"]*"',
                      lambda m: f'"data:{m.group(1)};base64,{m.group(2)}..."', text)


def check_base_url(base_url) -> str:
    """A server address such as ``http://127.0.0.1:23333/v1`` (no trailing slash); ChatInputError if malformed."""
    import urllib.parse

    if not isinstance(base_url, str) or not base_url.strip():
        raise ChatInputError(f"base_url {base_url!r} is not a URL: write e.g. 'http://127.0.0.1:23333/v1'.")
    url = base_url.strip().rstrip("/")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # a port that is not a number raises ValueError
    except ValueError as err:
        raise ChatInputError(f"base_url {base_url!r} is malformed ({err}): write e.g. 'http://127.0.0.1:23333/v1'.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        hint = "http://127.0.0.1:23333/v1" if "://" in url else "http://" + url
        raise ChatInputError(f"base_url {base_url!r} is malformed: a server address starts with http:// or https:// "
                             f"and names a host, e.g. {hint!r}.")
    return url


def _error_message(err: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(err.read().decode("utf-8"))
        return body.get("error", {}).get("message") or body.get("message") or str(body)
    except (ValueError, AttributeError):
        return err.reason


# ---------------------------------------------------------------------------------------------
# Picking an engine, and a conversation that remembers
# ---------------------------------------------------------------------------------------------


def make_engine(model_dir, backend="auto", lmdeploy_backend="turbomind", **kwargs) -> ChatEngine:
    """The best engine for this machine; it says which one it picked.

    ``auto`` takes LMDeploy when a CUDA GPU and the ``lmdeploy`` package are both present,
    else transformers (on the GPU if there is one). The choice and its reason are printed and
    kept in ``engine.picked``. ``lmdeploy_backend`` ("turbomind" or "pytorch") is LMDeploy's
    own engine; other keyword arguments go to the engine class.
    """
    import torch

    cuda = torch.cuda.is_available()
    has_lmdeploy = importlib.util.find_spec("lmdeploy") is not None
    device = kwargs.get("device")
    if backend == "auto":
        if device == "cpu":
            backend, reason = "transformers", "device='cpu' was asked for"
        elif cuda and has_lmdeploy:
            backend, reason = "lmdeploy", "a CUDA GPU and lmdeploy are present"
        elif cuda:
            backend, reason = "transformers", "a CUDA GPU is present but lmdeploy is not installed"
        else:
            backend, reason = "transformers", "no CUDA GPU (LMDeploy runs on GPUs only)"
    else:
        reason = "asked for"
    if backend == "lmdeploy":
        if device not in (None, "cuda"):
            raise ValueError(f"device={device!r}: LMDeploy runs on a CUDA GPU only; use backend='transformers'.")
        kwargs.pop("device", None)
        kwargs.pop("dtype", None)  # LMDeploy picks the dtype from the checkpoint
        engine = LMDeployEngine(model_dir, backend=lmdeploy_backend, **kwargs)
    elif backend == "transformers":
        kwargs.setdefault("device", "cuda" if cuda else "cpu")
        engine = TransformersEngine(model_dir, **kwargs)
    else:
        raise ValueError(f"backend={backend!r}: use 'auto', 'transformers' or 'lmdeploy'.")
    engine.picked = f"{engine.description} ({reason})"
    message = f"labkit.chat: using {engine.picked}"
    log.info(message)
    print(message)
    return engine


class ChatSession:
    """One conversation about (at most) one picture: keeps the history and the picture.

    The notebook chat cell and the web demo both drive one of these. A new picture starts a
    new conversation, because the old answers were about the old picture.
    """

    def __init__(self, engine: ChatEngine, settings: Settings | None = None):
        self.engine = engine
        self.settings = settings or Settings()
        self.history: list[tuple[str, str]] = []
        self.picture: ImageInput | None = None

    def set_image(self, source) -> bool:
        """Check and keep a picture; True if that cleared an ongoing conversation."""
        picture = read_image(source, self.engine.max_pixels) if source is not None else None
        cleared = bool(self.history) and picture is not self.picture
        if cleared:
            self.history = []
        self.picture = picture
        return cleared

    def clear(self, keep_image=True):
        self.history = []
        if not keep_image:
            self.picture = None

    def prompt(self, question, full=False) -> str:
        return self.engine.prompt(question, self.picture, self.history, full=full)

    def stream(self, question) -> Iterator[str]:
        """Stream the answer; the turn joins the history once the answer is complete."""
        placed = place_image(check_question(question), self.picture is not None, self.history)
        pieces = []
        for piece in self.engine.stream(question, self.picture, self.history, self.settings):
            pieces.append(piece)
            yield piece
        self.history.append((placed, "".join(pieces)))

    def ask(self, question) -> str:
        return "".join(self.stream(question))


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m labkit.chat", description="Ask an InternVL2 checkpoint one question.")
    parser.add_argument("model_dir", help="an official-format checkpoint folder")
    parser.add_argument("question", nargs="?", default="请描述这张图片。")
    parser.add_argument("--image", help="a picture to ask about")
    parser.add_argument("--backend", default="auto", choices=["auto", "transformers", "lmdeploy"])
    parser.add_argument("--template", help="chat template of the model folder's own conversation.py (default: the one its config.json names)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=0.8)
    parser.add_argument("--show-prompt", action="store_true", help="print the exact prompt first")
    parser.add_argument("--lmdeploy-template", metavar="JSON",
                        help="only write the model's template as a JSON file for `lmdeploy serve api_server --chat-template`")
    args = parser.parse_args(argv)
    from labkit.checkpoint import CheckpointError, load_config

    try:
        if args.lmdeploy_template:
            folder = Path(args.model_dir)
            if not folder.is_dir():
                raise ChatInputError(f"{folder}: no such model folder (or not a folder); pass the checkpoint "
                                     "folder whose config.json names the template.")
            config = load_config(folder / "config.json")
            fields = lmdeploy_chat_template(args.template or config.get("template"), None, FolderTemplates(folder))
            _write_text(args.lmdeploy_template, json.dumps(fields, ensure_ascii=False, indent=2) + "\n")
            print(f"wrote {args.lmdeploy_template}")
            return 0
        # The cheap checks first: settings, question and picture, before the model loads (seconds).
        settings = Settings(args.max_new_tokens, args.temperature, args.top_p)
        check_question(args.question)
        picture = read_image(args.image) if args.image else None
        kwargs = {"template": args.template} if args.template else {}
        if args.template:
            resolve_template(args.template)
        engine = make_engine(args.model_dir, args.backend, **kwargs)
        if args.show_prompt:
            print(engine.prompt(args.question, picture), "\n" + "-" * 40)
        for piece in engine.stream(args.question, picture, settings=settings):
            print(piece, end="", flush=True)
        print()
    except (ChatInputError, CheckpointError, ImportError) as err:  # ImportError: LMDeploy missing or broken
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _write_text(path, text):
    """Write atomically (labkit.fileio); refuse to replace an existing file."""
    from labkit import fileio

    path = Path(path)
    if path.exists():
        raise ChatInputError(f"{path} already exists; choose another name or delete it first.")
    try:
        fileio.write_text(path, text)
    except (IsADirectoryError, NotADirectoryError) as err:
        raise ChatInputError(str(err)) from None


if __name__ == "__main__":
    raise SystemExit(main())
