"""Annotation files, FoodieQA downloads and data folders that are wrong: named, and no good file lost.

Part of the bad-input checks (docs/checks.md), one file per stage. Every case uses real files: a
copy of the committed tiny base model, real safetensors, real JSON, real pictures, the real
command lines. Each test failed on the code before the fix.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import current_umask, one_record_file, run_cli


def test_a_nul_byte_in_an_image_path_is_a_validation_problem(food_one, tmp_path):
    from labkit.data.validate import validate

    record = json.loads(Path(food_one["food"]["train"]).read_text(encoding="utf-8"))[0]
    record["image"] = "food/train/a\0b.jpg"
    annotation = one_record_file(tmp_path / "nul.json", record)
    report = validate(annotation, food_one["image_folder"])  # used to raise "ValueError: embedded null byte"
    assert not report.ok and "U+0000 (a NUL byte)" in report.summary() and "record 1" in report.summary()
    assert "\0" not in report.summary()
    done = run_cli("labkit", "validate", annotation, "--image-folder", food_one["image_folder"])
    assert done.returncode == 1 and "NUL byte" in done.stdout and "Traceback" not in done.stderr


def test_an_annotation_file_with_a_byte_order_mark_gets_its_own_advice(tmp_path):
    from labkit.data.validate import AnnotationFormatError, read_annotations

    annotation = tmp_path / "train.json"
    annotation.write_bytes(b"\xef\xbb\xbf[]")
    with pytest.raises(AnnotationFormatError, match=re.escape(str(annotation)) + ": starts with a byte-order mark"):
        read_annotations(annotation)


def test_data_build_inside_a_file_is_a_clear_error(tmp_path):
    notes = tmp_path / "notes"
    notes.write_text("mine", encoding="utf-8")
    done = run_cli("labkit", "data", "build", notes / "data")
    assert done.returncode == 2 and f"{notes}: is a file" in done.stderr and "Traceback" not in done.stderr


def test_foodieqa_with_no_usable_question_is_a_failure(foodie, tmp_path):
    from labkit.data import foodieqa
    out = tmp_path / "none.json"
    with pytest.raises(ValueError, match=re.escape(str(foodie / foodieqa.QUESTIONS_FILE)) + ".*none of its 4"):
        foodieqa.convert_foodieqa(foodie, out, question_types=["no-such-type"])
    assert not out.exists()
    (foodie / "images" / "cf_01.jpg").unlink()
    (foodie / "images" / "yb_01.jpg").unlink()
    done = run_cli("labkit", "foodieqa", foodie, out)
    assert done.returncode == 2 and "none of its 4 questions" in done.stderr and not out.exists()


def test_foodieqa_validates_before_it_replaces_a_good_file(foodie, tmp_path):
    from labkit.data import foodieqa
    from labkit.data.validate import DataValidationError

    out = tmp_path / "eval.json"
    foodieqa.convert_foodieqa(foodie, out)
    assert out.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # readable by the course, as open() makes it
    good = out.read_bytes()
    (foodie / "images" / "cf_01.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a picture any more")
    with pytest.raises(DataValidationError, match="cf_01.jpg"):
        foodieqa.convert_foodieqa(foodie, out, overwrite=True)
    assert out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FoodieQA", "eval.json"]  # no temp file left
    fresh = tmp_path / "fresh.json"
    with pytest.raises(DataValidationError):
        foodieqa.convert_foodieqa(foodie, fresh)
    assert not fresh.exists()


@pytest.mark.parametrize("content, said", [(b'[{"question": "x",', "line 1, column"),
                                           (b'[{"question": "\xff\xfe"}]', "not UTF-8")],
                         ids=["json-syntax", "bad-utf8"])
def test_foodieqa_questions_file_errors_name_the_file(foodie, tmp_path, content, said):
    from labkit.data import foodieqa
    source = foodie / foodieqa.QUESTIONS_FILE
    source.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(source)) + ": " + said):
        foodieqa.convert_foodieqa(foodie, tmp_path / "eval.json")
    done = run_cli("labkit", "foodieqa", foodie, tmp_path / "eval.json")
    assert done.returncode == 2 and str(source) in done.stderr and "Traceback" not in done.stderr
