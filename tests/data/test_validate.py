"""The validator catches every kind of bad record, names the record and file, and exits non-zero."""

import json
import os
import subprocess
import sys

import pytest

from labkit.data.paint import render_to_file
from labkit.data.validate import (AnnotationFormatError, DataValidationError, read_annotations,
                             validate)
from labkit.fileio import REPO_ROOT



def record(image="a.jpg", question="<image>\n图中的菜是什么？", answer="图中的菜是肠粉。",
           human="human", gpt="gpt"):
    return {"image": image, "conversations": [{"from": human, "value": question},
                                              {"from": gpt, "value": answer}]}


@pytest.fixture
def root(tmp_path):
    """An image folder with two good pictures and an annotation writer."""
    images = tmp_path / "images"
    render_to_file("肠粉", 0, images / "a.jpg")
    render_to_file("叉烧", 0, images / "sub" / "b.jpg")
    return images


def write(tmp_path, records, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def only_problem(report):
    assert not report.ok and len(report.problems) == 1, report.summary()
    return report.problems[0]


def test_good_file_passes(tmp_path, root):
    path = write(tmp_path, [record(), record("sub/b.jpg", answer="图中的菜是叉烧。")])
    report = validate(path, root)
    assert report.ok and report.records == 2 and report.images_checked == 2
    assert report.raise_if_bad() is report


def test_missing_image(tmp_path, root):
    problem = only_problem(validate(write(tmp_path, [record(), record("gone.jpg")]), root))
    assert problem.record == 1 and problem.file.endswith("gone.jpg") and "not found" in problem.message
    assert "record 2 (data[1])" in str(problem)


def test_corrupt_jpeg_is_caught_by_decoding(tmp_path, root):
    good = (root / "a.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(good[: len(good) // 2])  # header fine, pixels missing
    (root / "noise.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    report = validate(write(tmp_path, [record("cut.jpg"), record("noise.jpg")]), root)
    assert [p.record for p in report.problems] == [0, 1]
    assert all("cannot be decoded" in p.message for p in report.problems)


def test_zero_byte_file(tmp_path, root):
    (root / "empty.jpg").write_bytes(b"")
    problem = only_problem(validate(write(tmp_path, [record("empty.jpg")]), root))
    assert "empty (0 bytes)" in problem.message


@pytest.mark.parametrize("path", ["../outside.jpg", "sub/../../outside.jpg", "/etc/passwd",
                                  "C:\\pictures\\a.jpg", "..\\outside.jpg"])
def test_paths_escaping_the_root(tmp_path, root, path):
    render_to_file("肠粉", 1, tmp_path / "outside.jpg")  # exists, but outside the root
    problem = only_problem(validate(write(tmp_path, [record(path)]), root))
    assert ("'..'" in problem.message) or ("absolute" in problem.message)


def test_symlink_leading_outside(tmp_path, root):
    render_to_file("肠粉", 1, tmp_path / "outside.jpg")
    os.symlink(tmp_path / "outside.jpg", root / "link.jpg")
    os.symlink(root / "a.jpg", root / "inside_link.jpg")  # a link within the root is fine
    report = validate(write(tmp_path, [record("link.jpg"), record("inside_link.jpg")]), root)
    problem = only_problem(report)
    assert problem.record == 0 and "symbolic link" in problem.message


def test_two_image_tags(tmp_path, root):
    bad = record(question="<image>\n<image>\n图中的菜是什么？")
    problem = only_problem(validate(write(tmp_path, [bad]), root))
    assert "found 2 <image> tags" in problem.message


def test_no_image_tag_or_tag_in_answer(tmp_path, root):
    report = validate(write(tmp_path, [record(question="图中的菜是什么？"),
                                       record(answer="<image>图中的菜是肠粉。",
                                              question="图中的菜是什么？")]), root)
    messages = [p.message for p in report.problems]
    assert "found 0 <image> tags; each record needs exactly one" in messages
    assert any("only a human turn may" in m for m in messages)


def test_wrong_from_value_and_order(tmp_path, root):
    report = validate(write(tmp_path, [record(human="user"), record(human="gpt", gpt="human")]),
                      root)
    by_record = {}
    for p in report.problems:
        by_record.setdefault(p.record, []).append(p.message)
    assert any("from='user'" in m and "'human' or 'gpt'" in m for m in by_record[0])
    assert any("'human' was expected" in m for m in by_record[1])


def test_json_syntax_error_reports_line_and_column(tmp_path, root):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"image": "a.jpg",\n   "conversations": []\n  }\n  {"image": "b.jpg"}\n]\n')
    report = validate(path, root)
    problem = only_problem(report)
    assert problem.record is None and "line 5, column 3" in problem.message
    with pytest.raises(AnnotationFormatError, match="line 5, column 3"):
        read_annotations(path)


def test_jsonl_is_read_and_its_errors_have_line_numbers(tmp_path, root):
    good = tmp_path / "ann.jsonl"
    good.write_text(json.dumps(record()) + "\n\n" + json.dumps(record("sub/b.jpg")) + "\n")
    assert validate(good, root).ok and len(read_annotations(good)) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(record()) + "\n{oops\n")
    with pytest.raises(AnnotationFormatError, match="line 2"):
        read_annotations(bad)


def test_pixel_limit_is_configurable(tmp_path, root):
    path = write(tmp_path, [record()])
    assert validate(path, root).ok
    problem = only_problem(validate(path, root, max_pixels=1000))
    assert "above the limit of 1000" in problem.message


def test_raise_if_bad_names_record_and_file(tmp_path, root):
    path = write(tmp_path, [record(), record("gone.jpg")])
    with pytest.raises(DataValidationError) as err:
        validate(path, root).raise_if_bad()
    text = str(err.value)
    assert "1 problem(s)" in text and "record 2" in text and "gone.jpg" in text and str(path) in text


def test_cli_exit_codes(tmp_path, root):
    good, bad = write(tmp_path, [record()]), write(tmp_path, [record("gone.jpg")], "bad.json")
    run = [sys.executable, "-m", "labkit", "validate", "--image-folder", str(root)]
    ok = subprocess.run(run + [str(good)], capture_output=True, text=True, cwd=REPO_ROOT)
    assert ok.returncode == 0 and "OK" in ok.stdout
    fail = subprocess.run(run + [str(bad)], capture_output=True, text=True, cwd=REPO_ROOT)
    assert fail.returncode == 1 and "image file not found" in fail.stdout
