"""Exercises that check themselves: ``q.check(answer)``, ``q.hint()``, ``q.solution()``.

The pattern of Kaggle Learn's learntools, kept simple. A notebook binds its exercises once::

    from labkit.course.exercises import ____, nb01
    q1, q2, q3 = nb01.exercises(ws, model)

and every exercise is two code cells: one tagged ``exercise`` that the student fills in (it
starts as ``answer = ____``), then ``q1.check(answer)``. The check looks at the answer only
(never at cell ids or metadata, so a copied cell still checks), prints ✓ or what is wrong with
a hint in Chinese, and never raises: an unfilled or wrong answer leaves the rest of the
notebook running. Every check records ``{id, passed, status, message}`` in the run folder's
``exercises.json`` (written atomically), which a grading tool reads later.

The reference solutions live here, beside their checks, one module per notebook (``nb01``,
``nb04`` ...; each has an ``EXERCISES`` tuple in notebook order). The main job runs a *solved*
copy of each notebook: :func:`solve_notebook` replaces the k-th ``exercise`` cell by the k-th
exercise's solution, and :func:`failed_checks` then names every exercise whose check did not
pass (or never ran). The committed notebooks keep the student version.
"""
from __future__ import annotations

import importlib
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from labkit import fileio

RESULTS_FILE = "exercises.json"
EXERCISE_TAG = "exercise"


class _Blank:
    """The ``____`` a student replaces by an answer; a check that sees it says "not done yet"."""

    def __repr__(self):
        return "____"


____ = _Blank()


class Verdict:
    """What a judge found: passed or not, and the message shown (Chinese, English term at first use)."""

    def __init__(self, passed, message):
        self.passed, self.message = bool(passed), str(message)


def right(message="答对了 correct."):
    return Verdict(True, message)


def wrong(message):
    return Verdict(False, message)


def whole_number(answer):
    """``(the number, None)`` for a whole-number answer (3, 3.0 or "3"), else ``(None, the wrong verdict)``."""
    try:
        if isinstance(answer, bool) or not float(answer).is_integer():
            raise ValueError(f"{answer!r} is not a whole number")
        return int(answer), None
    except (TypeError, ValueError):
        return None, wrong(f"答案应是一个整数 integer，得到的是 {answer!r}。")


@dataclass
class Exercise:
    """One exercise: what it asks, how its answer is judged, a hint and the reference solution.

    ``judge(answer, context) -> Verdict`` compares the answer with a reference that labkit
    computes (from the model's own code where there is one); ``solution`` is the source that
    replaces the ``exercise`` cell in the solved copy, and what ``solution()`` prints.
    """

    id: str  # "01.pixel_shuffle": notebook number, then a name; the key in exercises.json
    title: str
    judge: Callable
    hint: str
    solution: str


@dataclass
class BoundExercise:
    """An exercise bound to one run: its workspace (where results go) and the notebook's objects."""

    exercise: Exercise
    workspace: object
    context: dict = field(default_factory=dict)

    @property
    def id(self):
        return self.exercise.id

    def check(self, answer=____):
        """Print ✓ or what is wrong (plus the hint) and record the result; never raise.

        Returns None, so a notebook cell shows only the printed verdict; the result is in
        ``exercises.json`` (:func:`read_results`).
        """
        if isinstance(answer, _Blank):
            verdict, status = wrong("还没做 not done yet：把 ____ 换成你的答案，再运行这一格。"), "not done"
        else:
            try:
                verdict = self.exercise.judge(answer, self.context)
            except Exception as err:  # a student's answer must never stop the notebook
                last = traceback.extract_tb(err.__traceback__)[-1]
                verdict = wrong(f"检查时出错，答案可能类型不对 the check could not use this answer: "
                                f"{type(err).__name__}: {err} (line {last.lineno})")
            status = "passed" if verdict.passed else "wrong"
        if verdict.passed:
            print(f"✓ {self.exercise.title}：{verdict.message}")
        else:
            print(f"✗ {self.exercise.title}：{verdict.message}")
            if status == "wrong":
                print(f"提示 hint：{self.exercise.hint}")
        try:
            record(self.workspace, self.id, verdict.passed, status, verdict.message)
        except OSError as err:  # a read-only run folder must not stop the notebook either
            print(f"(could not record the result in {RESULTS_FILE}: {err})")

    def hint(self):
        print(f"提示 hint：{self.exercise.hint}")

    def solution(self):
        print(f"参考答案 solution ({self.id}):\n{self.exercise.solution}")

    def __repr__(self):
        return f"<exercise {self.id}: {self.exercise.title}; .check(answer) / .hint() / .solution()>"


def bind(exercises, workspace, **context):
    """The notebook's exercises bound to its workspace (and objects a judge needs), in order."""
    return [BoundExercise(e, workspace, context) for e in exercises]


# -- results in the run folder --------------------------------------------------------------
def results_path(workspace):
    return Path(workspace.run_dir) / RESULTS_FILE


def read_results(run_dir):
    """``{exercise id: {"passed", "status", "message", "checked"}}`` recorded in ``run_dir``."""
    import json

    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); delete it and run the notebooks again.") from err
    return data.get("exercises", {})


def record(workspace, exercise_id, passed, status, message):
    """Write one check's result into ``exercises.json`` (the latest check of an exercise wins)."""
    results = read_results(workspace.run_dir)
    results[exercise_id] = {"passed": bool(passed), "status": status, "message": message,
                            "checked": datetime.now().isoformat(timespec="seconds")}
    return fileio.write_json(results_path(workspace), {"exercises": dict(sorted(results.items()))})


# -- the solved copy the main job runs ------------------------------------------------------
def module_for(notebook):
    """The exercise module of a notebook ("01_architecture.ipynb" -> ``nb01``), or None."""
    prefix = Path(notebook).name.split("_", 1)[0]
    try:
        return importlib.import_module(f"{__name__}.nb{prefix}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.nb{prefix}":
            raise
        return None


def exercises_of(notebook):
    module = module_for(notebook)
    return tuple(module.EXERCISES) if module else ()


def _handle(index):
    return f"q{index + 1}"


def solve_notebook(source, target):
    """Write a copy of ``source`` with each ``exercise`` cell replaced by its reference solution.

    The k-th ``exercise``-tagged cell gets the k-th solution of the notebook's module; the next
    code cell must call ``q<k>.check(``, so a cell moved out of order is caught here rather than
    checked against the wrong reference. Returns the ids of the exercises solved.
    """
    import nbformat

    book = nbformat.read(str(source), as_version=4)
    exercises = exercises_of(source)
    cells = [i for i, c in enumerate(book.cells) if EXERCISE_TAG in c.metadata.get("tags", [])]
    name = Path(source).name
    if len(cells) != len(exercises):
        raise ValueError(f"{name}: has {len(cells)} cells tagged '{EXERCISE_TAG}' but labkit.course.exercises "
                         f"defines {len(exercises)} exercises for it; tag one cell per exercise, in order.")
    for k, (index, exercise) in enumerate(zip(cells, exercises)):
        following = next((c for c in book.cells[index + 1:] if c.cell_type == "code"), None)
        if following is None or f"{_handle(k)}.check(" not in following.source:
            raise ValueError(f"{name}: the code cell after exercise cell {k + 1} ({exercise.id}) must call "
                             f"{_handle(k)}.check(...).")
        book.cells[index].source = exercise.solution
    fileio.write_text(target, nbformat.writes(book))
    return [e.id for e in exercises]


def failed_checks(run_dir, notebook):
    """Messages for each exercise of ``notebook`` whose last check in ``run_dir`` failed or never ran."""
    results = read_results(run_dir)
    problems = []
    for exercise in exercises_of(notebook):
        result = results.get(exercise.id)
        if result is None:
            problems.append(f"{exercise.id} ({exercise.title}): its check never ran")
        elif not result["passed"]:
            problems.append(f"{exercise.id} ({exercise.title}): {result['status']}: {result['message']}")
    return problems
