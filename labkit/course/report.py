"""The student's write-up (实验报告): Markdown and HTML built from one run folder, in Chinese and English.

    from labkit.course.report import write_writeup
    write_writeup("runs/20261201-215431")   # -> RUN/writeup/writeup.html, and RUN/writeup.zip

Each notebook leaves its results in the run folder (JSON files and PNG figures); this module
only reads them, so the write-up always shows what the notebooks really computed. It is ordered
by the lab's tasks (architecture, chat with the base model, XTuner fine-tune, conversion, before
and after), with the student's exercise answers under their task and the student's 心得 at the
end. Where a section needs something the run folder lacks, the write-up says so and names the
file: it is never left out silently, and a missing file never stops the write-up.

The write-up is one folder, ready to zip or to paste into a blog editor::

    RUN/writeup/
        writeup.md  writeup.html        Chinese
        writeup.en.md  writeup.en.html  English, from the same source
        figures/*.png                   the figures, referenced by relative paths
        evidence/                       the run's small result files, in the run folder's layout
    RUN/writeup.zip                     the folder above, zipped (what a student hands in)

``evidence/`` is what ``labkit grade`` reads from a zipped write-up: the JSON results, the
executed notebooks and mmengine's loss log, so a grader can recompute the accuracy from the raw
answers rather than trust a summary.

Where the student writes (心得 reflection): a Markdown cell tagged ``reflection`` in any of the
notebooks (the executed copies in ``RUN/notebooks/`` are read), or a ``notes.md`` in the run
folder. Both are used when both exist.

Every sentence lives once in ``TEXT`` with its Chinese and its English form; the Markdown is
turned into HTML by markdown-it-py (CommonMark plus tables; raw HTML in a student's note is
shown as text, not run).
"""
from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from labkit import fileio
from labkit.course.evidence import NOTES_FILE, RunFolder, exercise_answers, is_png, reflection
from labkit.course.writeup_text import text

WRITEUP_DIR = "writeup"
ZIP_NAME = "writeup.zip"
EVIDENCE_DIR = "evidence"
LANGUAGES = ("zh", "en")
STEMS = {"zh": "writeup", "en": "writeup.en"}

# Which notebook writes each file: what a "missing" note tells the student to run.
WRITTEN_BY = {
    "course.json": "labkit run", "exercises.json": "01 / 04",
    "architecture.json": "01", "figures/tiles.png": "01", "figures/data_flow.png": "01",
    "baseline.json": "02",
    "finetune.json": "03", "figures/loss.png": "03", "finetune/config.py": "03",
    "conversion.json": "04",
    "comparison.json": "05", "figures/accuracy.png": "05", "figures/confusion.png": "05",
    "figures/gallery.png": "05",
}
# The run's small files copied into evidence/ (globs, relative to the run folder).
EVIDENCE = ("course.json", "exercises.json", "architecture.json", "baseline.json", "finetune.json",
            "conversion.json", "comparison.json", NOTES_FILE, "notebooks/*.ipynb", "finetune/config.py",
            "finetune/result.json", "finetune/xtuner/*/vis_data/scalars.json")

# -- building one page ----------------------------------------------------------------------------
def _cell(value):
    """A value safe inside a Markdown table cell."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _fence(body, lang=""):
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{lang}", body.rstrip("\n"), fence]


@dataclass
class Page:
    """One language's write-up as it is built: Markdown lines, the figures used, what is missing."""

    run: RunFolder
    lang: str
    lines: list = field(default_factory=list)
    figures: list = field(default_factory=list)
    missing: list = field(default_factory=list)  # (section heading, what is missing)
    section: str = ""

    def t(self, key, **values):
        return text(key, self.lang, **values)

    def heading(self, key, level=2):
        self.section = self.t(key)
        self.lines += [f"{'#' * level} {self.section}", ""]

    def para(self, line):
        self.lines += [line, ""]

    def table(self, headers, rows):
        self.lines.append("| " + " | ".join(_cell(h) for h in headers) + " |")
        self.lines.append("|" + "---|" * len(headers))
        self.lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
        self.lines.append("")

    def code(self, body, lang=""):
        self.lines += _fence(body, lang) + [""]

    def lack(self, what, hint=None):
        """Say plainly, where the section stands, that ``what`` is missing, and remember it."""
        self.missing.append((self.section, what))
        self.para("> " + self.t("missing", what=what, hint=hint or ""))

    def lack_file(self, name):
        why = self.run.errors.get(name, "missing")
        hint = self.t("run_notebook", nb=WRITTEN_BY.get(name, "?"))
        what = f"`{name}`" if why == "missing" else f"`{name}`: {why}"
        self.lack(what, hint)

    def data(self, name):
        value = self.run.json(name)
        if value is None:
            self.lack_file(name)
        elif not isinstance(value, dict):
            self.lack(f"`{name}`: {fileio.json_kind(value)}, not an object", self.t("run_notebook", nb=WRITTEN_BY.get(name, "?")))
            value = None
        return value

    def need(self, data, name, key):
        """``data[key]`` or None, saying it is missing."""
        if key not in data or data[key] is None:
            self.lack(self.t("missing_key", file=name, field=key), self.t("run_notebook", nb=WRITTEN_BY.get(name, "?")))
            return None
        return data[key]

    def figure(self, name, alt_key):
        relative = f"figures/{name}"
        path = self.run.root / relative
        if not path.is_file():
            self.lack_file(relative)
        elif not is_png(path):
            self.lack(self.t("bad_png", file=relative), self.t("run_notebook", nb=WRITTEN_BY.get(relative, "?")))
        else:
            self.figures.append(path)
            self.para(f"![{self.t(alt_key)}]({relative})")


def _exercises(page, prefix):
    from labkit.course import exercises as framework

    notebook = page.run.notebook(prefix)
    module = framework.module_for(f"{prefix}_x.ipynb")
    if module is None:
        return
    results = framework.read_results(page.run.root) if (page.run.root / framework.RESULTS_FILE).is_file() else None
    answers = exercise_answers(notebook, module.EXERCISES)
    page.lines += [f"### {page.t('exercises')}", ""]
    if results is None:
        page.lack_file(framework.RESULTS_FILE)
    if notebook is None:
        page.lack(f"`notebooks/{prefix}_*.ipynb`", page.t("run_notebook", nb=prefix))
    for exercise in module.EXERCISES:
        result = (results or {}).get(exercise.id)
        if result is None:
            verdict = page.t("ex_unchecked")
        elif result.get("passed"):
            verdict = page.t("ex_passed")
        else:
            verdict = page.t("ex_failed", status=result.get("status", "?"))
        page.para(f"**{exercise.title}** · {verdict}")
        if exercise.id in answers:
            page.code(answers[exercise.id], "python")
        elif notebook is not None:
            page.para(page.t("ex_no_code", file=f"`notebooks/{notebook.name}`"))
        if result and result.get("message"):
            page.para(f"> {_cell(result['message'])}")


def _architecture(page):
    page.heading("arch")
    page.para(page.t("arch_pattern"))
    arch = page.data("architecture.json")
    if arch:
        picture = arch.get("picture") or ["?", "?"]
        page.para(page.t("arch_picture", dish=arch.get("dish", "?"), w=picture[0], h=picture[1],
                         tiles=arch.get("tiles", "?")))
    page.figure("tiles.png", "fig_tiles")
    if arch:
        stages = page.need(arch, "architecture.json", "stages")
        if stages:
            page.para(f"**{page.t('arch_shapes')}**")
            page.table([page.t("step"), page.t("shape"), page.t("note")],
                       [(s.get("step", ""), "(" + ", ".join(map(str, s.get("shape", []))) + ")", s.get("note", ""))
                        for s in stages])
    page.figure("data_flow.png", "fig_flow")
    if arch:
        if "tiny_total" in arch and "full_total" in arch:
            page.para(page.t("arch_params", tiny=arch["tiny_total"], full=arch["full_total"]))
        for key, label in (("tiny_table", "tiny"), ("full_table", "InternVL2-2B")):
            rows = page.need(arch, "architecture.json", key)
            if rows:
                page.para(f"**{label}**")
                page.table([page.t("part"), page.t("params"), page.t("share")],
                           [(r[0], f"{r[1]:,}", f"{r[2]:.1%}") for r in rows])
        rows = arch.get("tokens_by_max_tiles")
        if rows:
            page.para(f"**{page.t('tokens_table')}**")
            page.table([page.t("max_tiles"), page.t("grid"), page.t("tiles"), page.t("image_tokens")],
                       [(r[0], "×".join(map(str, r[1])), r[2], f"{r[3]:,}") for r in rows])
    _exercises(page, "01")


def _baseline(page):
    page.heading("base")
    base = page.data("baseline.json")
    if not base:
        return
    if base.get("engine"):
        page.para(page.t("base_engine", engine=base["engine"]))
    prompt = page.need(base, "baseline.json", "prompt")
    if prompt:
        page.para(page.t("base_prompt"))
        page.code(re.sub(r"(<IMG_CONTEXT>){4,}", lambda m: f"<IMG_CONTEXT>×{len(m.group(0)) // 13}", prompt))
    answers = page.need(base, "baseline.json", "answers") or []
    if answers:
        page.table([page.t("dish"), page.t("held_back"), page.t("question"), page.t("answer"), page.t("named")],
                   [(a.get("dish", ""), page.t("yes") if a.get("held_back") else "", a.get("question", ""),
                     a.get("answer", ""), a.get("named") or "—") for a in answers])
    cheung_fun = base.get("cheung_fun") or next((a for a in answers if a.get("dish") == "肠粉"), None)
    if cheung_fun:
        key = "base_cheung_fun_right" if cheung_fun.get("named") == "肠粉" else "base_cheung_fun"
        page.para(page.t(key, answer=cheung_fun.get("answer", ""), named=cheung_fun.get("named") or "—"))
    else:
        page.lack(page.t("missing_key", file="baseline.json", field="cheung_fun"), page.t("run_notebook", nb="02"))
    if isinstance(base.get("form_rate"), (int, float)):
        page.para(page.t("base_form", rate=base["form_rate"]))


def settings_block(config_text):
    """PART 1 of a rendered XTuner config, its banner included: the settings a student edits."""
    lines = config_text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"#\s+PART 1\b", line)), None)
    end = next((i for i, line in enumerate(lines) if re.match(r"#\s+PART 2\b", line)), len(lines))
    if start is None:
        return config_text.rstrip()
    if start > 0 and set(lines[start - 1].strip()) <= set("#=- "):  # the banner line above the title
        start -= 1
    body = lines[start:end]
    while body and set(body[-1].strip()) <= set("#=- "):  # PART 2's banner line
        body.pop()
    return "\n".join(body)


def _finetune(page):
    page.heading("tune")
    tune = page.data("finetune.json")
    if tune is None:
        page.figure("loss.png", "fig_loss")
        return
    config = page.run.local(tune.get("config_path"), "finetune/config.py")
    if config is None or not config.is_file():
        page.lack_file("finetune/config.py")
    else:
        page.para(page.t("tune_settings", preset=tune.get("settings", "?")))
        page.code(settings_block(config.read_text(encoding="utf-8", errors="replace")), "python")
    if tune.get("overrides"):
        page.para(page.t("tune_overrides", overrides=json.dumps(tune["overrides"], ensure_ascii=False)))
    plan = page.need(tune, "finetune.json", "memory_plan")
    if plan:
        page.para(page.t("tune_plan"))
        for item in plan:
            if isinstance(item, dict):
                page.lines.append(f"- {item.get('what', '')}: {item.get('verdict', '')}")
            else:
                page.lines.append(f"- {item}")
        page.lines.append("")
    needed = ("iterations", "planned", "wall_s", "first_loss", "final_loss")
    if all(isinstance(tune.get(k), (int, float)) for k in needed):
        page.para(page.t("tune_run", iterations=tune["iterations"], planned=tune["planned"],
                         samples=tune.get("num_samples", "?"), wall=tune["wall_s"], first=tune["first_loss"],
                         last=tune["final_loss"]))
    else:
        for key in needed:
            if not isinstance(tune.get(key), (int, float)):
                page.lack(page.t("missing_key", file="finetune.json", field=key), page.t("run_notebook", nb="03"))
    page.figure("loss.png", "fig_loss")
    if tune.get("system_prompt"):
        page.para(page.t("tune_system", prompt=tune["system_prompt"]))


def _conversion(page):
    page.heading("conv")
    conv = page.data("conversion.json")
    if conv:
        if isinstance(conv.get("total_mb"), (int, float)):
            page.para(page.t("conv_summary", mb=conv["total_mb"], shards=conv.get("shards", "?")))
        files = page.need(conv, "conversion.json", "files")
        if files:
            page.table([page.t("file"), page.t("size")],
                       [(name, f"{size / 2**10:,.1f} KiB") for name, size in sorted(files.items())])
        if isinstance(conv.get("max_abs_diff"), (int, float)):
            page.para(page.t("conv_check", diff=conv["max_abs_diff"], answer=conv.get("fresh_answer") or "—"))
        else:
            page.lack(page.t("missing_key", file="conversion.json", field="max_abs_diff"), page.t("run_notebook", nb="04"))
        hand = conv.get("hand_merge")
        if hand:
            page.para(page.t("conv_hand", layer=hand.get("layer", "?"), steps=hand.get("bf16_steps", float("nan"))))
    _exercises(page, "04")


def _comparison(page):
    page.heading("comp")
    comp = page.data("comparison.json")
    if comp:
        try:
            page.para(page.t("comp_summary", hb=comp["held_back"]["base"], ht=comp["held_back"]["tuned"],
                             kb=comp["known"]["base"], kt=comp["known"]["tuned"]))
        except (KeyError, TypeError):
            page.lack(page.t("missing_key", file="comparison.json", field="held_back / known"), page.t("run_notebook", nb="05"))
        per_dish = page.need(comp, "comparison.json", "per_dish")
        if per_dish:
            page.table([page.t("dish"), page.t("held_back"), page.t("base_acc"), page.t("tuned_acc")],
                       [(d.get("dish", ""), page.t("yes") if d.get("held_back") else "",
                         f"{d.get('base', float('nan')):.0%}", f"{d.get('tuned', float('nan')):.0%}") for d in per_dish])
    page.figure("accuracy.png", "fig_accuracy")
    page.figure("confusion.png", "fig_confusion")
    page.figure("gallery.png", "fig_gallery")
    if comp:
        example = page.need(comp, "comparison.json", "example")
        if example:
            page.para(page.t("comp_example", question=example.get("question", ""), base=example.get("base", ""),
                             tuned=example.get("tuned", "")))


def _reflection(page):
    page.heading("reflection")
    notes = reflection(page.run.root)
    if notes:
        page.para(notes)
    else:
        page.missing.append((page.section, page.t("reflection_missing")))
        page.para("> " + page.t("reflection_missing"))


def _appendix(page):
    page.heading("appendix")
    course = page.run.json("course.json")
    if isinstance(course, dict) and course.get("notebooks"):
        page.table([page.t("notebook"), page.t("seconds")],
                   [(n.get("name", ""), f"{n.get('seconds', 0):.0f}") for n in course["notebooks"]])
    else:
        page.lack_file("course.json")
    page.lines += [f"### {page.t('missing_summary')}", ""]
    if page.missing:
        page.lines += [f"- {section}: {what}" for section, what in page.missing] + [""]
    else:
        page.para(page.t("nothing_missing"))


SECTIONS = (_architecture, _baseline, _finetune, _conversion, _comparison, _reflection)


def build_page(run_dir, lang="zh") -> Page:
    """The write-up of ``run_dir`` in ``lang``, as a `Page` (``.markdown``, ``.figures``, ``.missing``)."""
    if lang not in LANGUAGES:
        raise ValueError(f"lang={lang!r}: use one of {', '.join(LANGUAGES)}.")
    page = Page(RunFolder(run_dir), lang)
    page.lines += [f"# {page.t('title')}", "", page.t("intro"), ""]
    course = page.run.json("course.json", quiet=True)
    if isinstance(course, dict) and "wall_s" in course:
        page.para(page.t("run_line", model=Path(str(course.get("base_model", "?"))).name, wall=course["wall_s"]))
    for section in SECTIONS:
        section(page)
    _appendix(page)
    return page


def build_markdown(run_dir, lang="zh"):
    return "\n".join(build_page(run_dir, lang).lines)


def markdown_to_html(markdown, title="labkit"):
    """A standalone HTML page from the write-up's Markdown (markdown-it-py: CommonMark + tables)."""
    import html

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
            "<style>body{font-family:sans-serif;max-width:60em;margin:auto;padding:1em;line-height:1.5}"
            "img{max-width:100%}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}"
            "pre{background:#f6f6f6;padding:.5em;overflow-x:auto}blockquote{color:#a33;margin-left:0;padding-left:1em;"
            "border-left:3px solid #a33}</style></head>\n"
            f"<body>\n{body}</body></html>\n")


def _copy_evidence(run_dir, target):
    """The run's small files into ``target``, in the run folder's layout; notebooks without outputs."""
    import nbformat

    for pattern in EVIDENCE:
        for source in sorted(run_dir.glob(pattern)):
            if not source.is_file():
                continue
            copy = target / source.relative_to(run_dir)
            if source.suffix == ".ipynb":
                try:
                    book = nbformat.read(str(source), as_version=4)
                except Exception:  # an unreadable notebook travels as it is; the grader names it
                    fileio.copy_file(source, copy)
                    continue
                for cell in book.cells:
                    if cell.cell_type == "code":
                        cell.outputs = []  # the figures are in figures/ already; the answers are the sources
                fileio.write_text(copy, nbformat.writes(book))
            else:
                fileio.copy_file(source, copy)


def write_writeup(run_dir):
    """Write RUN/writeup/ (Chinese and English Markdown + HTML, figures, evidence) and RUN/writeup.zip.

    Returns the Chinese HTML page's path. The folder is built beside the old one and swapped in
    whole, so a failure leaves an earlier write-up as it was.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NotADirectoryError(f"{run_dir}: not a folder; give the run folder `labkit run` wrote (runs/DATE-TIME).")
    target = run_dir / WRITEUP_DIR
    with fileio.staged_folder(target, "write-up folder") as stage:
        for lang in LANGUAGES:
            page = build_page(run_dir, lang)
            markdown = "\n".join(page.lines)
            fileio.write_text(stage / f"{STEMS[lang]}.md", markdown)
            fileio.write_text(stage / f"{STEMS[lang]}.html", markdown_to_html(markdown, page.t("title")))
            for figure in page.figures:
                if not (stage / "figures" / figure.name).exists():
                    fileio.copy_file(figure, stage / "figures" / figure.name)
        _copy_evidence(run_dir, stage / EVIDENCE_DIR)
    zip_folder(target, run_dir / ZIP_NAME)
    return target / f"{STEMS['zh']}.html"


def zip_folder(folder, zip_path):
    """Zip ``folder`` into ``zip_path`` (atomically), every entry under the folder's own name."""
    folder = Path(folder)
    with fileio.atomic_path(zip_path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    archive.write(path, Path(folder.name) / path.relative_to(folder))
    return Path(zip_path)


def write_report(run_dir):
    """What the main job calls: the write-up (`write_writeup`); returns its HTML page's path."""
    return write_writeup(run_dir)


def main(argv=None):
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="labkit writeup",
                                     description="Write (or rewrite) the write-up of a run folder: RUN/writeup/ and RUN/writeup.zip.")
    parser.add_argument("run_dir", type=Path, help="the run folder (runs/DATE-TIME)")
    args = parser.parse_args(argv)
    try:
        html_path = write_writeup(args.run_dir)
    except (NotADirectoryError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    page = build_page(args.run_dir)
    print(f"write-up: {html_path}\nzip: {args.run_dir / ZIP_NAME}")
    for section, what in page.missing:
        print(f"missing in {section}: {what}")
    return 0
