"""The teacher's side: one class table (CSV and HTML) from many students' run folders or write-ups.

    labkit grade runs/alice runs/bob.zip hand-ins/*.zip --out class.csv     # also writes class.html

Each argument is a run folder (what ``labkit run`` or the notebooks wrote), a write-up folder or
a zipped write-up (``RUN/writeup.zip``: its ``evidence/`` holds the run's small files in the
run folder's layout). One row per argument:

* **exercises**: each exercise's verdict. Where the answer is plain arithmetic in the executed
  notebook's ``exercise`` cell and its check needs nothing of the run (``REJUDGED``), the check
  runs again on that answer ("recomputed"); otherwise the verdict is the one ``exercises.json``
  recorded ("recorded"). A recorded verdict the recomputed one contradicts is reported.
* **accuracy** on the held-back and the known dishes, base and tuned, recomputed from the raw
  answers notebook 05 saved (``comparison.json``: ``base_report.answers``, ``tuned_report.answers``;
  `labkit.eval.evaluate.Report.from_json` reads each answer's text again). A summary that
  disagrees with the raw answers is reported, naming the file and the figure.
* **training**: iterations as mmengine's own log (``finetune/xtuner/*/vis_data/scalars.json``)
  shows them, checked against ``finetune.json``; the training time from ``finetune.json``.
* **publish**: whether the tuned model folder passes the publish check
  (``labkit.convert.publish.check_folder``; "publish check not available" where labkit has none).

Whatever is wrong with one argument (missing file, broken JSON, a folder that is not a run, a
bad zip) goes into that row's ``problems``, naming the file; it never stops the class table.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import io
import math
import operator
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from labkit import fileio
from labkit.course import report as writeup

# Exercises whose check needs nothing of the student's run, so it can run again on a plain answer.
REJUDGED = ("01.image_tokens", "01.mlp1_parameters")
# Files that make a folder a run folder (any one of them).
RUN_FILES = ("course.json", "exercises.json", "architecture.json", "baseline.json", "finetune.json",
             "conversion.json", "comparison.json")
GROUPS = ("held_back", "known")
SIDES = ("base", "tuned")
MAX_UNZIPPED = 2 * 2**30  # a hand-in larger than this unzipped is refused (a zip bomb, or a whole model)
TOLERANCE = 1e-9
LOSS_DIGITS = 5e-5 + 1e-9  # finetune.json keeps the loss to the 4 decimals of mmengine's log line


@dataclass
class Row:
    """One student's line of the class table; ``problems`` name the file each one is about."""

    student: str
    source: str
    kind: str = ""
    exercises: dict = field(default_factory=dict)  # {exercise id: "pass (recomputed)", ...}
    accuracy: dict = field(default_factory=dict)  # {"held_back_base": 0.0, ...}, recomputed
    iterations: int | None = None
    train_s: float | None = None
    publish: str = ""
    problems: list = field(default_factory=list)

    def problem(self, where, message):
        self.problems.append(f"{where}: {message}")

    @property
    def exercises_passed(self):
        passed = sum(mark.startswith("pass") for mark in self.exercises.values())
        return f"{passed}/{len(self.exercises)}" if self.exercises else ""


def all_exercises():
    """Every exercise of the course, in notebook order: ``[(notebook name, Exercise), ...]``."""
    from labkit.course import exercises as framework
    from labkit.course.main import NOTEBOOKS

    return [(name, exercise) for name in NOTEBOOKS for exercise in framework.exercises_of(name)]


# -- finding the run inside what was handed in ----------------------------------------------------
def _is_run(folder):
    return folder.is_dir() and any((folder / name).is_file() for name in RUN_FILES)


def find_run(folder):
    """``(run folder, kind)`` inside ``folder``: itself, a write-up's evidence, or one level down."""
    folder = Path(folder)
    for candidate, kind in ((folder, "run folder"), (folder / writeup.EVIDENCE_DIR, "write-up"),
                            (folder / writeup.WRITEUP_DIR / writeup.EVIDENCE_DIR, "write-up")):
        if _is_run(candidate):
            return candidate, kind
    inside = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))] \
        if folder.is_dir() else []
    if len(inside) == 1:
        return find_run(inside[0])
    return None, None


@contextlib.contextmanager
def opened(path, row):
    """Yield the run folder inside ``path`` (a folder or a zip), or None with the reason in ``row``."""
    path = Path(path)
    if not path.exists():
        row.problem(path, "no such file or folder")
        yield None
        return
    if path.is_dir():
        run, kind = find_run(path)
        row.kind = kind or "not a run"
        if run is None:
            row.problem(path, f"not a run folder: none of {', '.join(RUN_FILES)} in it (nor in evidence/)")
        yield run
        return
    if not zipfile.is_zipfile(path):
        row.kind = "not a run"
        row.problem(path, "neither a folder nor a zip file; hand in RUN/writeup.zip or the run folder")
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="labkit-grade-") as tmp:
        try:
            with zipfile.ZipFile(path) as archive:
                size = sum(info.file_size for info in archive.infolist())
                if size > MAX_UNZIPPED:
                    raise ValueError(f"unzips to {size / 2**30:.1f} GiB (more than {MAX_UNZIPPED / 2**30:.0f} GiB); "
                                     "hand in the write-up zip, not the models")
                archive.extractall(tmp)  # zipfile drops absolute paths and ".." from member names
        except (zipfile.BadZipFile, ValueError, OSError) as err:
            row.kind = "not a run"
            row.problem(path, f"cannot be unzipped: {err}")
            yield None
            return
        run, kind = find_run(Path(tmp))
        row.kind = f"{kind} (zip)" if kind else "not a run"
        if run is None:
            row.problem(path, f"holds no run: none of {', '.join(RUN_FILES)} in it (nor in writeup/evidence/)")
        yield run


def student_name(path):
    path = Path(path)
    name = path.stem if path.is_file() else path.name
    if name in (writeup.WRITEUP_DIR, writeup.EVIDENCE_DIR) and path.parent.name:
        return path.parent.name
    return name


# -- exercises ----------------------------------------------------------------------------------
class _NotPlain(Exception):
    """The answer is more than arithmetic on numbers: it is not run here."""


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


def _arith(node, names):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _arith(node.operand, names)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _arith(node.left, names), _arith(node.right, names)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 2**20):
            raise _NotPlain
        return _OPERATORS[type(node.op)](left, right)
    if isinstance(node, ast.Tuple):
        return tuple(_arith(item, names) for item in node.elts)
    raise _NotPlain


def _bind(target, value, names):
    if isinstance(target, ast.Name):
        names[target.id] = value
    elif isinstance(target, ast.Tuple) and isinstance(value, tuple) and len(value) == len(target.elts):
        for item, part in zip(target.elts, value):
            _bind(item, part, names)
    else:
        raise _NotPlain


def plain_answer(source, name):
    """The value ``source`` gives ``name`` when it is only assignments of arithmetic on numbers, else None.

    Nothing of the student's code runs: the expressions are read with ``ast`` and only numbers,
    + - * / // % ** and names assigned before are allowed.
    """
    try:
        tree = ast.parse(source)
        names = {}
        for statement in tree.body:
            if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                continue  # a docstring-like line
            if not isinstance(statement, ast.Assign):
                return None
            value = _arith(statement.value, names)
            for target in statement.targets:
                _bind(target, value, names)
    except (SyntaxError, _NotPlain, ArithmeticError, ValueError, TypeError):
        return None
    return names.get(name)


def answer_name(exercise):
    """The variable an exercise's answer goes into: the last one its reference solution assigns."""
    targets = [t.id for s in ast.parse(exercise.solution).body if isinstance(s, ast.Assign)
               for t in s.targets if isinstance(t, ast.Name)]
    return targets[-1] if targets else None


def rejudge(exercise, source):
    """True/False: the exercise's own check on the plain answer in ``source``; None when it cannot run here."""
    if exercise.id not in REJUDGED or source is None:
        return None
    value = plain_answer(source, answer_name(exercise))
    if value is None:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return exercise.judge(value, {}).passed
        except Exception:  # a check that cannot run on this value falls back to the recorded verdict
            return None


def grade_exercises(run, row):
    from labkit.course import exercises as framework

    recorded = {}
    path = run.root / framework.RESULTS_FILE
    if not path.is_file():
        row.problem(framework.RESULTS_FILE, "missing: no exercise check was recorded")
    else:
        try:
            recorded = framework.read_results(run.root)
        except ValueError as err:
            row.problem(framework.RESULTS_FILE, str(err))
    by_notebook = {}
    for notebook_name, exercise in all_exercises():
        prefix = notebook_name.split("_", 1)[0]
        if prefix not in by_notebook:
            notebook = run.notebook(prefix)
            module = framework.module_for(notebook_name)
            by_notebook[prefix] = (notebook, writeup.exercise_answers(notebook, module.EXERCISES))
        notebook, answers = by_notebook[prefix]
        result = recorded.get(exercise.id)
        again = rejudge(exercise, answers.get(exercise.id))
        if again is not None:
            row.exercises[exercise.id] = f"{'pass' if again else 'fail'} (recomputed)"
            if result is not None and bool(result.get("passed")) != again:
                row.problem(framework.RESULTS_FILE,
                            f"{exercise.id} is recorded as {'passed' if result.get('passed') else 'not passed'}, "
                            f"but its answer in notebooks/{notebook.name} {'passes' if again else 'fails'} the check")
        elif result is None:
            row.exercises[exercise.id] = "not checked"
        elif result.get("passed"):
            row.exercises[exercise.id] = "pass (recorded)"
        else:
            row.exercises[exercise.id] = f"{result.get('status', 'fail')} (recorded)"


# -- accuracy from the raw answers ----------------------------------------------------------------
def _differs(a, b):
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return True
    if math.isnan(a) and math.isnan(b):
        return False
    return abs(a - b) > TOLERANCE


def grade_accuracy(run, row):
    from labkit.data.answers import answer_dish
    from labkit.data.dishes import get_dish
    from labkit.eval.evaluate import Report

    name = "comparison.json"
    comp = run.json(name)
    if not isinstance(comp, dict):
        row.problem(name, run.errors.get(name, "not a JSON object"))
        return
    for side in SIDES:
        key = f"{side}_report"
        raw = comp.get(key)
        if not isinstance(raw, dict) or not isinstance(raw.get("answers"), list):
            row.problem(name, f"no raw answers ({key}.answers): the {side} model's accuracy cannot be recomputed")
            continue
        try:
            answers = Report.from_json(raw)
        except (KeyError, TypeError) as err:
            row.problem(name, f"{key}.answers: an answer lacks {err} (image, question, expected, answer)")
            continue
        for group in GROUPS:
            value = answers.accuracy(group)
            row.accuracy[f"{group}_{side}"] = value
            summary = (comp.get(group) or {}).get(side) if isinstance(comp.get(group), dict) else None
            if _differs(summary, value):
                shown = f"{summary:.0%}" if isinstance(summary, (int, float)) else repr(summary)
                count = answers.group(group)
                row.problem(name, f"{group}.{side} says {shown}, but its raw answers ({key}.answers) give "
                                  f"{value:.0%} ({sum(a.correct for a in count)}/{len(count)})")
            own = (raw.get("accuracy") or {}).get(group)
            if own is not None and _differs(own, value):
                row.problem(name, f"{key}.accuracy.{group} says {own:.0%}, but its answers give {value:.0%}")
        per_dish = answers.per_dish()
        for entry in comp.get("per_dish") or []:
            dish, share = entry.get("dish"), entry.get(side)
            if dish in per_dish and _differs(share, per_dish[dish][0] / per_dish[dish][1]):
                right, total = per_dish[dish]
                row.problem(name, f"per_dish {dish} {side} says {share:.0%}, but its raw answers give "
                                  f"{right / total:.0%} ({right}/{total})")
        saved_named = [(i, a) for i, a in enumerate(raw["answers"]) if a.get("named") != answer_dish(a["answer"])]
        if saved_named:
            i, a = saved_named[0]
            row.problem(name, f"{key}.answers: {len(saved_named)} saved 'named' disagree with the answer text "
                              f"(first: #{i} named {a.get('named')!r}, answer {a['answer']!r})")
        for i, a in enumerate(raw["answers"]):
            key_of_picture = Path(str(a["image"])).stem.rsplit("-", 1)[0]
            try:
                shown = get_dish(key_of_picture).name
            except (KeyError, ValueError):
                continue  # a picture not named after its dish (FoodieQA): nothing to compare
            if shown != a["expected"]:
                row.problem(name, f"{key}.answers #{i}: expected {a['expected']!r}, but the picture {a['image']} "
                                  f"shows {shown}")
                break


# -- training ---------------------------------------------------------------------------------------
def grade_training(run, row):
    from labkit.train import finetune

    name = "finetune.json"
    tune = run.json(name)
    if not isinstance(tune, dict):
        row.problem(name, run.errors.get(name, "not a JSON object"))
        return
    recorded = tune.get("iterations")
    row.train_s = tune.get("wall_s")
    if not isinstance(row.train_s, (int, float)):
        row.problem(name, "no training time (wall_s)")
        row.train_s = None
    scalars = finetune.scalars_file(run.root / "finetune" / "xtuner")
    if scalars is None:
        row.problem("finetune/xtuner/*/vis_data/scalars.json", "missing: iterations taken from finetune.json")
        row.iterations = recorded if isinstance(recorded, int) else None
        return
    shown = scalars.relative_to(run.root)
    try:
        losses = finetune.read_losses(scalars.parent.parent.parent)
    except finetune.TrainingError as err:
        row.problem(shown, str(err).splitlines()[0])
        return
    if not losses:
        row.problem(shown, "logs no loss: training did not run")
        return
    row.iterations = losses[-1][0]
    if recorded != row.iterations:
        row.problem(name, f"iterations says {recorded}, but mmengine's log {shown} ends at iteration {row.iterations}")
    final = tune.get("final_loss")
    if isinstance(final, (int, float)) and abs(final - losses[-1][1]) > LOSS_DIGITS:
        row.problem(name, f"final_loss says {final:.4f}, but {shown} logs {losses[-1][1]:.4f}")


# -- the publish check --------------------------------------------------------------------------------
def publish_check(folder):
    """``(verdict, findings)`` of labkit's publish check on a model folder; never raises.

    The check lives in ``labkit.convert.publish`` (``check_folder(path) -> findings``, empty when the
    folder is ready); where that module is absent the verdict is "publish check not available".
    """
    try:
        from labkit.convert.publish import check_folder
    except ImportError as err:
        if getattr(err, "name", None) in ("labkit.convert.publish", None) or "check_folder" in str(err):
            return "publish check not available", []
        return f"publish check could not be imported: {err}", []
    try:
        result = check_folder(folder)
    except Exception as err:  # the check's own failure is one student's problem, not the table's
        return f"publish check failed: {type(err).__name__}: {err}", []
    findings = getattr(result, "findings", result)
    findings = [str(f) for f in (findings or [])]
    ok = getattr(result, "ok", None)
    passed = (not findings) if ok is None else bool(ok)
    return ("pass" if passed else "fail"), findings


def grade_publish(run, row, kind):
    if kind.startswith("write-up"):
        row.publish = "not checked: a write-up holds no tuned model (grade the run folder for this)"
        return
    conv = run.json("conversion.json", quiet=True)
    recorded = conv.get("out_dir") if isinstance(conv, dict) else None
    folder = run.local(recorded, "tuned-model")
    if folder is None or not folder.is_dir():
        row.publish = "no tuned model"
        row.problem("tuned-model", f"missing (conversion.json out_dir: {recorded})")
        return
    row.publish, findings = publish_check(folder)
    for finding in findings:
        row.problem(folder.name, finding)


# -- one student, the class ------------------------------------------------------------------------
def grade_one(path) -> Row:
    """One student's row; every problem is recorded in it, nothing is raised."""
    row = Row(student=student_name(path), source=str(path))
    with opened(path, row) as root:
        if root is None:
            return row
        run = writeup.RunFolder(root)
        for part in (grade_exercises, grade_accuracy, grade_training,
                     lambda r, w: grade_publish(r, w, row.kind)):
            try:
                part(run, row)
            except Exception as err:  # an unforeseen shape of one file must not stop the class table
                row.problem(root.name, f"could not be graded ({type(err).__name__}: {err})")
    return row


def grade(paths):
    return [grade_one(path) for path in paths]


def columns(rows):
    exercise_ids = [e.id for _, e in all_exercises()]
    return (["student", "source", "kind", "exercises_passed"] + exercise_ids
            + [f"{g}_{s}" for g in GROUPS for s in SIDES] + ["iterations", "train_s", "publish", "problems"])


def _values(row, names):
    values = {"student": row.student, "source": row.source, "kind": row.kind,
              "exercises_passed": row.exercises_passed, "iterations": row.iterations,
              "train_s": None if row.train_s is None else round(row.train_s, 1),
              "publish": row.publish, "problems": "; ".join(row.problems)}
    values.update(row.exercises)
    values.update({k: round(v, 4) for k, v in row.accuracy.items()})
    return ["" if values.get(n) is None else values.get(n) for n in names]


def write_csv(rows, path):
    names = columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(names)
    writer.writerows(_values(row, names) for row in rows)
    return fileio.write_text(path, buffer.getvalue(), encoding="utf-8-sig")  # -sig: spreadsheets read UTF-8


def class_markdown(rows):
    names = [n for n in columns(rows) if n not in ("source", "problems")]
    lines = ["# 班级成绩表 class table", "",
             f"{len(rows)} 份作业 hand-ins；准确率由保存的原始回答重新计算 (accuracy recomputed from the raw answers).", "",
             "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in rows:
        cells = []
        for name, value in zip(names, _values(row, names)):
            if name in {f"{g}_{s}" for g in GROUPS for s in SIDES} and value != "":
                value = f"{value:.0%}"
            cells.append(writeup._cell(value))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## 问题 problems", ""]
    for row in rows:
        lines += [f"### {writeup._cell(row.student)} (`{row.source}`)", ""]
        lines += [f"- {writeup._cell(p)}" for p in row.problems] or ["- 无 none"]
        lines.append("")
    return "\n".join(lines)


def write_html(rows, path):
    return fileio.write_text(path, writeup.markdown_to_html(class_markdown(rows), "class table"))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="labkit grade",
                                     description="One class table (CSV + HTML) from students' run folders or zipped write-ups.")
    parser.add_argument("paths", nargs="+", type=Path, help="run folders, write-up folders or writeup.zip files")
    parser.add_argument("--out", type=Path, default=Path("class.csv"), help="the CSV table (default class.csv)")
    parser.add_argument("--html", type=Path, default=None, help="the HTML table (default: --out with .html)")
    args = parser.parse_args(argv)
    html_path = args.html or args.out.with_suffix(".html")
    for target in (args.out, html_path):
        if target.is_dir():
            print(f"error: {target} is a folder; give a file name for the table.", file=sys.stderr)
            return 2
    rows = grade(args.paths)
    write_csv(rows, args.out)
    write_html(rows, html_path)
    for row in rows:
        print(f"{row.student:<20} {row.kind:<18} exercises {row.exercises_passed or '-':<5} "
              f"problems {len(row.problems)}")
    print(f"class table: {args.out} and {html_path}")
    return 0
