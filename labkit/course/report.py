"""The course report: one Markdown and one HTML page per run, built from the run folder.

Each notebook leaves its results in the run folder (JSON files and PNG figures); this module
only reads them, so the report always shows what the notebooks really computed.
"""
import html
import json
from pathlib import Path

from labkit import fileio
def _read(run_dir, name):
    path = Path(run_dir) / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _atomic_write(path, text):
    fileio.write_text(path, text)


def _accuracy_rows(comparison):
    rows = ["| dish | held back | base | tuned |", "|---|---|---|---|"]
    for dish in comparison["per_dish"]:
        rows.append(f"| {dish['dish']} | {'yes' if dish['held_back'] else ''} | "
                    f"{dish['base']:.0%} | {dish['tuned']:.0%} |")
    return rows


def build_markdown(run_dir):
    run_dir = Path(run_dir)
    course = _read(run_dir, "course.json") or {}
    lines = ["# labkit course report", ""]
    if course:
        lines += [f"Model: `{course.get('base_model')}`  ", f"Run folder: `{run_dir}`  ",
                  f"Total wall time: {course.get('wall_s', 0):.0f} s", ""]
        lines += ["| notebook | seconds |", "|---|---|"]
        lines += [f"| {n['name']} | {n['seconds']:.0f} |" for n in course.get("notebooks", [])]
        lines.append("")
    arch = _read(run_dir, "architecture.json")
    if arch:
        lines += ["## 1. Architecture", "", f"Tiny model: {arch['tiny_total']:,} parameters; "
                  f"InternVL2-2B: {arch['full_total']:,}.", "", "![tiles](figures/tiles.png)", ""]
    base = _read(run_dir, "baseline.json")
    if base:
        lines += ["## 2. Baseline chat", ""]
        lines += [f"- **{q['dish']}** - Q: {q['question']} - A: {q['answer']}" for q in base["answers"]]
        lines.append("")
    tune = _read(run_dir, "finetune.json")
    if tune:
        lines += ["## 3. Fine-tune (XTuner)", "", f"{tune['iterations']} iterations in {tune['wall_s']:.0f} s, "
                  f"final loss {tune['final_loss']:.3f}.", "", "![loss](figures/loss.png)", ""]
    conv = _read(run_dir, "conversion.json")
    if conv:
        lines += ["## 4. Conversion", "", f"`{conv['out_dir']}`: {conv['total_mb']:.1f} MB of safetensors in "
                  f"{conv['shards']} file(s); merged vs LoRA logits max diff {conv['max_abs_diff']:.2e}.", ""]
    comp = _read(run_dir, "comparison.json")
    if comp:
        lines += ["## 5. Before and after", ""]
        lines += [f"Held-back dishes: base {comp['held_back']['base']:.0%} -> tuned {comp['held_back']['tuned']:.0%}; "
                  f"known dishes: base {comp['known']['base']:.0%} -> tuned {comp['known']['tuned']:.0%}.", ""]
        if comp.get("example"):
            ex = comp["example"]
            lines += [f"肠粉 example: base said \"{ex['base']}\", tuned said \"{ex['tuned']}\".", ""]
        lines += _accuracy_rows(comp) + [""]
        lines += ["![confusion](figures/confusion.png)", "", "![gallery](figures/gallery.png)", ""]
    return "\n".join(lines)


def markdown_to_html(markdown):
    """A deliberately small converter: headings, images, tables, list items, paragraphs."""
    out, table = [], []

    def flush_table():
        if table:
            cells = [row.strip("|").split("|") for row in table if not set(row) <= set("|-")]
            head, *body = cells
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in body)
            out.append("</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("![") and "](" in line:
            alt, src = line[2:].split("](", 1)
            out.append(f'<p><img alt="{html.escape(alt)}" src="{html.escape(src.rstrip(")"))}" style="max-width:100%"></p>')
        elif line.startswith("- "):
            out.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{html.escape(line.strip())}</p>")
    flush_table()
    body = "\n".join(out)
    return f'<!doctype html><meta charset="utf-8"><title>labkit report</title><body style="font-family:sans-serif;max-width:60em">{body}</body>'


def write_report(run_dir):
    """Write report.md and report.html into the run folder; return the HTML path."""
    run_dir = Path(run_dir)
    markdown = build_markdown(run_dir)
    _atomic_write(run_dir / "report.md", markdown)
    _atomic_write(run_dir / "report.html", markdown_to_html(markdown))
    return run_dir / "report.html"
