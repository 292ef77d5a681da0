"""Training settings, data and GPU budgets that would give silent wrong results: refused before launch.

Part of the bad-input checks (docs/checks.md), one file per stage. Every case uses real files: a
copy of the committed tiny base model, real safetensors, real JSON, real pictures, the real
command lines. Each test failed on the code before the fix.
"""
from __future__ import annotations

import math
import re

import pytest

from labkit.course import base_model
from labkit.fileio import REPO_ROOT


def xtuner_model_type_settings(data, **overrides):
    """XTuner's own InternVL_V1_5 model type (bf16 weights, full logits), on the base model."""
    from labkit.train import settings
    s = settings.tiny_lora_cpu().replace(
        model_path=str(base_model.ASSET_DIR), data_paths=str(data["food"]["train"]),
        image_folder=str(data["image_folder"]), batch_size=4, max_epochs=1, cpu_threads=1, replay=0,
        lean_logits=False, weights_dtype="bfloat16", gradient_checkpointing=True)
    s = s.replace(**overrides)
    assert not s.uses_lean_model
    return s


@pytest.mark.parametrize("lean", [False, True], ids=["xtuner-model-type", "labkit-lean"])
def test_max_length_below_one_pictures_tokens_is_refused_before_launch(food_one, tmp_path, lean):
    from labkit.train import finetune
    from labkit.train.settings import SettingsError

    s = xtuner_model_type_settings(food_one, max_length=40)
    if lean:
        s = s.replace(lean_logits=True, weights_dtype="float32")
    with pytest.raises(SettingsError, match=r"max_length=40 is too small: .*train.json, record \d+ .*needs \d+ tokens"):
        finetune.train(s, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing launched, nothing written


def test_check_losses_refuses_nan_and_infinity(tmp_path):
    from labkit.train import finetune
    finetune.check_losses([(1, 2.0), (2, 1.5)], tmp_path / "train.log")
    for bad in (math.nan, math.inf):
        with pytest.raises(finetune.TrainingError, match="not a finite number .*iteration 2"):
            finetune.check_losses([(1, 2.0), (2, bad)], tmp_path / "train.log")


@pytest.mark.slow
def test_a_nan_loss_run_is_a_failure_not_a_checkpoint(food_one, tmp_path):
    """XTuner's own model type with every answer cut off logs loss NaN, exits 0 and saves iter_4.pth."""
    from labkit.train import finetune
    s = xtuner_model_type_settings(food_one, max_length=40)
    with pytest.raises(finetune.TrainingError, match="not a finite number") as err:
        finetune.train(s, tmp_path / "run", progress=False, validate=False)  # validate=False: let it run
    assert "nan" in str(err.value)
    assert not (tmp_path / "run" / finetune.RESULT).exists()
    with pytest.raises(FileNotFoundError):
        finetune.load_result(tmp_path / "run")


def test_a_folder_given_as_annotation_file_is_named(food_one):
    from labkit.train import finetune
    s = xtuner_model_type_settings(food_one, data_paths=str(food_one["image_folder"]))
    with pytest.raises(IsADirectoryError, match=re.escape(str(food_one["image_folder"])) + ": is a folder"):
        finetune.check_data(s)


@pytest.mark.parametrize("name, value", [("weight_decay", math.nan), ("weight_decay", math.inf),
                                         ("max_norm", math.inf)])
def test_settings_refuse_nan_and_infinity(name, value):
    from labkit.train import settings
    with pytest.raises(settings.SettingsError, match=f"setting {name}={value!r} is not allowed"):
        settings.tiny_lora_cpu().replace(**{name: value})


@pytest.mark.parametrize("budget", ["-24GB", "H200 -24GB", "0GB", "0MB", math.nan, math.inf],
                         ids=["minus-24GB", "card-minus-24GB", "0GB", "0MB", "nan", "inf"])
def test_budgets_that_are_not_positive_finite_sizes_are_refused(budget):
    from labkit.train import plan
    with pytest.raises(ValueError, match=re.escape(repr(budget) if isinstance(budget, float) else budget)):
        plan.parse_budget(budget)
    estimate = plan.estimate(REPO_ROOT / "labkit" / "assets" / "internvl2-2b" / "config.json", batch_size=8)
    with pytest.raises(ValueError):
        plan.fits(estimate, budget)  # never "fits at batch 8"


@pytest.mark.parametrize("share", ["0%", "150%", "100.5%", "0"])
def test_shares_outside_0_to_100_percent_are_refused(share):
    from labkit.train import plan
    with pytest.raises(ValueError, match=r"\(0, 100\] %.*got " + re.escape(share)):
        plan.parse_budget(f"A100 80GB x {share}")
    assert plan.parse_budget("A100 80GB x 100%").gib == 80.0


def test_plan_refuses_training_settings_it_does_not_model():
    from labkit.train import plan
    from labkit.train.settings import course_gpu, tiny_lora_cpu
    config = REPO_ROOT / "labkit" / "assets" / "internvl2-2b" / "config.json"
    with pytest.raises(ValueError, match="weights_dtype 'float32' is not planned for"):
        plan.estimate(config, tiny_lora_cpu())  # never planned as if its weights were bf16
    with pytest.raises(ValueError, match="method='full' with freeze_llm=True"):
        plan.estimate(config, course_gpu().replace(method="full", freeze_llm=True))
    with pytest.raises(ValueError, match="settings must be a labkit.train.settings.Settings .*got dict"):
        plan.estimate(config, {"batch_size": 2})
    with pytest.raises(ValueError, match="'max_epochs' is a training setting that does not change the memory plan"):
        plan.recommend(config, "24GB", course_gpu(), max_epochs=2)
