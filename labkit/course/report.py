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

WRITEUP_DIR = "writeup"
ZIP_NAME = "writeup.zip"
EVIDENCE_DIR = "evidence"
LANGUAGES = ("zh", "en")
STEMS = {"zh": "writeup", "en": "writeup.en"}
REFLECTION_TAG = "reflection"
NOTES_FILE = "notes.md"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

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

# Every sentence of the write-up, once, in both languages: {key: (Chinese, English)}.
TEXT = {
    "title": ("InternVL2 多模态微调实验报告", "InternVL2 multimodal fine-tuning: lab write-up"),
    "intro": ("本报告由 labkit 从运行文件夹 run folder 里的结果自动生成：每个数字、每张图都来自笔记本真正算出的结果。",
              "labkit built this write-up from the results in the run folder: every number and figure is what the "
              "notebooks really computed."),
    "run_line": ("基座模型 base model：`{model}`；全部笔记本用时 {wall:.0f} 秒。",
                 "Base model: `{model}`; all notebooks took {wall:.0f} s."),
    "missing": ("**缺少 missing**：{what}（{hint}）。", "**Missing**: {what} ({hint})."),
    "run_notebook": ("运行 notebook {nb} 会写出它", "running notebook {nb} writes it"),
    "missing_key": ("`{file}` 里没有 `{field}`", "`{file}` has no `{field}`"),
    "bad_png": ("`{file}` 不是 PNG 图片", "`{file}` is not a PNG picture"),
    "missing_summary": ("本报告缺少的部分 what this write-up lacks", "What this write-up lacks"),
    "nothing_missing": ("没有缺少的部分。", "Nothing is missing."),
    # 1. architecture
    "arch": ("1. 多模态设计模式与 InternVL2 架构", "1. The multimodal design pattern and InternVL2's architecture"),
    "arch_pattern": ("InternVL2 采用 ViT-MLP-LLM 设计模式：视觉编码器 InternViT 把图片的每个图块 tile 变成 patch token，"
                     "像素重排 pixel shuffle 把 token 数变为 1/4，投影层 `mlp1` 把它们映射到语言模型的宽度，"
                     "语言模型 InternLM2 在提示词的 `<IMG_CONTEXT>` 位置读到它们。",
                     "InternVL2 follows the ViT-MLP-LLM pattern: the InternViT vision encoder turns each tile of the "
                     "picture into patch tokens, pixel shuffle keeps a quarter of them, the `mlp1` projector maps them "
                     "to the language model's width, and InternLM2 reads them at the prompt's `<IMG_CONTEXT>` places."),
    "arch_picture": ("追踪的图片：{dish}，{w}×{h} 像素，切成 {tiles} 个图块（含缩略图）。",
                     "The traced picture: {dish}, {w}x{h} pixels, cut into {tiles} tiles (thumbnail included)."),
    "arch_shapes": ("一张图走过模型的每一步（形状由模型代码算出）", "One picture through the model, step by step (shapes computed by the model's code)"),
    "step": ("步骤", "step"), "shape": ("形状", "shape"), "note": ("说明", "note"),
    "arch_params": ("参数都在哪里：tiny 课程模型 {tiny:,} 个参数，InternVL2-2B {full:,} 个。",
                    "Where the parameters are: the tiny course model has {tiny:,}, InternVL2-2B {full:,}."),
    "part": ("部分", "part"), "params": ("参数量", "parameters"), "share": ("占比", "share"),
    "tokens_table": ("一张照片在 InternVL2-2B 里占多少图像 token", "How many image tokens a photo takes in InternVL2-2B"),
    "max_tiles": ("图块上限", "max tiles"), "grid": ("网格", "grid"), "tiles": ("图块", "tiles"),
    "image_tokens": ("图像 token", "image tokens"),
    "fig_tiles": ("动态切图", "dynamic tiling"), "fig_flow": ("数据流图", "data flow"),
    # 2. baseline
    "base": ("2. 与基座模型对话", "2. Chatting with the base model"),
    "base_engine": ("推理引擎 engine：{engine}。", "Engine: {engine}."),
    "base_prompt": ("模型真正读到的提示词 prompt（`<IMG_CONTEXT>` 已缩写）：", "The exact prompt the model reads (`<IMG_CONTEXT>` abbreviated):"),
    "dish": ("菜", "dish"), "held_back": ("未训练过 held back", "held back"), "question": ("问题", "question"),
    "answer": ("回答", "answer"), "named": ("识别为", "named"), "yes": ("是", "yes"),
    "base_cheung_fun": ("肠粉的图片，基座模型回答「{answer}」，把它叫成了 **{named}**：它从没学过肠粉。",
                        "Shown 肠粉 (cheung fun), the base model answered \"{answer}\", calling it **{named}**: it was never taught 肠粉."),
    "base_cheung_fun_right": ("肠粉的图片，基座模型回答「{answer}」。", "Shown 肠粉, the base model answered \"{answer}\"."),
    "base_form": ("回答符合「图中的菜是X。」句式的比例：{rate:.0%}。", "Answers in the form \"图中的菜是X。\": {rate:.0%}."),
    # 3. fine-tune
    "tune": ("3. XTuner 微调", "3. Fine-tuning with XTuner"),
    "tune_settings": ("训练设置（XTuner 配置的 PART 1 Settings，预设 `{preset}`）：", "The training settings (PART 1 of the XTuner config, preset `{preset}`):"),
    "tune_overrides": ("改动的设置 overrides：`{overrides}`。", "Settings changed: `{overrides}`."),
    "tune_plan": ("显存规划 memory plan（训练前的预测）：", "The memory plan (predicted before training):"),
    "tune_run": ("XTuner 训练了 {iterations} 次迭代 iterations（计划 {planned} 次，{samples} 个样本），用时 {wall:.0f} 秒；"
                 "损失 loss 从 {first:.3f} 降到 {last:.3f}。",
                 "XTuner ran {iterations} iterations (planned {planned}, {samples} samples) in {wall:.0f} s; "
                 "the loss went from {first:.3f} to {last:.3f}."),
    "tune_system": ("训练用的系统提示词 system prompt：{prompt}", "System prompt used in training: {prompt}"),
    "fig_loss": ("损失曲线", "loss curve"),
    # 4. conversion
    "conv": ("4. 权重转换", "4. Converting the weights"),
    "conv_summary": ("XTuner 的 `.pth` 只存了 LoRA 适配器和 `mlp1`；转换把适配器合并 merge 进每个 Linear 层，写出普通的 "
                     "InternVL2 文件夹：{mb:.1f} MB 的 safetensors 权重，{shards} 个文件。",
                     "XTuner's `.pth` holds only the LoRA adapters and `mlp1`; conversion merges each adapter into its "
                     "Linear layer and writes an ordinary InternVL2 folder: {mb:.1f} MB of safetensors weights in {shards} file(s)."),
    "conv_check": ("合并检查 merge check：合并后的模型与 LoRA 模型的 logits 最大相差 {diff:.2e}；"
                   "全新进程加载文件夹后回答「{answer}」。",
                   "Merge check: merged vs LoRA model logits differ by at most {diff:.2e}; the folder loaded in a "
                   "fresh process answered \"{answer}\"."),
    "conv_hand": ("手动合并的 `{layer}` 与文件夹里的权重相差 {steps:.2f} 个 bf16 舍入步长。",
                  "The hand-merged `{layer}` matches the folder's weight within {steps:.2f} bf16 rounding steps."),
    "file": ("文件", "file"), "size": ("大小", "size"),
    # 5. comparison
    "comp": ("5. 微调前后对比", "5. Before and after the fine-tune"),
    "comp_summary": ("未训练过的菜 held-back dishes：基座 {hb:.0%} → 微调后 {ht:.0%}；已学过的菜 known dishes：基座 {kb:.0%} → 微调后 {kt:.0%}。",
                     "Held-back dishes: base {hb:.0%} -> tuned {ht:.0%}; known dishes: base {kb:.0%} -> tuned {kt:.0%}."),
    "base_acc": ("基座", "base"), "tuned_acc": ("微调后", "tuned"),
    "comp_example": ("肠粉的例子：问「{question}」，基座模型答「{base}」，微调后的模型答「{tuned}」。",
                     "The 肠粉 example: asked \"{question}\", the base model said \"{base}\", the tuned model \"{tuned}\"."),
    "fig_accuracy": ("每道菜的准确率", "accuracy per dish"), "fig_confusion": ("混淆矩阵", "confusion matrices"),
    "fig_gallery": ("测试图片与两个模型的回答", "test pictures and both models' answers"),
    # exercises
    "exercises": ("练习", "Exercises"),
    "ex_passed": ("✓ 通过", "✓ passed"), "ex_failed": ("✗ 未通过（{status}）", "✗ not passed ({status})"),
    "ex_unchecked": ("— 还没检查", "— not checked yet"),
    "ex_no_code": ("（答案代码不在 {file} 里）", "(the answer's code is not in {file})"),
    # reflection and appendix
    "reflection": ("6. 心得", "6. Reflection"),
    "reflection_missing": ("还没写心得：在 notebook 05 里标记为 `reflection` 的 Markdown 格（或运行文件夹里的 `notes.md`）写下你的体会。",
                           "No reflection written yet: write it in the Markdown cell tagged `reflection` of notebook 05 "
                           "(or in `notes.md` in the run folder)."),
    "appendix": ("附录：运行记录", "Appendix: the run"),
    "notebook": ("笔记本", "notebook"), "seconds": ("秒", "seconds"),
}


def text(key, lang="zh", **values):
    """One sentence of ``TEXT`` in ``lang`` ("zh" or "en"), with ``values`` filled in."""
    zh, en = TEXT[key]
    return (zh if lang == "zh" else en).format(**values)


# -- reading the run folder ---------------------------------------------------------------------
class RunFolder:
    """A run folder read leniently: a missing or broken file is remembered, never raised."""

    def __init__(self, run_dir):
        self.root = Path(run_dir)
        self.errors = {}  # {relative name: why it could not be read}
        self._cache = {}
        course = self.json("course.json", quiet=True) or {}
        recorded = course.get("parameters", {}).get("run_dir")
        self.recorded_root = Path(recorded) if recorded else None

    def json(self, name, quiet=False):
        if name in self._cache:
            return self._cache[name]
        path = self.root / name
        value = None
        if path.is_file():
            try:
                value = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as err:
                self.errors[name] = f"not valid JSON ({err})"
        elif not quiet:
            self.errors.setdefault(name, "missing")
        self._cache[name] = value
        return value

    def local(self, recorded, default):
        """A path a notebook recorded (absolute, on the machine that ran it), as it lies in this folder.

        A path under the recorded run folder is moved under this one; otherwise the recorded path
        is used if it exists; else ``default`` inside this folder. Returns None when none exists.
        """
        candidates = []
        if recorded:
            recorded = Path(recorded)
            if self.recorded_root is not None and recorded.is_relative_to(self.recorded_root):
                candidates.append(self.root / recorded.relative_to(self.recorded_root))
            candidates.append(recorded)
        candidates.append(self.root / default)
        return next((c for c in candidates if c.exists()), None)

    def notebook(self, prefix):
        """The executed notebook whose name starts with ``prefix`` ("01"), or None."""
        found = sorted((self.root / "notebooks").glob(f"{prefix}_*.ipynb"))
        return found[0] if found else None


def is_png(path):
    with open(path, "rb") as handle:
        return handle.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE


def notebook_cells(path):
    """The cells of a notebook file, or [] when it cannot be read."""
    import nbformat

    try:
        return nbformat.read(str(path), as_version=4).cells
    except Exception:  # a broken notebook must not stop a write-up or a grade
        return []


def reflection(run_dir):
    """The student's own notes: ``reflection``-tagged Markdown cells of the executed notebooks, then notes.md."""
    run_dir = Path(run_dir)
    parts = []
    for path in sorted((run_dir / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for cell in notebook_cells(path):
            if cell.cell_type == "markdown" and REFLECTION_TAG in cell.metadata.get("tags", []):
                parts.append(cell.source)
    notes = run_dir / NOTES_FILE
    if notes.is_file():
        parts.append(notes.read_text(encoding="utf-8", errors="replace"))
    body = []
    for part in parts:
        lines = part.strip().splitlines()
        # The cell's own heading ("## 心得 reflection") would repeat the section's heading.
        if lines and lines[0].startswith("#") and re.search(r"心得|reflection", lines[0], re.IGNORECASE):
            lines = lines[1:]
        if "\n".join(lines).strip():
            body.append("\n".join(lines).strip())
    return "\n\n".join(body) or None


def exercise_answers(notebook, exercises):
    """``{exercise id: the source of its `exercise`-tagged cell}`` (the k-th cell is the k-th exercise)."""
    from labkit.course.exercises import EXERCISE_TAG

    cells = [c for c in notebook_cells(notebook) if EXERCISE_TAG in c.metadata.get("tags", [])] if notebook else []
    return {exercise.id: cell.source for exercise, cell in zip(exercises, cells)}


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
