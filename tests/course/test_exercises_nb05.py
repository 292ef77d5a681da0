"""Notebook 05's exercises, checked against small hand-built evaluation reports (no model runs).

For each exercise: the reference solution passes, typical wrong answers are reported wrong with a
hint, and an unfilled answer says "not done yet"; the notebook's solved copy holds the solutions.
"""
from __future__ import annotations


import nbformat
import pytest

from labkit.course import comparison
from labkit.course import exercises as ex
from labkit.course.exercises import ____, nb05
from labkit.course.main import REPO_ROOT
from labkit.eval.evaluate import Answer, Report

NOTEBOOK = REPO_ROOT / "notebooks" / "05_comparison.ipynb"


def report(*triples):
    """A Report from (dish shown, dish said, how many times) triples."""
    answers = [Answer(image=f"{shown}-{k}.jpg", question="图中的菜是什么？", expected=shown,
                      answer=f"图中的菜是{said}。" if said else "不知道", named=said)
               for shown, said, times in triples for k in range(times)]
    return Report(model_dir="tiny", annotation="test.json", answers=answers)


BASE = report(("肠粉", "饺子", 4), ("饺子", "饺子", 4), ("小笼包", "小笼包", 4), ("烧卖", "烧卖", 3), ("烧卖", "虾饺", 1))
TUNED = report(("肠粉", "肠粉", 4), ("饺子", "饺子", 1), ("饺子", "肠粉", 3), ("小笼包", "小笼包", 2),
               ("小笼包", "肠粉", 1), ("小笼包", None, 1), ("烧卖", "烧卖", 4))
BENCH = {"base": {"held_back": 0.0, "known": 0.94},
         "runs": [{"mode": "off", "seed": 0, "replay": 0, "tuned": {"held_back": 1.0, "known": 0.89}},
                  {"mode": "on", "seed": 0, "replay": 72, "tuned": {"held_back": 0.97, "known": 0.92}},
                  {"mode": "off", "seed": 1, "replay": 0, "tuned": {"held_back": 1.0, "known": 0.93}},
                  {"mode": "on", "seed": 1, "replay": 72, "tuned": {"held_back": 1.0, "known": 0.94}}],
         "summary": {"off": {"held_back_mean": 1.0, "known_mean": 0.91},
                     "on": {"held_back_mean": 0.985, "known_mean": 0.93}}}


def results(ws):
    """What the checks recorded in the run folder (labkit's own reader of exercises.json)."""
    return ex.read_results(ws.run_dir)


def verdict(q, answer, ws, capsys):
    """Check as a notebook cell does: (recorded status, printed text)."""
    assert q.check(answer) is None
    return results(ws)[q.id]["status"], capsys.readouterr().out


def solution(q, **names):
    namespace = dict(names)
    exec(q.exercise.solution, namespace)  # noqa: S102 - labkit's own reference source
    return namespace


@pytest.fixture
def bound(ws):
    return nb05.exercises(ws, BASE, TUNED, BENCH)


def test_every_exercise_says_not_done_for_the_blank(ws, bound, capsys):
    assert [q.id for q in bound] == [e.id for e in nb05.EXERCISES]
    for q in bound:
        status, out = verdict(q, ____, ws, capsys)
        assert status == "not done" and "not done yet" in out and "提示" not in out


def test_per_dish_accuracy(ws, bound, capsys):
    q1 = bound[0]
    accuracy = solution(q1, tuned=TUNED)["accuracy"]
    assert accuracy == {"肠粉": 1.0, "饺子": 0.25, "小笼包": 0.5, "烧卖": 1.0}
    assert verdict(q1, accuracy, ws, capsys)[0] == "passed"
    cases = [
        ({k: r / t for k, (r, t) in BASE.per_dish().items()}, "基座模型"),  # the base model's
        (TUNED.per_dish(), "计数"),  # (right, total) counts, not shares
        ({k: 100 * v for k, v in accuracy.items()}, "百分数"),
        ({k: v for k, v in accuracy.items() if k != "烧卖"}, "少了这些菜：烧卖"),
        ({**accuracy, "饺子": 0.75}, "饺子 的准确率不对"),
        ([("肠粉", 1.0)], "dict"),
    ]
    for answer, said in cases:
        status, out = verdict(q1, answer, ws, capsys)
        assert status == "wrong" and said in out and "提示 hint" in out, (answer, out)


def test_most_confused_pair(ws, bound, capsys):
    q2 = bound[1]
    assert comparison.most_confused(TUNED) == [("饺子", "肠粉")]  # 3 times; (小笼包, 肠粉) once, None not counted
    pair = solution(q2, tuned=TUNED)["confused_pair"]
    assert pair == ("饺子", "肠粉")
    status, out = verdict(q2, pair, ws, capsys)
    assert status == "passed" and "3 次" in out
    assert verdict(q2, ["饺子", "肠粉"], ws, capsys)[0] == "passed"  # a list is a pair too
    cases = [(("肠粉", "饺子"), "顺序反了"), (("小笼包", "肠粉"), "只有 1 次"), (("烧卖", "虾饺"), "基座模型"),
             (("饺子", "饺子"), "两道菜一样"), (("虾饺", "烧卖"), "没有混淆过"), ("饺子", "一对")]
    for answer, said in cases:
        status, out = verdict(q2, answer, ws, capsys)
        assert status == "wrong" and said in out, (answer, out)


def test_a_tie_accepts_either_pair(ws, capsys):
    tied = report(("饺子", "肠粉", 2), ("小笼包", "肠粉", 2), ("肠粉", "肠粉", 3))
    q2 = nb05.exercises(ws, BASE, tied, BENCH)[1]
    for pair in (("饺子", "肠粉"), ("小笼包", "肠粉")):
        assert verdict(q2, pair, ws, capsys)[0] == "passed"


def test_replay_gain(ws, bound, capsys):
    q3 = bound[2]
    gain = solution(q3, bench=BENCH)["gain_points"]
    assert gain == pytest.approx(2.0)  # mean known 93 % with replay, 91 % without
    status, out = verdict(q3, gain, ws, capsys)
    assert status == "passed" and "+2.0" in out
    for answer, said in ((0.02, "百分点"), (-2.0, "符号反了"), (5, "不对"), ("two", "一个数")):
        status, out = verdict(q3, answer, ws, capsys)
        assert status == "wrong" and said in out, (answer, out)


def test_the_solved_notebook_holds_the_solutions(tmp_path):
    book = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [c for c in book.cells if ex.EXERCISE_TAG in c.metadata.get("tags", [])]
    assert len(tagged) == 3 and all(c.source.split("=")[1].strip().startswith("____") for c in tagged)
    assert ex.solve_notebook(NOTEBOOK, tmp_path / "05.ipynb") == [e.id for e in nb05.EXERCISES]
    solved = nbformat.read(tmp_path / "05.ipynb", as_version=4)
    assert [c.source for c in solved.cells if ex.EXERCISE_TAG in c.metadata.get("tags", [])] == \
        [e.solution for e in nb05.EXERCISES]


def test_replay_rows_and_over_prediction():
    rows = comparison.replay_rows(BENCH)
    assert [(r["mode"], r["seed"]) for r in rows] == [("off", 0), ("on", 0), ("off", 1), ("on", 1)]
    assert rows[0]["known_drop"] == pytest.approx(-0.05)
    text = comparison.format_replay_rows(BENCH)
    assert "on     mean" in text and "-1.0p" in text
    said = comparison.said_counts(TUNED)
    assert said["肠粉"] == 8  # 4 pictures of 肠粉, but said 8 times: over-prediction


def test_missing_benchmark_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="--replay both"):
        comparison.replay_benchmark(tmp_path / "nothing.json")
