"""labkit.chat.compare.CompareCell driven headlessly: pick, upload, ask, read both columns.

Two different tiny models, so the two answers can differ: the committed base model
(labkit/assets/base-tiny) and a fresh random checkpoint made by ``labkit checkpoint --tiny``.
The real-browser test of the same cell is in tests/chat/test_browser.py.
"""
from __future__ import annotations

import datetime
import html
import io
import json

import pytest
from PIL import Image

from helpers import failing_engine, noise_image
from labkit.chat import ChatInputError, Sampling, TransformersEngine
from labkit.chat.compare import SIDES, CompareCell, dish_gallery
from labkit.course.base_model import ASSET_DIR

SETTINGS = Sampling(max_new_tokens=12)
CSS = ("gallery", "pick", "upload", "preview", "input", "ask", "max-tokens", "base", "tuned", "answer",
       "error", "status")


@pytest.fixture(scope="module")
def engines(tiny_checkpoint):
    return TransformersEngine(ASSET_DIR), TransformersEngine(tiny_checkpoint)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gallery")
    paths = {}
    for seed, name in enumerate(("肠粉", "叉烧")):
        paths[name] = folder / f"{seed}.png"
        noise_image(128, 64, seed=seed).save(paths[name])
    return paths


@pytest.fixture
def cell(engines, pictures):
    return CompareCell(*engines, pictures=pictures, settings=SETTINGS)


def png(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def upload(cell, data, name="dish.png", mime="image/png"):
    """What the browser does: the FileUpload's value becomes the chosen file."""
    cell.upload.value = ({"name": name, "type": mime, "size": len(data), "content": memoryview(data),
                          "last_modified": datetime.datetime.now(datetime.timezone.utc)},)


def shown(cell, side) -> str:
    return cell.answer_views[side].value


def expected(engines, image, question="图中的菜是什么？"):
    return {side: engine.ask(question, image, settings=SETTINGS) for side, engine in zip(SIDES, engines)}


def test_every_part_has_its_css_class(cell):
    found = set()

    def walk(widget):
        found.update(c.removeprefix("labkit-compare-") for c in getattr(widget, "_dom_classes", ()))
        for child in getattr(widget, "children", ()):
            walk(child)

    walk(cell)
    assert "labkit-compare" in cell._dom_classes
    assert set(CSS) <= found, set(CSS) - found


def test_the_columns_are_labelled_and_the_gallery_shows_every_picture(cell):
    headers = {side: column.children[0].value for side, column in cell.columns.items()}
    assert "基座模型 base" in headers["base"] and "微调后 tuned" in headers["tuned"]
    assert cell.columns["base"] in cell.children[-3].children  # one row: the two columns side by side
    assert list(cell.pick_buttons) == ["肠粉", "叉烧"]
    thumbs = [item.children[0].value for item in cell.gallery_box.children]
    assert all(bytes(t).startswith(b"\x89PNG") for t in thumbs) and len(thumbs) == 2


def test_a_gallery_pick_gets_both_answers(cell, engines, pictures):
    cell.pick_buttons["叉烧"].click()
    assert cell.pick_buttons["叉烧"].button_style == "info" and cell.pick_buttons["肠粉"].button_style == ""
    assert "叉烧" in cell.status.value and cell.preview.layout.display is None
    updates = []
    cell.answer_views["tuned"].observe(lambda change: updates.append(change["new"]), names="value")
    cell.ask_button.click()
    want = expected(engines, Image.open(pictures["叉烧"]))
    assert want["base"] != want["tuned"], "the two tiny models should answer differently"
    for side in SIDES:
        assert html.escape(want[side]) in shown(cell, side) and "▌" not in shown(cell, side)
    assert cell.answers == want
    assert any("▌" in u for u in updates)  # the tuned answer was shown while being written
    assert cell.error.value == "" and "Both answered" in cell.status.value and not cell.ask_button.disabled


def test_an_upload_is_what_both_models_see(cell, engines):
    image = noise_image(192, 64, seed=7)
    cell.pick_buttons["肠粉"].click()
    upload(cell, png(image), name="mine.png")
    assert "mine.png: 192x64" in cell.status.value
    assert all(button.button_style == "" for button in cell.pick_buttons.values())
    cell.input.value = "这是什么菜？"
    cell.ask_button.click()
    assert cell.answers == expected(engines, image, "这是什么菜？")


def test_bad_uploads_are_refused_and_the_cell_still_answers(cell, engines, pictures):
    cell.pick_buttons["肠粉"].click()
    upload(cell, "肠粉是广东的早点。".encode("utf-8"), name="notes.txt", mime="text/plain")
    assert "notes.txt" in cell.error.value and "not an image" in cell.error.value
    assert "keeps the picture" in cell.error.value
    assert "notes.txt refused; still asking about 肠粉" in cell.status.value
    huge = io.BytesIO()
    Image.new("L", (8000, 6000)).save(huge, format="PNG")
    upload(cell, huge.getvalue(), name="huge.png")
    assert "huge.png" in cell.error.value and "above the limit" in cell.error.value
    cell.ask_button.click()  # still about the picked 肠粉 picture
    assert cell.error.value == ""
    assert cell.answers == expected(engines, Image.open(pictures["肠粉"]))


def test_asking_without_a_picture_or_question_says_what_to_do(cell):
    cell.ask_button.click()
    assert "No picture yet" in cell.error.value and cell.answers == {"base": "", "tuned": ""}
    cell.pick_buttons["肠粉"].click()
    cell.input.value = "  "
    cell.ask_button.click()
    assert "empty" in cell.error.value and shown(cell, "base") == ""




def test_a_model_crash_keeps_the_other_answer_and_the_cell_recovers(engines, pictures):
    cell = CompareCell(engines[0], failing_engine(), pictures=pictures, settings=SETTINGS)
    cell.pick_buttons["肠粉"].click()
    cell.ask_button.click()  # must not raise
    assert "微调后 tuned failed: RuntimeError" in cell.error.value and "out of memory" in cell.error.value
    assert shown(cell, "base") != "" and shown(cell, "tuned") == "" and not cell.ask_button.disabled
    cell.ask_button.click()
    assert cell.error.value == "" and cell.answers["tuned"] == "半个答案"


def test_dish_gallery_takes_the_first_picture_of_each_dish_in_table_order(tmp_path):
    records = [{"id": str(i), "image": f"{i}.png", "conversations": [
        {"from": "human", "value": "<image>\n图中的菜是什么？"}, {"from": "gpt", "value": f"图中的菜是{dish}。"}]}
        for i, dish in enumerate(("叉烧", "肠粉", "叉烧"))]
    annotation = tmp_path / "test.json"
    annotation.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    assert dish_gallery(annotation, tmp_path) == {"肠粉": tmp_path / "1.png", "叉烧": tmp_path / "0.png"}


def test_a_bad_gallery_picture_is_named(engines, tmp_path):
    bad = tmp_path / "cut.png"
    bad.write_bytes(png(noise_image(64, 64))[:100])
    with pytest.raises(ChatInputError, match=r"gallery picture '肠粉' \(.*cut.png\)"):
        CompareCell(*engines, pictures={"肠粉": bad})
