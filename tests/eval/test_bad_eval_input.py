"""Evaluation checks its file and its limit before it loads a model.

Part of the bad-input checks (docs/checks.md), one file per stage. Every case uses real files: a
copy of the committed tiny base model, real safetensors, real JSON, real pictures, the real
command lines. Each test failed on the code before the fix.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import one_record_file

from labkit.course import base_model


@pytest.mark.parametrize("turns", [None, [{"from": "human", "value": "<image>\n这是什么菜？"}]],
                         ids=["no-conversations", "one-turn"])
def test_evaluate_validates_the_file_before_loading_a_model(food_one, tmp_path, turns):
    from labkit.eval.evaluate import evaluate
    from labkit.data.validate import DataValidationError

    record = json.loads(Path(food_one["food"]["train"]).read_text(encoding="utf-8"))[0]
    if turns is None:
        record.pop("conversations")
    else:
        record["conversations"] = turns
    annotation = one_record_file(tmp_path / "test.json", record)
    # the model folder does not even exist: the file's problem is what must be reported
    with pytest.raises(DataValidationError, match="(?s)" + re.escape(str(annotation)) + r".*record 1"):
        evaluate(tmp_path / "no-model", annotation, food_one["image_folder"])


@pytest.mark.parametrize("limit", [-1, 0])
def test_evaluate_refuses_a_limit_that_would_drop_samples_silently(food_one, limit):
    from labkit.eval.evaluate import evaluate

    with pytest.raises(ValueError, match=f"limit={limit}"):
        evaluate(base_model.ASSET_DIR, food_one["food"]["train"], food_one["image_folder"], limit=limit)
