"""The student's write-up: its sections in the lab's order, its figures, what it says is missing, the zip."""
import os
import re
import string
import zipfile
from pathlib import Path

import pytest

from labkit.course import report, writeup_text
from run_folder import FIGURES, make_run

SECTIONS_ZH = ["1. 多模态设计模式与 InternVL2 架构", "2. 与基座模型对话", "3. XTuner 微调", "4. 权重转换",
               "5. 微调前后对比", "6. 心得"]


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "run")


def headings(markdown, level=2):
    return [line[level + 1:] for line in markdown.splitlines() if line.startswith("#" * level + " ")]


def test_every_sentence_has_both_languages_with_the_same_blanks():
    for key, (zh, en) in writeup_text.TEXT.items():
        assert zh.strip() and en.strip(), key
        blanks = [sorted(f for _, f, _, _ in string.Formatter().parse(s) if f) for s in (zh, en)]
        assert blanks[0] == blanks[1], f"TEXT[{key!r}]: the two languages fill in different values"


def test_the_writeup_follows_the_labs_tasks_in_chinese_and_english(run):
    html_path = report.write_writeup(run)
    folder = run / "writeup"
    assert html_path == folder / "writeup.html"
    zh = (folder / "writeup.md").read_text(encoding="utf-8")
    assert headings(zh)[:6] == SECTIONS_ZH
    en = (folder / "writeup.en.md").read_text(encoding="utf-8")
    assert headings(en)[0].startswith("1. The multimodal design pattern") and len(headings(en)) == len(headings(zh))
    # What each task shows, from the run's own files.
    assert "(4, 16, 128)" in zh and "2,205,754,368" in zh  # traced shapes and the parameter table
    assert "<IMG_CONTEXT>×64" in zh and "把它叫成了 **叉烧包**" in zh  # the exact prompt, 肠粉 misnamed
    assert "PART 1  Settings" in zh and "PART 2" not in zh and "lora_r = 128" in zh  # the settings block
    assert "does not fit" in zh and "XTuner 训练了 12 次迭代" in zh and "42 秒" in zh
    assert "model.safetensors" in zh and "7.60e-06" in zh  # files, sizes, the merge check
    assert "基座 0% → 微调后 100%" in zh and "微调后的模型答「图中的菜是肠粉。」" in zh
    assert "n_image_tokens = 9 * 256" in zh and "✗ 未通过（wrong）" in zh  # the student's answers and verdicts
    assert "肠粉终于被认出来了" in zh and zh.count("心得") >= 1 and "## 心得 reflection" not in zh
    assert "没有缺少的部分。" in zh


def test_every_figure_is_a_relative_png_inside_the_folder(run):
    report.write_writeup(run)
    folder = run / "writeup"
    markdown = (folder / "writeup.md").read_text(encoding="utf-8")
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert sorted(linked) == sorted(f"figures/{name}" for name in FIGURES)
    for link in linked:
        assert not Path(link).is_absolute() and report.is_png(folder / link)
    page = (folder / "writeup.html").read_text(encoding="utf-8")
    assert '<meta charset="utf-8">' in page and "<table>" in page and '<img src="figures/loss.png"' in page
    assert "<h2>5. 微调前后对比</h2>" in page


def test_missing_parts_are_named_where_they_belong_and_never_crash(run):
    (run / "baseline.json").unlink()
    (run / "figures" / "loss.png").unlink()
    (run / "figures" / "gallery.png").write_bytes(b"GIF89a not a png")
    (run / "comparison.json").write_text("{ broken", encoding="utf-8")
    for notebook in (run / "notebooks").glob("*.ipynb"):
        notebook.unlink()
    report.write_writeup(run)
    zh = (run / "writeup" / "writeup.md").read_text(encoding="utf-8")
    summary = zh.split("本报告缺少的部分")[1]
    for what in ("`baseline.json`", "`figures/loss.png`", "`figures/gallery.png` 不是 PNG 图片",
                 "`comparison.json`: not valid JSON", "还没写心得"):
        assert what in summary, what
    baseline = zh.split("## 2. 与基座模型对话")[1].split("## 3.")[0]
    assert "**缺少 missing**：`baseline.json`（运行 notebook 02 会写出它）" in baseline
    assert not (run / "writeup" / "figures" / "gallery.png").exists()
    en = (run / "writeup" / "writeup.en.md").read_text(encoding="utf-8")
    assert "**Missing**: `baseline.json` (running notebook 02 writes it)" in en


def test_an_empty_folder_still_gets_a_writeup_naming_every_file(tmp_path):
    report.write_writeup(tmp_path)
    zh = (tmp_path / "writeup" / "writeup.md").read_text(encoding="utf-8")
    assert headings(zh)[:6] == SECTIONS_ZH
    for name in ("architecture.json", "baseline.json", "finetune.json", "conversion.json", "comparison.json",
                 "exercises.json", "course.json", "figures/tiles.png"):
        assert f"`{name}`" in zh, name


def test_a_key_a_notebook_does_not_save_yet_is_named(run):
    import json

    data = json.loads((run / "finetune.json").read_text(encoding="utf-8"))
    del data["memory_plan"]
    (run / "finetune.json").write_text(json.dumps(data), encoding="utf-8")
    zh = report.build_markdown(run)
    assert "`finetune.json` 里没有 `memory_plan`" in zh


def test_notes_md_and_the_students_html_are_shown_as_text(tmp_path):
    run = make_run(tmp_path / "run", reflection=None)
    (run / "notes.md").write_text("我的心得 <script>alert(1)</script>", encoding="utf-8")
    report.write_writeup(run)
    page = (run / "writeup" / "writeup.html").read_text(encoding="utf-8")
    assert "我的心得" in page and "<script>" not in page and "&lt;script&gt;" in page


def test_the_zip_holds_the_folder_with_its_evidence(run):
    report.write_writeup(run)
    with zipfile.ZipFile(run / "writeup.zip") as archive:
        names = set(archive.namelist())
    folder = run / "writeup"
    assert names == {f"writeup/{p.relative_to(folder)}" for p in folder.rglob("*") if p.is_file()}
    assert {"writeup/writeup.md", "writeup/writeup.html", "writeup/figures/confusion.png",
            "writeup/evidence/comparison.json", "writeup/evidence/notebooks/05_comparison.ipynb"} <= names


def test_writing_again_replaces_the_folder(run):
    report.write_writeup(run)
    (run / "figures" / "tiles.png").unlink()
    report.write_writeup(run)
    assert not (run / "writeup" / "figures" / "tiles.png").exists()
    assert not [p for p in run.iterdir() if p.name.startswith(".writeup")]


def test_the_command_writes_the_writeup_and_refuses_a_file(run, tmp_path, capsys):
    assert report.main([str(run)]) == 0
    assert "write-up:" in capsys.readouterr().out and (run / "writeup.zip").is_file()
    (tmp_path / "file").write_text("x")
    assert report.main([str(tmp_path / "file")]) == 2
    assert "not a folder" in capsys.readouterr().err


def _real_run():
    chosen = os.environ.get("LABKIT_REAL_RUN")
    if chosen:
        return Path(chosen)
    found = sorted(report.fileio.REPO_ROOT.glob("runs/*/comparison.json"))
    return found[-1].parent if found else None


@pytest.mark.skipif(_real_run() is None, reason="no run folder from `./lab run` (set LABKIT_REAL_RUN to choose one)")
def test_a_real_run_folder(tmp_path):
    import shutil

    source = _real_run()
    run = tmp_path / "run"
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("*.pth", "*.safetensors", "writeup*"))
    report.write_writeup(run)
    zh = (run / "writeup" / "writeup.md").read_text(encoding="utf-8")
    assert headings(zh)[:6] == SECTIONS_ZH and "肠粉" in zh
    assert (run / "writeup" / "figures" / "confusion.png").is_file()
