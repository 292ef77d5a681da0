"""Figures of the comparison: accuracy per dish, confusion matrices, a gallery of answers.

Each is written as a PNG atomically (`labkit.fileio.write_png`) and shown when in a notebook.
Dish names are drawn in Chinese when the machine has a CJK font, else as the table's pinyin keys.
"""
from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend needed

from labkit.fileio import write_png


def save_and_show(fig, path):
    """Save a figure atomically and show it when in a notebook."""
    path = write_png(fig, path)
    _show_in_notebook(path)
    return path


def _show_in_notebook(path):
    try:
        from IPython import get_ipython
        from IPython.display import Image as ShowImage, display
    except ImportError:
        return
    if get_ipython() is not None:
        display(ShowImage(filename=str(path)))


CJK_FONT_FILES = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",  # Debian's fonts-wqy-zenhei (./lab installs it)
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
)


def _cjk_font():
    """A font that can draw Chinese dish names, if the machine has one (else pinyin labels)."""
    from matplotlib import font_manager

    for path in CJK_FONT_FILES:
        if os.path.isfile(path):
            font_manager.fontManager.addfont(path)
            return font_manager.FontProperties(fname=path).get_name()
    return None


def _labels(names):
    """Dish names as axis labels: Chinese when a CJK font exists, else the table's pinyin keys."""
    from labkit.data.dishes import get_dish

    if _cjk_font():
        return list(names)
    return [get_dish(n).key if n in _dish_names() else n for n in names]


def _dish_names():
    from labkit.data.dishes import dish_names

    return set(dish_names())


def _font_kwargs():
    font = _cjk_font()
    return {"fontfamily": font} if font else {}


def accuracy_bars(base, tuned, path):
    """Per-dish accuracy of two `labkit.eval.evaluate.Report`s side by side; held-back dishes marked."""
    from labkit.data.dishes import is_held_back

    names = list(base.per_dish())
    tuned_dish = tuned.per_dish()
    base_acc = [r / t for r, t in base.per_dish().values()]
    tuned_acc = [tuned_dish[n][0] / tuned_dish[n][1] if n in tuned_dish else 0.0 for n in names]
    fig = Figure(figsize=(max(6, 0.7 * len(names) + 2), 3.6), dpi=100)
    ax = fig.add_subplot()
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], base_acc, width=0.4, label="base")
    ax.bar([i + 0.2 for i in x], tuned_acc, width=0.4, label="tuned")
    labels = [("* " if is_held_back(n) else "") + label for n, label in zip(names, _labels(names))]
    ax.set_xticks(list(x), labels, rotation=45, ha="right", **_font_kwargs())
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy per dish (* = held back from the base model)")
    ax.legend()
    fig.tight_layout()
    return save_and_show(fig, path)


def confusion_counts(report, names):
    """Rows: the dish shown; columns: the dish named (last column: no dish named)."""
    index = {n: i for i, n in enumerate(names)}
    counts = [[0] * (len(names) + 1) for _ in names]
    for answer in report.answers:
        if answer.expected in index:
            counts[index[answer.expected]][index.get(answer.named, len(names))] += 1
    return counts


def confusion_matrices(base, tuned, path):
    """Confusion matrices of the base and the tuned model: which dish each picture was taken for."""
    from labkit.data.dishes import dish_names

    names = [n for n in dish_names() if n in base.per_dish() or n in tuned.per_dish()]
    labels = _labels(names)
    fig = Figure(figsize=(2 * (0.45 * len(names) + 2), 0.45 * len(names) + 2), dpi=100)
    for ax, report, title in zip(fig.subplots(1, 2), (base, tuned), ("base", "tuned")):
        counts = confusion_counts(report, names)
        ax.imshow(counts, cmap="Blues")
        for r, row in enumerate(counts):
            for c, value in enumerate(row):
                if value:
                    ax.text(c, r, str(value), ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(names) + 1), labels + ["none"], rotation=90, fontsize=7, **_font_kwargs())
        ax.set_yticks(range(len(names)), labels, fontsize=7, **_font_kwargs())
        ax.set_xlabel("named by the model")
        ax.set_ylabel("shown in the picture")
        ax.set_title(f"{title} model")
    fig.tight_layout()
    return save_and_show(fig, path)


def gallery(base, tuned, image_folder, path, per_dish=1, max_pictures=12):
    """Test pictures with both models' answers, held-back dishes first."""
    from PIL import Image

    from labkit.data.dishes import is_held_back

    from labkit.eval.evaluate import paired

    chosen, seen = [], {}
    for before, after in sorted(paired(base, tuned), key=lambda pair: not is_held_back(pair[0].expected)):
        if seen.get(before.expected, 0) < per_dish:
            seen[before.expected] = seen.get(before.expected, 0) + 1
            chosen.append((before, after))
        if len(chosen) >= max_pictures:
            break
    cols = 4
    rows = max(1, -(-len(chosen) // cols))
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    font = _font_kwargs()
    for ax in axes:
        ax.axis("off")
    for ax, (before, after) in zip(axes, chosen):
        with Image.open(Path(image_folder) / before.image) as picture:
            ax.imshow(picture.convert("RGB"))
        ax.set_title(f"shows: {before.expected}\nbase: {before.named or '?'} | tuned: {after.named or '?'}",
                     fontsize=8, color="green" if after.correct else "red", **font)
    fig.tight_layout()
    return save_and_show(fig, path)
