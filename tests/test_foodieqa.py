"""FoodieQA converter on a small fixture in the real layout, licence notice and refusal included."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from labkit.data import foodieqa
from labkit.data.paint import render_to_file
from labkit.data.validate import validate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def foodie(tmp_path):
    """FOODIE_ROOT with sivqa_tidy.json and images/, shaped like the downloaded data set."""
    root = tmp_path / "FoodieQA"
    render_to_file("肠粉", 0, root / "images" / "cf_01.jpg")
    render_to_file("月饼", 0, root / "images" / "yb_01.jpg")

    def question(qid, answer, food_file, name, qtype="food_name"):
        return {"question": "图片中的食物是什么？", "choices": ["叉烧", name, "虾饺", "饺子"],
                "answer": answer, "question_type": qtype, "question_id": qid,
                "food_name": name, "question_en": "What is the food?",
                "choices_en": ["a", "b", "c", "d"],
                "food_meta": {"main_ingredient": ["米"], "id": qid, "food_name": name,
                              "food_type": "粤菜", "food_location": "餐馆", "food_file": food_file}}

    items = [
        question("q1", "1", "images/cf_01.jpg", "肠粉"),                # answer as a string digit
        question("q2", 1, "yb_01.jpg", "月饼", qtype="region"),         # path relative to images/
        question("q3", 7, "images/cf_01.jpg", "肠粉"),                  # answer out of range
        question("q4", 0, "images/missing.jpg", "叉烧"),                # photo absent
    ]
    (root / foodieqa.QUESTIONS_FILE).write_text(json.dumps(items, ensure_ascii=False),
                                                encoding="utf-8")
    return root


def test_eval_conversion(foodie, tmp_path, capsys):
    out = tmp_path / "foodie_eval.json"
    summary = foodieqa.convert_foodieqa(foodie, out)
    assert "CC BY-NC-ND 4.0" in capsys.readouterr().out
    assert summary["written"] == 2 and [i for i, _ in summary["skipped"]] == [2, 3]
    assert "outside the 4 choices" in summary["skipped"][0][1]
    assert "not found" in summary["skipped"][1][1]
    records = json.loads(out.read_text(encoding="utf-8"))
    first, second = records
    assert first["image"] == "images/cf_01.jpg" and second["image"] == "images/yb_01.jpg"
    assert first["conversations"][0] == {
        "from": "human", "value": "<image>\n图片中的食物是什么？ A. 叉烧 B. 肠粉 C. 虾饺 D. 饺子"}
    assert first["conversations"][1] == {"from": "gpt", "value": "B，图中的菜是肠粉。"}
    assert second["conversations"][1]["value"] == "B，图中的菜是月饼。"
    assert validate(out, foodie).ok


def test_question_type_filter(foodie, tmp_path):
    summary = foodieqa.convert_foodieqa(foodie, tmp_path / "region.json", question_types=["region"])
    assert summary["written"] == 1 and summary["skipped"] == []


def test_training_file_needs_acknowledgement(foodie, tmp_path, capsys):
    out = tmp_path / "train.json"
    with pytest.raises(foodieqa.LicenceError, match="evaluation only"):
        foodieqa.convert_foodieqa(foodie, out, purpose="train")
    assert not out.exists()
    assert "CC BY-NC-ND 4.0" in capsys.readouterr().out  # the notice comes even when refusing
    summary = foodieqa.convert_foodieqa(foodie, out, purpose="train", acknowledge_terms=True)
    assert summary["written"] == 2 and out.exists()


def test_does_not_overwrite_and_needs_the_real_layout(foodie, tmp_path):
    out = tmp_path / "eval.json"
    foodieqa.convert_foodieqa(foodie, out)
    with pytest.raises(FileExistsError):
        foodieqa.convert_foodieqa(foodie, out)
    with pytest.raises(FileNotFoundError, match="sivqa_tidy.json"):
        foodieqa.convert_foodieqa(tmp_path / "nowhere", tmp_path / "x.json")


def test_cli_prints_licence_and_refuses_training(foodie, tmp_path):
    run = [sys.executable, "-m", "labkit", "foodieqa", str(foodie)]
    refused = subprocess.run(run + [str(tmp_path / "t.json"), "--purpose", "train"],
                             capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 2 and "CC BY-NC-ND" in refused.stdout
    assert "refusing to write a TRAINING file" in refused.stderr
    done = subprocess.run(run + [str(tmp_path / "e.json")], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0 and "CC BY-NC-ND" in done.stdout and "wrote 2 records" in done.stdout
