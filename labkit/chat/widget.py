"""The notebook chat cell: upload a picture, ask, watch the answer being written.

::

    from labkit.chat import make_engine
    from labkit.chat.widget import ChatCell
    ChatCell(make_engine("models/tiny"))

The cell is an ipywidgets ``VBox`` driving one :class:`labkit.chat.session.ChatSession`. Its buttons
call plain methods (:meth:`ChatCell.on_upload`, :meth:`ChatCell.on_send`,
:meth:`ChatCell.on_clear`), so a test can set values and call them without a browser. Every
failure lands in the red error area; the callbacks never raise, so the cell stays usable.

Each part carries a stable CSS class for styling and browser tests: ``labkit-chat`` (the
cell), ``labkit-chat-upload``, ``labkit-chat-preview``, ``labkit-chat-input``,
``labkit-chat-send``, ``labkit-chat-clear``, ``labkit-chat-temperature``,
``labkit-chat-top-p``, ``labkit-chat-max-tokens``, ``labkit-chat-show-prompt``,
``labkit-chat-prompt``, ``labkit-chat-history``, ``labkit-chat-reply``, ``labkit-chat-error``,
``labkit-chat-status``.

While an answer is being written it shows in the reply area, under its question; once it is
complete the turn moves into the history, so every turn shows exactly once. The helpers at the
top (``tagged``, ``uploaded_file``, ``png_thumbnail``, ``error_html``) are shared with the
side-by-side cell, :mod:`labkit.chat.compare`.
"""
from __future__ import annotations

import html
import io
import time

import ipywidgets as widgets

from labkit.chat.inputs import ChatInputError, Sampling, check_question, display_question
from labkit.chat.session import ChatSession

PREVIEW_PIXELS = 256  # the preview is a small PNG copy of the picture the model will see
FULL_LABEL = {"description_width": "initial"}  # a slider's label at its own width, never cut to "temperat..."


def tagged(widget, css_class):
    """``widget`` with the CSS class that styling and the browser tests select it by."""
    widget.add_class(css_class)
    return widget


def png_thumbnail(image, pixels: int) -> bytes:
    """A PNG copy of a PIL image, shrunk to fit in ``pixels`` x ``pixels``."""
    thumb = image.copy()
    thumb.thumbnail((pixels, pixels))
    buffer = io.BytesIO()
    thumb.save(buffer, format="PNG")
    return buffer.getvalue()


def error_html(text: str) -> str:
    return f'<span style="color:#b00020">{html.escape(text)}</span>' if text else ""


def _turn_html(question: str, answer: str, css_class: str = "labkit-chat-turn") -> str:
    return (
        f'<div class="{css_class}"><div class="labkit-chat-question"><b>问</b> '
        f"{html.escape(display_question(question))}</div>"
        f'<div class="labkit-chat-answer"><b>答</b> {html.escape(answer)}</div></div>'
    )


def uploaded_file(value):
    """The newest file of a FileUpload value as (name, bytes); None when there is none."""
    if isinstance(value, dict):  # ipywidgets 7 kept {name: {"metadata": ..., "content": ...}}
        value = [{"name": name, **entry.get("metadata", {}), "content": entry["content"]}
                 for name, entry in value.items()]
    if not value:
        return None
    entry = list(value)[-1]
    return entry.get("name") or "upload", bytes(entry["content"])


class ChatCell(widgets.VBox):
    """A chat with one engine in one notebook cell."""

    def __init__(self, engine, settings: Sampling | None = None, title: str | None = None):
        settings = settings or Sampling()
        self.session = ChatSession(engine, settings)
        self.last_exception = None  # the last unexpected error, kept for a closer look

        self.upload = tagged(widgets.FileUpload(accept="image/*", multiple=False, description="Picture"),
                             "labkit-chat-upload")
        self.preview = tagged(widgets.Image(format="png", layout=widgets.Layout(display="none")),
                              "labkit-chat-preview")
        self.input = tagged(widgets.Textarea(placeholder="Ask about the picture, e.g. 这是什么菜？",
                                             layout=widgets.Layout(width="100%")), "labkit-chat-input")
        self.send_button = tagged(widgets.Button(description="Send", button_style="primary", icon="paper-plane"),
                                  "labkit-chat-send")
        self.clear_button = tagged(widgets.Button(description="Clear", tooltip="new conversation, same picture"),
                                   "labkit-chat-clear")
        self.temperature = tagged(widgets.FloatSlider(value=settings.temperature, min=0.0, max=1.5, step=0.05,
                                                      description="temperature", style=FULL_LABEL),
                                  "labkit-chat-temperature")
        self.top_p = tagged(widgets.FloatSlider(value=settings.top_p, min=0.05, max=1.0, step=0.05,
                                                description="top_p", style=FULL_LABEL), "labkit-chat-top-p")
        self.max_tokens = tagged(widgets.IntSlider(value=settings.max_new_tokens, min=1, max=1024,
                                                   description="max tokens", style=FULL_LABEL),
                                 "labkit-chat-max-tokens")
        self.show_prompt = tagged(widgets.Checkbox(value=False, description="show the exact prompt"),
                                  "labkit-chat-show-prompt")
        self.prompt_view = tagged(widgets.HTML(), "labkit-chat-prompt")
        self.history_view = tagged(widgets.HTML(), "labkit-chat-history")
        self.reply = tagged(widgets.HTML(), "labkit-chat-reply")
        self.error = tagged(widgets.HTML(), "labkit-chat-error")
        self.status = tagged(widgets.HTML(), "labkit-chat-status")

        self.upload.observe(self.on_upload, names="value")
        self.send_button.on_click(self.on_send)
        self.clear_button.on_click(self.on_clear)

        header = widgets.HTML(f"<b>{html.escape(title or 'InternVL2 chat')}</b> "
                              f"<small>{html.escape(engine.description)}</small>")
        sliders = widgets.HBox([self.temperature, self.top_p, self.max_tokens],
                               layout=widgets.Layout(flex_flow="row wrap"))
        buttons = widgets.HBox([self.send_button, self.clear_button, self.show_prompt])
        super().__init__([header, widgets.HBox([self.upload, self.preview]), self.history_view,
                          self.reply, self.error, self.input, buttons, sliders, self.prompt_view, self.status])
        self.add_class("labkit-chat")
        self._set_status("Ready. Upload a picture (optional), type a question, press Send.")

    # -- showing things -------------------------------------------------------------------
    def _set_status(self, text):
        self.status.value = f"<small>{html.escape(text)}</small>"

    def _set_error(self, text):
        self.error.value = error_html(text)

    def _set_reply(self, question, text):
        """The turn being written, with a cursor; it moves into the history once it is complete."""
        self.reply.value = _turn_html(question, f"{text} ▌", "labkit-chat-pending")

    def _show_history(self):
        self.history_view.value = "".join(_turn_html(q, a) for q, a in self.session.history)

    def _settings(self) -> Sampling:
        return Sampling(int(self.max_tokens.value), float(self.temperature.value), float(self.top_p.value))

    # -- the callbacks --------------------------------------------------------------------
    def on_upload(self, change=None):
        """A picture arrived: check it, show a preview, and keep it for the conversation."""
        try:
            upload = uploaded_file(self.upload.value)
            if upload is None:
                return
            name, data = upload
            try:
                cleared = self.session.set_image(data)
            except ChatInputError as err:
                self._set_error(f"{name}: {err}")
                return
            self._set_error("")
            image = self.session.picture.image
            self.preview.value = png_thumbnail(image, PREVIEW_PIXELS)
            self.preview.layout.display = None
            tiling = self.session.engine.tiling
            detail = ""
            if tiling is not None:
                tiles = tiling.count_tiles(image.width, image.height)
                detail = f", {tiles} tile(s) -> {tiles * tiling.tokens_per_tile} image tokens"
            note = " New picture, so a new conversation starts." if cleared else ""
            self._show_history()
            self._set_status(f"Picture {name}: {image.width}x{image.height}{detail}.{note}")
        except Exception as err:  # never a dead cell
            self._fail(err)

    def on_send(self, button=None):
        """Send the typed question; stream the answer into the reply area, then into the history."""
        question = self.input.value
        self._set_error("")
        try:
            check_question(question)
            self.session.settings = self._settings()
            if self.show_prompt.value:
                prompt = self.session.prompt(question)
                self.prompt_view.value = f"<pre>{html.escape(prompt)}</pre>"
            else:
                self.prompt_view.value = ""
        except ChatInputError as err:
            self._set_error(str(err))
            return
        except Exception as err:
            self._fail(err)
            return
        self.input.value = ""
        self.send_button.disabled = True
        self._set_status("Writing…")
        started, answer = time.perf_counter(), ""
        try:
            self._set_reply(question, "")
            for piece in self.session.stream(question):
                answer += piece
                self._set_reply(question, answer)
            self.reply.value = ""
            self._show_history()
            self._set_status(f"Answered in {time.perf_counter() - started:.1f} s "
                             f"({len(self.session.history)} turn(s) so far).")
        except ChatInputError as err:
            self.input.value, self.reply.value = question, ""  # give the question back, to fix and resend
            self._set_error(str(err))
        except Exception as err:
            self.input.value, self.reply.value = question, ""
            self._fail(err)
        finally:
            self.send_button.disabled = False

    def on_clear(self, button=None):
        """Start a new conversation about the same picture."""
        self.session.clear(keep_image=True)
        self.reply.value = self.prompt_view.value = ""
        self._set_error("")
        self._show_history()
        self._set_status("Cleared: a new conversation (the picture stays; upload another to change it).")

    def _fail(self, err):
        self.last_exception = err
        self._set_error(f"Something went wrong: {type(err).__name__}: {err}. The cell still works; "
                        "try again, or check the model folder.")
        self._set_status("Failed.")
