"""Both models side by side: the same question about the same picture, two answers next to each other.

::

    from labkit.chat import compare
    compare.compare_cell(base_dir, tuned_dir, gallery=compare.dish_gallery(test, image_folder))

The cell is an ipywidgets ``VBox``: a gallery of test pictures (one thumbnail per dish, a button
with its Chinese name under each: click one to pick it), an upload for a picture of your own, the
question, *提问 Ask*, and two columns, 基座模型 base and 微调后 tuned. Ask streams the base
model's answer into its column, then the tuned model's into the other. Each ask is one fresh
question (no history), so the two answers differ only by the model.

Like :class:`labkit.chat.widget.ChatCell`, its callbacks are plain methods
(:meth:`CompareCell.on_pick`, :meth:`CompareCell.on_upload`, :meth:`CompareCell.on_ask`) that never
raise: a bad upload (not an image, corrupt, too many pixels) or a model that fails shows in the
red error area, and the cell keeps the picture it had and goes on answering.

CSS classes: ``labkit-compare`` (the cell), ``labkit-compare-gallery``, ``labkit-compare-pick``
(each dish's button), ``labkit-compare-upload``, ``labkit-compare-preview``,
``labkit-compare-input``, ``labkit-compare-ask``, ``labkit-compare-max-tokens``,
``labkit-compare-base`` and ``labkit-compare-tuned`` (the columns), ``labkit-compare-answer``
(the answer in each column), ``labkit-compare-error``, ``labkit-compare-status``.
"""
from __future__ import annotations

import html
import time
from pathlib import Path

import ipywidgets as widgets

from labkit.chat.inputs import ChatInputError, Sampling, check_question, read_image
from labkit.chat.widget import FULL_LABEL, PREVIEW_PIXELS, error_html, png_thumbnail, tagged, uploaded_file
from labkit.data.dishes import OPEN_QUESTIONS, dish_names

SIDES = {"base": "基座模型 base", "tuned": "微调后 tuned"}  # column key -> its label
THUMB_PIXELS = 80  # the gallery's square tiles
DEFAULT_QUESTION = OPEN_QUESTIONS[0]  # 图中的菜是什么？


def dish_gallery(annotation, image_folder) -> dict[str, Path]:
    """The first picture of each dish in an annotation file (e.g. the test split), by dish name.

    In the dish table's order, so the gallery reads the same in every run.
    """
    from labkit.data.build import load_samples

    first = {}
    for sample in load_samples(annotation):
        if sample.dish is not None:
            first.setdefault(sample.dish, Path(image_folder) / sample.image)
    if not first:
        raise ValueError(f"{annotation}: no sample's answer names a dish of the dish table "
                         "(labkit/data/dishes.py); give the food set's test split, data['food']['test'].")
    return {name: first[name] for name in dish_names() if name in first}


def compare_cell(base_dir, tuned_dir, gallery=None, device=None, max_new_tokens=64, server="", **cell_options):
    """A :class:`CompareCell` on the models in two folders: transformers engines on ``device``, or
    the two models served at ``server`` (``labkit deploy BASE TUNED`` on a GPU).

    Not LMDeploy in the kernel: two LMDeploy pipelines in one kernel would each reserve most of the
    GPU; ``labkit deploy`` serves both from one LMDeploy environment instead.
    """
    from labkit.chat.engine import make_engine

    options = {"server": server} if server else {"backend": "transformers"}
    if device is not None and not server:
        options["device"] = device
    base = make_engine(base_dir, **options)
    tuned = make_engine(tuned_dir, **options)
    return CompareCell(base, tuned, pictures=gallery, settings=Sampling(max_new_tokens=max_new_tokens),
                       **cell_options)


def _square_png(image, pixels: int) -> bytes:
    """The middle square of a picture, ``pixels`` wide, as PNG: a gallery of equal tiles."""
    from PIL import ImageOps

    return png_thumbnail(ImageOps.fit(image, (pixels, pixels)), pixels)


def _answer_html(text: str, writing: bool = False) -> str:
    cursor = " ▌" if writing else ""
    return f'<div style="white-space:pre-wrap">{html.escape(text)}{cursor}</div>'


class CompareCell(widgets.VBox):
    """The base and the tuned engine answer the same question about the same picture, side by side."""

    def __init__(self, base, tuned, pictures=None, question: str = DEFAULT_QUESTION,
                 settings: Sampling | None = None, title: str | None = None):
        """``pictures``: the gallery, ``{label: path}`` (see :func:`dish_gallery`) or a list of paths."""
        self.engines = {"base": base, "tuned": tuned}
        settings = settings or Sampling(max_new_tokens=64)
        self.temperature, self.top_p = settings.temperature, settings.top_p
        limits = [e.max_pixels for e in self.engines.values() if e.max_pixels is not None]
        self.max_pixels = min(limits) if limits else None
        self.picture, self.picture_name = None, ""  # the ImageInput both models see, and what to call it
        self.answers = {side: "" for side in SIDES}  # the last complete answers
        self.last_exception = None

        self.gallery = self._read_gallery(pictures)
        self.pick_buttons = {}
        items = []
        for label, picture in self.gallery.items():
            button = tagged(widgets.Button(description=label, tooltip=Path(picture.name).name,
                                           layout=widgets.Layout(width=f"{THUMB_PIXELS}px")), "labkit-compare-pick")
            button.on_click(lambda _, label=label: self.on_pick(label))
            self.pick_buttons[label] = button
            thumb = widgets.Image(value=_square_png(picture.image, THUMB_PIXELS), format="png",
                                  layout=widgets.Layout(width=f"{THUMB_PIXELS}px", height=f"{THUMB_PIXELS}px"))
            items.append(widgets.VBox([thumb, button]))
        self.gallery_box = tagged(widgets.HBox(items, layout=widgets.Layout(flex_flow="row wrap")),
                                  "labkit-compare-gallery")
        self.upload = tagged(widgets.FileUpload(accept="image/*", multiple=False, description="上传图片 Upload",
                                                layout=widgets.Layout(width="auto")), "labkit-compare-upload")
        self.preview = tagged(widgets.Image(format="png", layout=widgets.Layout(display="none")),
                              "labkit-compare-preview")
        self.input = tagged(widgets.Text(value=question, description="问题 question", style=FULL_LABEL,
                                         layout=widgets.Layout(width="60%")), "labkit-compare-input")
        self.ask_button = tagged(widgets.Button(description="提问 Ask", button_style="primary", icon="paper-plane"),
                                 "labkit-compare-ask")
        self.max_tokens = tagged(widgets.IntSlider(value=settings.max_new_tokens, min=1, max=1024,
                                                   description="max tokens", style=FULL_LABEL),
                                 "labkit-compare-max-tokens")
        self.answer_views = {side: tagged(widgets.HTML(), "labkit-compare-answer") for side in SIDES}
        self.columns = {}
        for side, label in SIDES.items():
            header = widgets.HTML(f"<b>{label}</b><br><small>{html.escape(self.engines[side].description)}</small>")
            column = widgets.VBox([header, self.answer_views[side]], layout=widgets.Layout(
                flex="1 1 0", border="1px solid #ccc", padding="6px", margin="2px"))
            self.columns[side] = tagged(column, f"labkit-compare-{side}")
        self.error = tagged(widgets.HTML(), "labkit-compare-error")
        self.status = tagged(widgets.HTML(), "labkit-compare-status")

        self.upload.observe(self.on_upload, names="value")
        self.ask_button.on_click(self.on_ask)
        header = widgets.HTML(f"<b>{html.escape(title or '微调前后对比 base vs tuned')}</b>")
        gallery_note = widgets.HTML("<small>测试图片：点菜名选图 (test pictures: click a name to pick)</small>")
        super().__init__([header, gallery_note, self.gallery_box, widgets.HBox([self.upload, self.preview]),
                          widgets.HBox([self.input, self.ask_button, self.max_tokens],
                                       layout=widgets.Layout(flex_flow="row wrap")),
                          widgets.HBox(list(self.columns.values())), self.error, self.status])
        self.add_class("labkit-compare")
        self._set_status("Pick a dish or upload a picture, then press 提问 Ask.")

    def _read_gallery(self, pictures) -> dict:
        if pictures is None:
            return {}
        if not isinstance(pictures, dict):
            pictures = {Path(path).stem: path for path in pictures}
        gallery = {}
        for label, path in pictures.items():
            try:
                gallery[str(label)] = read_image(Path(path), self.max_pixels)
            except (ChatInputError, OSError) as err:
                raise ChatInputError(f"gallery picture {label!r} ({path}): {err}") from err
        return gallery

    # -- showing things -------------------------------------------------------------------
    def _set_status(self, text):
        self.status.value = f"<small>{html.escape(text)}</small>"

    def _set_error(self, text):
        self.error.value = error_html(text)

    def _use_picture(self, picture, name, picked=None):
        """Both models see ``picture`` from now on; the old answers were about another one."""
        self.picture, self.picture_name = picture, name
        for label, button in self.pick_buttons.items():
            button.button_style = "info" if label == picked else ""
        self.preview.value = png_thumbnail(picture.image, PREVIEW_PIXELS // 2)
        self.preview.layout.display = None
        for view in self.answer_views.values():
            view.value = ""
        self._set_error("")
        self._set_status(f"Picture {name}: {picture.image.width}x{picture.image.height}. Press 提问 Ask.")

    # -- the callbacks --------------------------------------------------------------------
    def on_pick(self, label):
        """A dish of the gallery was clicked: both models will look at that picture."""
        try:
            self._use_picture(self.gallery[label], f"{label} ({Path(self.gallery[label].name).name})", picked=label)
        except Exception as err:  # never a dead cell
            self._fail(err)

    def on_upload(self, change=None):
        """A picture of one's own: checked, then used; a bad file is refused and the old picture stays."""
        try:
            upload = uploaded_file(self.upload.value)
            if upload is None:
                return
            name, data = upload
            try:
                picture = read_image(data, self.max_pixels)
            except ChatInputError as err:
                self._set_error(f"{name}: {err} The cell keeps the picture it had.")
                kept = f"still asking about {self.picture_name}" if self.picture else "no picture yet"
                self._set_status(f"Upload {name} refused; {kept}.")
                return
            self._use_picture(picture, name)
        except Exception as err:
            self._fail(err)

    def on_ask(self, button=None):
        """Ask both models the question about the picture: the base model first, then the tuned one."""
        self._set_error("")
        try:
            question = check_question(self.input.value)
            if self.picture is None:
                raise ChatInputError("No picture yet: click a dish in the gallery or upload a picture first.")
            settings = Sampling(int(self.max_tokens.value), self.temperature, self.top_p)
        except ChatInputError as err:
            self._set_error(str(err))
            return
        for view in self.answer_views.values():
            view.value = ""
        self.ask_button.disabled = True
        seconds = {}
        try:
            for side, label in SIDES.items():
                self._set_status(f"{label} is writing…")
                started, answer = time.perf_counter(), ""
                self.answer_views[side].value = _answer_html("", writing=True)
                try:
                    for piece in self.engines[side].stream(question, self.picture, None, settings):
                        answer += piece
                        self.answer_views[side].value = _answer_html(answer, writing=True)
                except Exception as err:
                    self.answer_views[side].value = ""
                    self._fail(err, label)
                    return
                self.answer_views[side].value = _answer_html(answer)
                self.answers[side] = answer
                seconds[side] = time.perf_counter() - started
            self._set_status(f"Both answered: base in {seconds['base']:.1f} s, tuned in {seconds['tuned']:.1f} s.")
        finally:
            self.ask_button.disabled = False

    def _fail(self, err, who=None):
        self.last_exception = err
        if isinstance(err, ChatInputError):
            self._set_error(str(err))
        else:
            where = f"{who} failed" if who else "Something went wrong"
            self._set_error(f"{where}: {type(err).__name__}: {err}. The cell still works; try again, "
                            "or check the model folder.")
        self._set_status("Failed.")
