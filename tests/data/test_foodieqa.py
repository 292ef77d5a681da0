"""FoodieQA converter on a small fixture in the real layout, licence notice and refusal included."""

import json
import subprocess
import sys

import pytest

from labkit.data import foodieqa
from labkit.data.validate import validate
from labkit.fileio import REPO_ROOT



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
                             capture_output=True, text=True, cwd=REPO_ROOT)
    assert refused.returncode == 2 and "CC BY-NC-ND" in refused.stdout
    assert "refusing to write a TRAINING file" in refused.stderr
    done = subprocess.run(run + [str(tmp_path / "e.json")], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0 and "CC BY-NC-ND" in done.stdout and "wrote 2 records" in done.stdout
