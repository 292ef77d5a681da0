"""The teacher's class table: recomputed from the raw evidence, naming the file of every problem."""
import csv
import json
import sys
import types

import pytest

from labkit import cli
from labkit.course import grade, report
from run_folder import ITERATIONS, make_run


def edit_json(path, change):
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


@pytest.fixture(scope="module")
def classroom(tmp_path_factory):
    """alice: complete; bob: an edited summary; carol: broken; plus a folder and a file that are no runs."""
    root = tmp_path_factory.mktemp("class")
    alice = make_run(root / "alice")
    report.write_writeup(alice)
    bob = make_run(root / "bob")

    def boast(data):
        data["held_back"]["tuned"] = 1.0  # the raw answers: 0 of 6 held-back pictures right
        data["tuned_report"]["accuracy"]["held_back"] = 1.0

    def untaught(data):
        for answer in data["tuned_report"]["answers"]:
            if answer["expected"] in ("肠粉", "糖葫芦", "粽子"):
                answer["answer"], answer["named"] = "图中的菜是叉烧包。", "叉烧包"

    edit_json(bob / "comparison.json", untaught)
    edit_json(bob / "comparison.json", boast)
    edit_json(bob / "finetune.json", lambda d: d.update(iterations=100))
    edit_json(bob / "exercises.json", lambda d: d["exercises"]["01.image_tokens"].update(passed=False, status="wrong"))
    carol = root / "carol"
    carol.mkdir()
    (carol / "comparison.json").write_text("{ not json", encoding="utf-8")
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("no run here")
    (root / "dave.zip").write_bytes(b"PK\x03\x04 broken")
    paths = [alice, root / "alice" / "writeup.zip", bob, carol, root / "notes", root / "dave.zip", root / "erin"]
    return {row.student + ("+zip" if row.source.endswith("writeup.zip") else ""): row for row in grade.grade(paths)}


def test_a_complete_run_is_graded_from_its_raw_evidence(classroom):
    alice = classroom["alice"]
    assert alice.kind == "run folder"
    assert alice.accuracy == {"held_back_base": 0.0, "held_back_tuned": 1.0, "known_base": 1.0, "known_tuned": 1.0}
    assert alice.iterations == ITERATIONS and alice.train_s == 42.5
    assert alice.exercises["01.image_tokens"] == "pass (recomputed)"  # 9 * 256, re-judged by its own check
    assert alice.exercises["01.mlp1_parameters"] == "pass (recomputed)"
    assert alice.exercises["04.merge_one_layer"] == "wrong (recorded)"
    total = len(grade.all_exercises())
    assert alice.exercises_passed == f"{total - 1}/{total}"
    assert alice.publish in ("pass", "fail", "publish check not available")
    assert [p for p in alice.problems if not p.startswith("tuned-model")] == []


def test_the_zipped_writeup_gives_the_same_row_without_the_model(classroom):
    alice, zipped = classroom["alice"], classroom["alice+zip"]
    assert zipped.kind == "write-up (zip)"
    assert zipped.accuracy == alice.accuracy and zipped.iterations == alice.iterations
    assert zipped.exercises == alice.exercises and zipped.problems == []
    assert zipped.publish.startswith("not checked: a write-up holds no tuned model")


def test_a_summary_that_disagrees_with_the_raw_answers_is_named(classroom):
    bob = classroom["bob"]
    assert bob.accuracy["held_back_tuned"] == 0.0  # recomputed, not the 100 % the summary claims
    problems = "\n".join(bob.problems)
    assert "comparison.json: held_back.tuned says 100%, but its raw answers (tuned_report.answers) give 0% (0/6)" in problems
    assert "comparison.json: tuned_report.accuracy.held_back says 100%" in problems
    assert "comparison.json: per_dish 肠粉 tuned says 100%, but its raw answers give 0% (0/2)" in problems
    assert "finetune.json: iterations says 100, but mmengine's log finetune/xtuner/" in problems
    assert ("exercises.json: 01.image_tokens is recorded as not passed, but its answer in "
            "notebooks/01_architecture.ipynb passes the check") in problems


def test_broken_folders_get_a_row_naming_the_file(classroom):
    carol = classroom["carol"]
    assert carol.kind == "run folder" and carol.accuracy == {}
    problems = "\n".join(carol.problems)
    assert "comparison.json: not valid JSON" in problems
    assert "exercises.json: missing" in problems and "finetune.json: missing" in problems
    assert "not a run folder" in classroom["notes"].problems[0] and classroom["notes"].kind == "not a run"
    assert "neither a folder nor a zip file" in classroom["dave"].problems[0]
    assert "no such file or folder" in classroom["erin"].problems[0]


def test_the_class_table_as_csv_and_html(classroom, tmp_path):
    rows = list(classroom.values())
    grade.write_csv(rows, tmp_path / "class.csv")
    grade.write_html(rows, tmp_path / "class.html")
    with open(tmp_path / "class.csv", encoding="utf-8-sig", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["student"] for r in table] == [r.student for r in rows]
    bob = next(r for r in table if r["student"] == "bob")
    assert bob["held_back_tuned"] == "0.0" and "comparison.json: held_back.tuned says 100%" in bob["problems"]
    assert table[0]["01.image_tokens"] == "pass (recomputed)" and table[0]["iterations"] == str(ITERATIONS)
    page = (tmp_path / "class.html").read_text(encoding="utf-8")
    assert "<table>" in page and "<td>bob</td>" in page and "comparison.json: not valid JSON" in page


def test_the_command_writes_both_tables(tmp_path, capsys):
    run = make_run(tmp_path / "frank")
    assert cli.main(["grade", str(run), str(tmp_path / "missing"), "--out", str(tmp_path / "out" / "class.csv")]) == 0
    assert (tmp_path / "out" / "class.csv").is_file() and (tmp_path / "out" / "class.html").is_file()
    assert "frank" in capsys.readouterr().out


def test_the_publish_check_is_called_through_its_adapter(tmp_path, monkeypatch):
    run = make_run(tmp_path / "gina")
    seen = []

    def check_folder(path):
        seen.append(path)
        return ["README.md: no model card"]

    fake = types.ModuleType("labkit.convert.publish")
    fake.check_folder = check_folder
    monkeypatch.setitem(sys.modules, "labkit.convert.publish", fake)
    row = grade.grade_one(run)
    assert seen == [run / "tuned-model"] and row.publish == "fail"
    assert "tuned-model: README.md: no model card" in row.problems
    fake.check_folder = lambda path: []
    assert grade.grade_one(run).publish == "pass"


def test_the_publish_check_missing_is_said_plainly(monkeypatch):
    monkeypatch.setitem(sys.modules, "labkit.convert.publish", None)  # importing it raises ImportError
    assert grade.publish_check("anywhere") == ("publish check not available", [])


@pytest.mark.parametrize("source, value", [
    ("n = 9 * 256", 2304),
    ("cols, rows = 4, 2\ntiles = cols * rows + 1\nn = tiles * (448 // 14) ** 2 // 4", 2304),
    ("n = __import__('os').getpid()", None),
    ("n = 2 ** 10 ** 10", None),
    ("n = ____", None),
    ("import os\nn = 1", None),
])
def test_only_plain_arithmetic_is_read_and_nothing_runs(source, value):
    assert grade.plain_answer(source, "n") == value


def test_the_rejudged_exercises_exist_and_need_no_run():
    ids = {e.id: e for _, e in grade.all_exercises()}
    assert set(grade.REJUDGED) <= set(ids)
    for exercise_id in grade.REJUDGED:
        assert grade.answer_name(ids[exercise_id]) is not None
