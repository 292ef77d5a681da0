"""One conversation that remembers: the history and the picture, for the chat cell and the web demo."""
from __future__ import annotations

from typing import Iterator

from labkit.chat.engine import ChatEngine
from labkit.chat.inputs import ImageInput, Sampling, check_question, place_image, read_image


class ChatSession:
    """One conversation about (at most) one picture: keeps the history and the picture.

    The notebook chat cell and the web demo both drive one of these. A new picture starts a
    new conversation, because the old answers were about the old picture.
    """

    def __init__(self, engine: ChatEngine, settings: Sampling | None = None):
        self.engine = engine
        self.settings = settings or Sampling()
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
