"""The interface every chat engine offers, and :func:`make_engine`, which picks one for this machine.

Every engine answers the same calls::

    engine = make_engine("models/tiny")                       # picks a backend and says which
    engine.ask("这是什么菜？", image="data/food/changfen.jpg")   # the whole answer
    for piece in engine.stream("这是什么菜？", image=...):        # the answer as it is written
        print(piece, end="")
    print(engine.prompt("这是什么菜？", image=...))              # the exact text the model reads

The engines: :class:`~labkit.chat.transformers_engine.TransformersEngine` (CPU or GPU),
:class:`~labkit.chat.lmdeploy_engine.LMDeployEngine` (GPU only, its own environment) and
:class:`~labkit.chat.openai_engine.OpenAIEngine` (a client of an OpenAI-compatible server).

A conversation is a list of ``(question, answer)`` turns about at most one picture; the same
picture is passed again with every later question (:class:`labkit.chat.session.ChatSession`
does that). Each engine uses the model's own ``template`` from ``config.json`` (labkit
checkpoints: ``internlm2-chat-xtuner``, what XTuner trains with) unless you name another one.
"""
from __future__ import annotations

import importlib.util
import logging
from typing import Iterator

from labkit.chat.inputs import ChatInputError, Sampling, check_history, check_question, place_image, read_image
from labkit.chat.prompt import DEFAULT_TEMPLATE, abbreviate, render_prompt, trim_pieces
from labkit.checkpoints.remote_code import FolderTemplates
from labkit.tiling import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)


class ChatEngine:
    """What every engine offers. Subclasses implement :meth:`_stream` (and may speed up ``ask``)."""

    backend = "base"
    template: str = DEFAULT_TEMPLATE
    templates: FolderTemplates | None = None  # the model folder's own templates (None: labkit's)
    system: str | None = None  # None: the template's own system prompt
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    tiling = None  # labkit.tiling.Tiling of the model, where known

    def _prepare(self, question, image, history, settings):
        """Check everything; return (question with marker, history, ImageInput or None, Sampling)."""
        question = check_question(question)
        history = check_history(history)
        picture = read_image(image, self.max_pixels) if image is not None else None
        settings = settings if settings is not None else Sampling()
        if not isinstance(settings, Sampling):
            raise ChatInputError(f"settings must be a labkit.chat.Sampling, got {type(settings).__name__}.")
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


def make_engine(model_dir, backend="auto", lmdeploy_backend="turbomind", server="", **kwargs) -> ChatEngine:
    """The best engine for this machine; it says which one it picked.

    ``auto`` takes LMDeploy when a CUDA GPU and the ``lmdeploy`` package are both present,
    else transformers (on the GPU if there is one). The choice and its reason are printed and
    kept in ``engine.picked``. ``lmdeploy_backend`` ("turbomind" or "pytorch") is LMDeploy's
    own engine; other keyword arguments go to the engine class.

    ``server``, the address of a server that ``labkit deploy`` (LMDeploy, GPU) or ``labkit serve``
    started, overrides the rest: the engine is then an OpenAI client of the model served there
    under the folder's name, and nothing is loaded here.
    """
    if server:
        return _served_engine(model_dir, server, kwargs.get("system"))
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
        from labkit.chat.lmdeploy_engine import LMDeployEngine

        if device not in (None, "cuda"):
            raise ValueError(f"device={device!r}: LMDeploy runs on a CUDA GPU only; use backend='transformers'.")
        kwargs.pop("device", None)
        kwargs.pop("dtype", None)  # LMDeploy picks the dtype from the checkpoint
        engine = LMDeployEngine(model_dir, backend=lmdeploy_backend, **kwargs)
    elif backend == "transformers":
        from labkit.chat.transformers_engine import TransformersEngine

        kwargs.setdefault("device", "cuda" if cuda else "cpu")
        engine = TransformersEngine(model_dir, **kwargs)
    else:
        raise ValueError(f"backend={backend!r}: use 'auto', 'transformers' or 'lmdeploy'.")
    return _announce(engine, reason)


def _served_engine(model_dir, server, system=None) -> ChatEngine:
    from labkit.chat.openai_engine import OpenAIEngine, served_name

    engine = OpenAIEngine(server, model=served_name(model_dir), system=system, folder=model_dir)
    engine.check_served()
    return _announce(engine, f"chat_server={engine.base_url!r}")


def _announce(engine, reason) -> ChatEngine:
    engine.picked = f"{engine.description} ({reason})"
    message = f"labkit.chat: using {engine.picked}"
    log.info(message)
    print(message)
    return engine
