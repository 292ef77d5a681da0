"""The chat cell of notebook 02 in a real browser: JupyterLab, Chromium, a person's clicks.

What it does, as a student would: open ``02_baseline_chat.ipynb`` (on the tiny base model, with
the test's own run and cache folders injected the papermill way), Run All, pick a food picture
with the chat cell's *Picture* button, type a question, press *Send*, watch the answer being
written, ask a follow-up; then pick a text file named ``.jpg`` and check that the cell says
what is wrong and still answers the next question.

What it checks: each answer the browser shows equals what the same engine answers headlessly,
in this test process, for the same picture, questions and greedy settings - so the upload, the
kernel round trip and the streamed display lose or change nothing. Screenshots of the chat cell
go to ``runs/test-artifacts/`` (see docs/browser-tests.md).

Run only these tests with ``./lab test -m browser``; they skip when ``/usr/bin/chromium`` is
missing.
"""
from __future__ import annotations

import contextlib
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

# Records every text the reply area shows, so the test can see the answer being streamed.
WATCH_REPLY_JS = """
(element) => {
    window.labkitReplyTexts = [];
    const area = element.querySelector('.widget-html-content') || element;
    new MutationObserver(() => window.labkitReplyTexts.push(area.textContent))
        .observe(area, {childList: true, subtree: true, characterData: true});
}
"""


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


@pytest.fixture
def notebook_02(tmp_path, base_model_dir):  # built first, so the notebook finds it
    """Notebook 02 open in Chromium in a JupyterLab of its own; everything stopped afterwards.

    Yields (page, NotebookPage, run_dir). A full-page screenshot and the server log are saved as
    artifacts at the end, pass or fail.
    """
    root, run_dir = tmp_path / "lab-root", tmp_path / "run"
    root.mkdir()
    parameterized_notebook(NOTEBOOK, root / NOTEBOOK.name, {
        "run_dir": str(run_dir), "cache_dir": str(shared_cache()), "device": "cpu", "backend": "transformers",
    })
    with JupyterLab(root, tmp_path / "home") as lab:
        try:
            with chromium(tmp_path / "chromium-profile") as browser:
                page = browser.new_page()
                try:
                    yield page, NotebookPage(page, lab, NOTEBOOK.name).open(OPEN_TIMEOUT_S), run_dir
                finally:
                    with contextlib.suppress(Exception):  # a broken page must not hide the test's own error
                        page.screenshot(path=str(tmp_path / "jupyterlab-page.png"), full_page=True, timeout=30_000)
                        save_artifact(tmp_path / "jupyterlab-page.png")
        finally:
            lab.stop()
            if lab.log_path.is_file():
                save_artifact(lab.log_path)
    assert not lab.forced_stops, f"JupyterLab had to be stopped by force: {lab.forced_stops}"
    assert "restarting kernel" not in lab.log_path.read_text(encoding="utf-8"), "the kernel died during the test"


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
        """Type, press Send, wait until turn ``turn`` is answered; (answer, texts seen while writing)."""
        self.part("reply").evaluate(WATCH_REPLY_JS)
        self.part("input").locator("textarea").fill(question)
        self.part("send").click()
        self.part("status").filter(has_text=re.compile(rf"Answered in .*\({turn} turn\(s\) so far\)")).wait_for(
            timeout=ANSWER_TIMEOUT_S * 1000)
        reply = self.text("reply")
        assert reply.startswith("答 ") and "▌" not in reply, f"the reply area did not finish: {reply!r}"
        return reply.removeprefix("答 "), self.page.evaluate("window.labkitReplyTexts")

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
