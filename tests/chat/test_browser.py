"""The chat cells in a real browser: JupyterLab, Chromium, a person's clicks.

The chat cell of notebook 02. What it does, as a student would: open ``02_baseline_chat.ipynb`` (on the tiny base model, with
the test's own run and cache folders injected the papermill way), Run All, pick a food picture
with the chat cell's *Picture* button, type a question, press *Send*, watch the answer being
written, ask a follow-up; then pick a text file named ``.jpg`` and check that the cell says
what is wrong and still answers the next question.

What it checks: each answer the browser shows equals what the same engine answers headlessly,
in this test process, for the same picture, questions and greedy settings - so the upload, the
kernel round trip and the streamed display lose or change nothing; every turn shows once, and
the sliders' labels are shown whole.

The side-by-side cell (labkit.chat.compare), in a small notebook the test writes: two tiny
models in two folders (the committed base model and a random checkpoint, or the folder named by
``$LABKIT_TEST_TUNED_MODEL``), a gallery of the food set's test pictures. Pick 肠粉 in the gallery
and ask; upload a picture of another dish and ask; upload a text file named ``.jpg``, which is
refused, and ask again. Both columns must show what the two engines answer headlessly.

Screenshots go to ``runs/test-artifacts/`` (see docs/browser-tests.md).

Run only these tests with ``./lab test -m browser``; they skip when ``/usr/bin/chromium`` is
missing.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import psutil
import pytest

from browser_support import (
    JupyterLab,
    NotebookPage,
    chromium,
    chromium_missing_reason,
    cjk_font_missing_reason,
    code_notebook,
    end_processes,
    parameterized_notebook,
    save_artifact,
)
from helpers import shared_cache

from labkit.fileio import REPO_ROOT


NOTEBOOK = REPO_ROOT / "notebooks" / "02_baseline_chat.ipynb"
DISH = "肠粉"
# Two turns, then one more after the bad upload.
QUESTIONS = ("图中的菜是什么？", "它是怎么做的？", "再说一遍，这是什么菜？")

# Bounded, but generous: the machine's two cores are shared with other work.
OPEN_TIMEOUT_S = 240
RUN_ALL_TIMEOUT_S = 600
ANSWER_TIMEOUT_S = 300

STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"

# Records every answer text an area shows, so the test can see the answer being streamed.
WATCH_JS = """
(element, [name, answer]) => {
    window[name] = [];
    const area = element.querySelector('.widget-html-content') || element;
    const read = () => { const found = answer ? area.querySelector(answer) : area; return found ? found.textContent : ''; };
    new MutationObserver(() => window[name].push(read()))
        .observe(area, {childList: true, subtree: true, characterData: true});
}
"""

# A widget label as shown: its text, and whether the box is narrower than the text (cut to "...").
LABEL_JS = """
(element) => {
    const label = element.querySelector('.widget-label');
    return [label.textContent, label.scrollWidth > label.clientWidth];
}
"""

COMPARE_NOTEBOOK = "compare.ipynb"
COMPARE_MAX_NEW_TOKENS = 24
COMPARE_PICK = "肠粉"


def in_a_browser(test):
    """Mark a browser test: picked by ``-m browser``, also ``slow``, skipped without Chromium."""
    reason = chromium_missing_reason()
    skip_without_chromium = pytest.mark.skipif(reason is not None, reason=str(reason))
    for mark in (pytest.mark.browser, pytest.mark.slow, skip_without_chromium):
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def food_picture(tmp_path_factory) -> Path:
    """A test picture of 肠粉 from the course's own food data (built in the shared test cache)."""
    from labkit.course.workspace import Workspace

    return Workspace(tmp_path_factory.mktemp("picture-run"), shared_cache()).first_picture_of(DISH)


@pytest.fixture(scope="module")
def expected_answers(base_model_dir, food_picture):
    """What the engine answers headlessly, with the chat cell's default (greedy) settings.

    Three turns about the same picture; the third follows the first two, as in the browser,
    where the bad upload in between changes neither the picture nor the history. Also the
    number of streamed pieces of each answer, to know whether streaming can be seen.
    """
    from labkit.chat import Sampling, TransformersEngine

    engine = TransformersEngine(base_model_dir)  # what notebook 02 builds on a CPU
    settings = Sampling()  # the chat cell's sliders start at these values
    assert settings.greedy, "the comparison needs greedy decoding (temperature 0)"
    picture = food_picture.read_bytes()  # the bytes the browser uploads
    answers, pieces, history = [], [], []
    for question in QUESTIONS:
        streamed = list(engine.stream(question, picture, history, settings))
        answer, history = engine.chat(question, picture, history, settings)
        assert "".join(streamed) == answer
        answers.append(answer)
        pieces.append(len(streamed))
    return answers, pieces


@contextlib.contextmanager
def notebook_in_lab(root: Path, name: str, tmp_path: Path, artifact_prefix: str = ""):
    """Notebook ``root/name`` open in Chromium in a JupyterLab of its own; everything stopped afterwards.

    Yields (page, NotebookPage). A full-page screenshot and the server log are saved as
    artifacts at the end, pass or fail.
    """
    with JupyterLab(root, tmp_path / "home") as lab:
        try:
            with chromium(tmp_path / "chromium-profile") as browser:
                page = browser.new_page()
                try:
                    yield page, NotebookPage(page, lab, name).open(OPEN_TIMEOUT_S)
                finally:
                    with contextlib.suppress(Exception):  # a broken page must not hide the test's own error
                        shot = tmp_path / f"{artifact_prefix}jupyterlab-page.png"
                        page.screenshot(path=str(shot), full_page=True, timeout=30_000)
                        save_artifact(shot)
        finally:
            lab.stop()
            if lab.log_path.is_file():
                save_artifact(lab.log_path, f"{artifact_prefix}jupyterlab.log")
    assert not lab.forced_stops, f"JupyterLab had to be stopped by force: {lab.forced_stops}"
    assert "restarting kernel" not in lab.log_path.read_text(encoding="utf-8"), "the kernel died during the test"


@pytest.fixture
def notebook_02(tmp_path, base_model_dir):  # built first, so the notebook finds it
    """Notebook 02 open in the browser: yields (page, NotebookPage, run_dir)."""
    root, run_dir = tmp_path / "lab-root", tmp_path / "run"
    root.mkdir()
    parameterized_notebook(NOTEBOOK, root / NOTEBOOK.name, {
        "run_dir": str(run_dir), "cache_dir": str(shared_cache()), "device": "cpu", "backend": "transformers",
    })
    with notebook_in_lab(root, NOTEBOOK.name, tmp_path) as (page, notebook):
        yield page, notebook, run_dir


class ChatCellDriver:
    """The chat cell in the page, by its CSS classes (labkit/chat/widget.py gives each part one)."""

    def __init__(self, page):
        self.page = page
        self.cell = page.locator(".jp-OutputArea-output .jupyter-widgets.labkit-chat")

    def part(self, name):
        return self.cell.locator(f".labkit-chat-{name}")

    def text(self, name) -> str:
        """The text of a part exactly as the DOM holds it (``textContent``: no whitespace folding)."""
        return self.part(name).locator(".widget-html-content").text_content()

    def upload(self, path: Path):
        """Click *Picture* and choose ``path`` in the file dialog, as a person does."""
        with self.page.expect_file_chooser() as chooser:
            self.part("upload").click()
        chooser.value.set_files(str(path))

    def ask(self, question: str, turn: int) -> tuple[str, list[str]]:
        """Type, press Send, wait until turn ``turn`` is answered; (answer, texts seen while writing).

        Once written, the answer is the newest turn of the history, and the reply area is empty.
        """
        self.part("reply").evaluate(WATCH_JS, ["labkitReplyTexts", ".labkit-chat-answer"])
        self.part("input").locator("textarea").fill(question)
        self.part("send").click()
        self.part("status").filter(has_text=re.compile(rf"Answered in .*\({turn} turn\(s\) so far\)")).wait_for(
            timeout=ANSWER_TIMEOUT_S * 1000)
        assert self.text("reply") == "", f"the reply area still shows {self.text('reply')!r}"
        shown = self.cell.locator(".labkit-chat-answer").count()
        assert shown == turn, f"after {turn} turn(s) the cell shows {shown} answers: each turn must show once"
        return self.history()[-1][1], self.page.evaluate("window.labkitReplyTexts")

    def slider_label(self, name) -> tuple[str, bool]:
        """(the label's text, whether it is cut off)."""
        return tuple(self.part(name).evaluate(LABEL_JS))

    def history(self) -> list[tuple[str, str]]:
        turns = self.part("history").locator(".labkit-chat-turn")
        return [(turn.locator(".labkit-chat-question").text_content().removeprefix("问 "),
                 turn.locator(".labkit-chat-answer").text_content().removeprefix("答 "))
                for turn in turns.all()]

    def screenshot(self, path: Path) -> Path:
        if cjk_font_missing_reason():
            warnings.warn(cjk_font_missing_reason())
        self.cell.scroll_into_view_if_needed()
        self.cell.screenshot(path=str(path))
        save_artifact(path)
        return path


def assert_streamed(texts: list[str], answer: str, pieces: int):
    """The reply area showed the answer growing (with the ▌ cursor) before it showed it whole."""
    partial = [t.removeprefix("答 ").removesuffix(" ▌") for t in texts if t.endswith("▌")]
    assert partial, f"the reply area never showed a writing cursor; it showed {texts!r}"
    if pieces > 1:  # an answer of one piece has nothing in between to show
        growing = [p for p in partial if p and answer.startswith(p) and p != answer]
        assert growing, f"no partial answer was shown before the whole {answer!r}; the area showed {texts!r}"


@in_a_browser
def test_chat_cell_in_jupyterlab(notebook_02, expected_answers, food_picture, tmp_path):
    page, notebook, run_dir = notebook_02
    answers, pieces = expected_answers

    started = time.monotonic()
    notebook.run_all()
    notebook.wait_until_all_cells_ran(RUN_ALL_TIMEOUT_S)
    assert (run_dir / "baseline.json").is_file(), "Run All did not reach the last cell of notebook 02"
    chat = ChatCellDriver(page)
    chat.cell.wait_for(timeout=OPEN_TIMEOUT_S * 1000)
    # The sliders start greedy, as expected_answers assumes.
    assert chat.part("temperature").locator(".widget-readout").inner_text() == "0.00"
    for name, label in (("temperature", "temperature"), ("top-p", "top_p"), ("max-tokens", "max tokens")):
        assert chat.slider_label(name) == (label, False), f"the {label} slider's label is cut off"
    ran_s = time.monotonic() - started

    # A food picture through the Picture button: preview and tile count appear.
    chat.upload(food_picture)
    picked = re.compile(rf"Picture {re.escape(food_picture.name)}: \d+x\d+, \d+ tile")
    chat.part("status").filter(has_text=picked).wait_for()
    chat.part("preview").and_(page.locator("img[src^='blob:']")).wait_for(state="visible")
    assert chat.text("error") == ""

    # Two turns: each streamed answer equals the headless one; the history shows both turns.
    for turn, question in enumerate(QUESTIONS[:2], start=1):
        answer, seen = chat.ask(question, turn)
        assert answer, f"turn {turn}: the reply is empty"
        assert answer == answers[turn - 1], f"turn {turn}: browser {answer!r}, engine {answers[turn - 1]!r}"
        # The kernel cleared the input box: the value went there and back.
        assert chat.part("input").locator("textarea").input_value() == ""
        assert_streamed(seen, answer, pieces[turn - 1])
    assert chat.history() == list(zip(QUESTIONS[:2], answers[:2]))
    assert chat.text("error") == ""
    chat.screenshot(tmp_path / "chat-cell.png")

    # A text file named .jpg: a clear message names the file; picture and history stay.
    bad = tmp_path / "not-a-picture.jpg"
    bad.write_text("These are words, not pixels.\n", encoding="utf-8")
    chat.upload(bad)
    chat.part("error").filter(has_text="not-a-picture.jpg").wait_for()
    message = chat.text("error")
    assert "is not an image" in message and "check that the file is really a picture" in message, message
    chat.screenshot(tmp_path / "chat-cell-bad-upload.png")

    # ...and the cell still works: the next question is answered about the same picture.
    answer, _ = chat.ask(QUESTIONS[2], 3)
    assert answer == answers[2], f"after the bad upload: browser {answer!r}, engine {answers[2]!r}"
    assert chat.text("error") == ""
    assert chat.history() == list(zip(QUESTIONS, answers))
    chat.screenshot(tmp_path / "chat-cell-after-bad-upload.png")
    print(f"notebook 02 ran in {ran_s:.0f} s; chat in {time.monotonic() - started - ran_s:.0f} s")


@pytest.fixture(scope="module")
def tuned_model_dir(tiny_checkpoint) -> Path:
    """The "tuned" side: ``$LABKIT_TEST_TUNED_MODEL`` (a real fine-tune, for the docs screenshot), else a
    random tiny checkpoint, so the two columns differ."""
    return Path(os.environ.get("LABKIT_TEST_TUNED_MODEL") or tiny_checkpoint).resolve()


@pytest.fixture(scope="module")
def compare_pictures(tmp_path_factory):
    """(annotation, image folder, the gallery, a test picture of another dish that is not in the gallery)."""
    from labkit.chat.compare import dish_gallery
    from labkit.course.workspace import Workspace

    workspace = Workspace(tmp_path_factory.mktemp("compare-run"), shared_cache())
    data = workspace.data()
    annotation, folder = data["food"]["test"], data["image_folder"]
    gallery = dish_gallery(annotation, folder)
    other = next(folder / s.image for s in workspace.samples() if s.dish not in (None, COMPARE_PICK)
                 and folder / s.image not in gallery.values())
    return annotation, folder, gallery, other


@pytest.fixture(scope="module")
def compare_expected(base_model_dir, tuned_model_dir, compare_pictures):
    """What the two engines answer headlessly, picture by picture (path -> {side: answer})."""
    from labkit.chat import Sampling, TransformersEngine
    from labkit.chat.compare import DEFAULT_QUESTION

    engines = {"base": TransformersEngine(base_model_dir), "tuned": TransformersEngine(tuned_model_dir)}
    _, _, gallery, other = compare_pictures
    settings = Sampling(max_new_tokens=COMPARE_MAX_NEW_TOKENS)
    return {path: {side: engine.ask(DEFAULT_QUESTION, path.read_bytes(), settings=settings)
                   for side, engine in engines.items()}
            for path in (gallery[COMPARE_PICK], other)}


@pytest.fixture
def compare_notebook(tmp_path, base_model_dir, tuned_model_dir, compare_pictures):
    """A notebook of the test's own with the side-by-side cell, open in the browser: yields the page."""
    annotation, folder, _, _ = compare_pictures
    root = tmp_path / "lab-root"
    root.mkdir()
    code_notebook(root / COMPARE_NOTEBOOK, [
        f"base_dir, tuned_dir = {str(base_model_dir)!r}, {str(tuned_model_dir)!r}\n"
        f"annotation, image_folder = {str(annotation)!r}, {str(folder)!r}",
        "from labkit.chat import compare\n"
        "compare.compare_cell(base_dir, tuned_dir, gallery=compare.dish_gallery(annotation, image_folder),\n"
        f"                     device='cpu', max_new_tokens={COMPARE_MAX_NEW_TOKENS})",
    ])
    with notebook_in_lab(root, COMPARE_NOTEBOOK, tmp_path, artifact_prefix="compare-") as (page, notebook):
        yield page, notebook


class CompareCellDriver(ChatCellDriver):
    """The side-by-side cell in the page (labkit/chat/compare.py gives each part a CSS class)."""

    def __init__(self, page):
        self.page = page
        self.cell = page.locator(".jp-OutputArea-output .jupyter-widgets.labkit-compare")

    def part(self, name):
        return self.cell.locator(f".labkit-compare-{name}")

    def answer(self, side) -> str:
        return self.part(side).locator(".labkit-compare-answer .widget-html-content").text_content()

    def pick(self, label: str):
        self.part("pick").filter(has_text=re.compile(rf"^{re.escape(label)}$")).click()
        self.part("status").filter(has_text=f"Picture {label} (").wait_for()

    def ask(self) -> tuple[dict, dict]:
        """Press 提问 Ask; wait until both columns answered: ({side: answer}, {side: texts seen while writing})."""
        for side in ("base", "tuned"):
            self.part(side).locator(".labkit-compare-answer").evaluate(WATCH_JS, [f"labkitSeen_{side}", ""])
        self.part("ask").click()
        self.part("status").filter(has_text="Both answered").wait_for(timeout=ANSWER_TIMEOUT_S * 1000)
        assert self.text("error") == "", self.text("error")
        sides = ("base", "tuned")
        return ({side: self.answer(side) for side in sides},
                {side: self.page.evaluate(f"window.labkitSeen_{side}") for side in sides})


@in_a_browser
def test_compare_cell_in_jupyterlab(compare_notebook, compare_pictures, compare_expected, tmp_path):
    page, notebook = compare_notebook
    _, _, gallery, other = compare_pictures
    notebook.run_all()
    notebook.wait_until_all_cells_ran(RUN_ALL_TIMEOUT_S)
    cell = CompareCellDriver(page)
    cell.cell.wait_for(timeout=OPEN_TIMEOUT_S * 1000)
    assert cell.part("pick").all_inner_texts() == list(gallery), "the gallery shows every dish, in table order"
    assert cell.part("base").locator("b").first.inner_text() == "基座模型 base"
    assert cell.part("tuned").locator("b").first.inner_text() == "微调后 tuned"
    assert cell.slider_label("max-tokens") == ("max tokens", False)

    # A gallery pick: both columns answer, each as its engine does headlessly, written while you watch.
    cell.pick(COMPARE_PICK)
    answers, seen = cell.ask()
    assert answers == compare_expected[gallery[COMPARE_PICK]]
    for side, texts in seen.items():
        assert any(t.endswith("▌") for t in texts), f"the {side} column never showed a writing cursor: {texts!r}"
    cell.screenshot(tmp_path / "compare-cell.png")

    # An upload of another dish's picture, through the file dialog.
    cell.upload(other)
    cell.part("status").filter(has_text=f"Picture {other.name}:").wait_for()
    cell.part("preview").and_(page.locator("img[src^='blob:']")).wait_for(state="visible")
    answers, _ = cell.ask()
    assert answers == compare_expected[other]

    # A text file named .jpg is refused with a clear message; the cell keeps the picture and answers again.
    bad = tmp_path / "not-a-picture.jpg"
    bad.write_text("These are words, not pixels.\n", encoding="utf-8")
    cell.upload(bad)
    cell.part("status").filter(has_text="not-a-picture.jpg refused").wait_for()
    message = cell.text("error")
    assert "not-a-picture.jpg" in message and "is not an image" in message and "keeps the picture" in message
    cell.screenshot(tmp_path / "compare-cell-bad-upload.png")
    answers, _ = cell.ask()
    assert answers == compare_expected[other]
    cell.screenshot(tmp_path / "compare-cell-after-bad-upload.png")


def test_end_processes_ends_a_process_that_ignores_sigterm():
    """The clean-up the browser test relies on: a process that will not stop is killed and named."""
    stubborn = subprocess.Popen([sys.executable, "-c", STUBBORN])
    process = psutil.Process(stubborn.pid)
    try:
        time.sleep(1.0)  # let it install its SIGTERM handler
        forced = end_processes([process], grace_s=0.5)
        assert not process.is_running()  # it would have slept two more minutes
        assert len(forced) == 1 and f"pid {stubborn.pid}" in forced[0]
    finally:
        if stubborn.poll() is None:
            stubborn.kill()


def test_end_processes_forces_nothing_when_processes_end_on_their_own():
    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    process = psutil.Process(quick.pid)
    assert end_processes([process], grace_s=30) == []
    assert not process.is_running()
