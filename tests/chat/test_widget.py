"""labkit.chat.widget.ChatCell driven headlessly: set widget values, press buttons, read the areas.

The side-by-side cell, labkit.chat.compare.CompareCell, has its own tests in tests/chat/test_compare.py.

A real-browser test selects the same parts by their CSS classes, so those are checked too.
"""
from __future__ import annotations

import datetime
import html
import io

import pytest

from helpers import failing_engine, noise_image
from labkit.chat import Sampling, TransformersEngine
from labkit.chat.widget import ChatCell

CSS = {
    "upload": "labkit-chat-upload", "preview": "labkit-chat-preview", "input": "labkit-chat-input",
    "send_button": "labkit-chat-send", "clear_button": "labkit-chat-clear",
    "temperature": "labkit-chat-temperature", "top_p": "labkit-chat-top-p",
    "max_tokens": "labkit-chat-max-tokens", "show_prompt": "labkit-chat-show-prompt",
    "prompt_view": "labkit-chat-prompt", "history_view": "labkit-chat-history", "reply": "labkit-chat-reply",
    "error": "labkit-chat-error", "status": "labkit-chat-status",
}


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return TransformersEngine(tiny_checkpoint)


@pytest.fixture
def cell(engine):
    return ChatCell(engine, Sampling(max_new_tokens=12))


def upload(cell, data, name="dish.png", mime="image/png"):
    """What the browser does: the FileUpload's value becomes the chosen file."""
    cell.upload.value = ({"name": name, "type": mime, "size": len(data), "content": memoryview(data),
                          "last_modified": datetime.datetime.now(datetime.timezone.utc)},)


def png(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def send(cell, question):
    cell.input.value = question
    cell.send_button.click()


def test_every_part_has_its_css_class(cell):
    assert "labkit-chat" in cell._dom_classes
    for attribute, css_class in CSS.items():
        assert css_class in getattr(cell, attribute)._dom_classes, attribute


def test_upload_shows_a_preview_and_the_tile_count(cell):
    assert cell.preview.layout.display == "none"
    upload(cell, png(noise_image(192, 64)))
    assert bytes(cell.preview.value).startswith(b"\x89PNG") and cell.preview.layout.display is None
    assert "192x64" in cell.status.value and "4 tile(s) -&gt; 64 image tokens" in cell.status.value
    assert cell.error.value == ""


def test_send_streams_the_reply_fills_history_and_clears_the_input(cell, engine):
    image = noise_image(192, 64)
    upload(cell, png(image))
    updates = []
    cell.reply.observe(lambda change: updates.append(change["new"]), names="value")
    send(cell, "这是什么菜？")
    expected = engine.ask("这是什么菜？", image, settings=Sampling(max_new_tokens=12))
    writing = [u for u in updates if "▌" in u]
    assert len(writing) > 2  # the reply area changed while the answer was being written
    assert "这是什么菜？" in writing[-1] and html.escape(expected) + " ▌" in writing[-1]
    assert cell.reply.value == ""  # done: the turn moved into the history
    assert html.escape(expected) in cell.history_view.value
    assert cell.input.value == ""
    assert cell.error.value == ""
    assert "这是什么菜？" in cell.history_view.value and "&lt;image&gt;" not in cell.history_view.value
    assert cell.session.history == [("<image>\n这是什么菜？", expected)]
    assert not cell.send_button.disabled

    send(cell, "它是哪里的？")
    assert len(cell.session.history) == 2
    assert cell.history_view.value.count("labkit-chat-turn") == 2


def answers_shown(cell) -> int:
    return (cell.history_view.value + cell.reply.value).count('class="labkit-chat-answer"')


def test_every_turn_shows_once_the_newest_included(cell, engine):
    upload(cell, png(noise_image(64, 64)))
    for turns, question in enumerate(("这是什么菜？", "它是哪里的？", "再说一遍"), start=1):
        send(cell, question)
        assert answers_shown(cell) == turns, f"after {turns} turn(s) the cell shows {answers_shown(cell)} answers"
        assert cell.history_view.value.count(html.escape(question)) == 1
    newest = cell.session.history[-1][1]
    assert cell.history_view.value.endswith(f"<b>答</b> {html.escape(newest)}</div></div>")


def test_slider_labels_are_shown_whole(cell):
    for slider in (cell.temperature, cell.top_p, cell.max_tokens):
        assert slider.style.description_width == "initial", slider.description


def test_sliders_and_prompt_view_reach_the_engine(cell):
    cell.temperature.value, cell.top_p.value, cell.max_tokens.value = 0.7, 0.9, 5
    cell.show_prompt.value = True
    upload(cell, png(noise_image(192, 64)))
    send(cell, "这是什么菜？")
    assert cell.session.settings == Sampling(max_new_tokens=5, temperature=0.7, top_p=0.9)
    assert "&lt;IMG_CONTEXT&gt;×64" in cell.prompt_view.value
    assert "这是什么菜？&lt;|im_end|&gt;" in cell.prompt_view.value


def test_empty_question_shows_an_error_and_nothing_else_changes(cell):
    send(cell, "   ")
    assert "empty" in cell.error.value
    assert cell.session.history == [] and cell.reply.value == ""


def test_bad_uploads_show_an_error_and_the_cell_stays_usable(cell, engine):
    good = noise_image(64, 64)
    upload(cell, png(good))
    upload(cell, "肠粉是广东的早点。".encode("utf-8"), name="notes.txt", mime="text/plain")
    assert "notes.txt" in cell.error.value and "not an image" in cell.error.value
    corrupt = png(noise_image(128, 128))[:300]
    upload(cell, corrupt, name="cut.png")
    assert "cut.png" in cell.error.value and ("corrupt" in cell.error.value or "truncated" in cell.error.value)
    huge = io.BytesIO()
    from PIL import Image

    Image.new("L", (8000, 6000)).save(huge, format="PNG")
    upload(cell, huge.getvalue(), name="huge.png")
    assert "huge.png" in cell.error.value and "above the limit" in cell.error.value
    # the earlier good picture is still the one in use, and sending works
    send(cell, "这是什么菜？")
    assert cell.error.value == ""
    assert cell.session.history[0][1] == engine.ask("这是什么菜？", good, settings=Sampling(max_new_tokens=12))


def test_new_picture_starts_a_new_conversation(cell):
    upload(cell, png(noise_image(64, 64)))
    send(cell, "这是什么菜？")
    upload(cell, png(noise_image(128, 64, seed=3)), name="other.png")
    assert cell.session.history == [] and "new conversation" in cell.status.value
    assert cell.history_view.value == ""


def test_clear_forgets_the_turns_but_keeps_the_picture(cell):
    upload(cell, png(noise_image(64, 64)))
    send(cell, "这是什么菜？")
    cell.clear_button.click()
    assert cell.session.history == [] and cell.reply.value == "" and cell.history_view.value == ""
    assert cell.session.picture is not None
    send(cell, "再看看")
    assert cell.session.history[0][0] == "<image>\n再看看"




def test_a_model_crash_shows_in_the_error_area_and_the_cell_recovers():
    cell = ChatCell(failing_engine())
    send(cell, "这是什么菜？")  # must not raise
    assert "RuntimeError" in cell.error.value and "out of memory" in cell.error.value
    assert cell.reply.value == ""  # no half answer left with a writing cursor
    assert cell.input.value == "这是什么菜？"  # the question comes back, to resend
    assert cell.session.history == [] and not cell.send_button.disabled
    cell.send_button.click()
    assert cell.error.value == "" and cell.session.history == [("这是什么菜？", "半个答案")]
