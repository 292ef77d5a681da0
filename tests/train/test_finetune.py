"""labkit.train.finetune: XTuner's own training on the CPU, judged by evidence; bad input refused early.

The runs here are real: XTuner's trainer in a child process, the tiny model, a few samples. The
tests that train are marked ``slow``; the refusals before a launch are quick.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from labkit.train import finetune, settings
from labkit.checkpoints.folder import CheckpointError
from labkit.train.finetune import TrainingError
from labkit.data.validate import DataValidationError


def tiny_settings(model, data, **overrides):
    base = settings.tiny_lora_cpu().replace(
        model_path=str(model), data_paths=str(data["food"]["train"]), image_folder=str(data["image_folder"]),
        batch_size=4, max_epochs=2, cpu_threads=1, replay=0)  # a few pictures: no replay mix
    return base.replace(**overrides)


@pytest.fixture(scope="module")
def finished(tiny_checkpoint, food_one, tmp_path_factory):
    """One real tiny LoRA run, shared by the tests that inspect what it left."""
    seen = []
    work = tmp_path_factory.mktemp("ft-run") / "run"
    result = finetune.train(tiny_settings(tiny_checkpoint, food_one), work, progress=False,
                            on_loss=lambda i, loss: seen.append((i, loss)))
    return result, seen


@pytest.mark.slow
def test_tiny_lora_run_trains_the_planned_iterations(finished):
    result, seen = finished
    # 13 samples in groups of batch 4 -> 4 iterations per epoch (XTuner's sampler rounds up) x 2 epochs
    assert result.num_samples == 13
    assert result.planned_iterations == result.iterations == 8
    assert result.checkpoint == result.work_dir / "xtuner" / "iter_8.pth" and result.checkpoint.is_file()
    assert [i for i, _ in result.losses] == list(range(1, 9)) and seen == result.losses
    assert all(loss > 0 for _, loss in result.losses)
    # The losses are mmengine's JSON record; the log lines show the same values rounded to 4 digits.
    assert result.losses == finetune.read_losses(result.work_dir / "xtuner")
    log = result.log_path.read_text(encoding="utf-8")
    printed = [float(m) for m in re.findall(r"Iter\(train\) \[\s*\d+/\s*8\].*?\bloss: ([0-9.]+)", log)]
    assert printed == pytest.approx([loss for _, loss in result.losses], abs=5e-5)
    assert result.loss_curve.is_file() and result.loss_curve.read_bytes()[:4] == b"\x89PNG"
    assert "Traceback" not in log and "LeanInternVL: the output head runs on" in log


@pytest.mark.slow
def test_checkpoint_holds_lora_adapters_and_the_projector(finished):
    from labkit.convert.trained import read_trained_weights

    keys = read_trained_weights(finished[0].checkpoint).keys()
    assert any("lora_A" in k for k in keys) and any(k.startswith("model.mlp1.") for k in keys)
    assert any(".output.lora_A" in k for k in keys), "XTuner's LoRA wraps the output head too"
    assert not any("vision_model" in k for k in keys)  # the vision tower stayed frozen


@pytest.mark.slow
def test_result_is_recorded_and_the_config_is_the_rendered_one(finished):
    result, _ = finished
    again = finetune.load_result(result.work_dir)
    assert again.checkpoint == result.checkpoint and again.losses == result.losses
    config = result.config_path.read_text(encoding="utf-8")
    assert "PART 1  Settings" in config and "total_iters = 8" in config and "LeanInternVL" in config


@pytest.mark.slow
def test_a_finished_run_is_not_overwritten(finished, tiny_checkpoint, food_one):
    result, _ = finished
    before = (result.checkpoint.stat().st_mtime_ns, (result.work_dir / finetune.RESULT).read_bytes())
    with pytest.raises(FileExistsError, match="already holds a finished run"):
        finetune.train(tiny_settings(tiny_checkpoint, food_one), result.work_dir, progress=False)
    assert before == (result.checkpoint.stat().st_mtime_ns, (result.work_dir / finetune.RESULT).read_bytes())


@pytest.mark.slow
def test_a_crash_raises_training_error_with_the_log_tail(tiny_checkpoint, food_one, tmp_path):
    # max_length=40 cuts every sample inside its image tokens; the lean model refuses such a batch.
    # (check_data refuses that max_length before launching; validate=False lets XTuner run into it.)
    bad = tiny_settings(tiny_checkpoint, food_one, max_length=40)
    with pytest.raises(TrainingError) as err:
        finetune.train(bad, tmp_path / "run", progress=False, validate=False)
    text = str(err.value)
    assert "exit code" in text and "Traceback" in text and "raise max_length" in text
    assert err.value.log_path == tmp_path / "run" / "train.log"
    assert not (tmp_path / "run" / finetune.RESULT).exists()


def test_exit_code_zero_is_not_enough(tmp_path):
    """`xtuner train` exits 0 after a crash: a traceback, a short log or no checkpoint all fail."""
    log = tmp_path / "train.log"
    log.write_text("Iter(train) [3/3] loss: 1.0\nTraceback (most recent call last):\n  boom\n", encoding="utf-8")
    with pytest.raises(TrainingError, match="traceback"):
        finetune.check_outcome(0, log, 3, 3, 3, tmp_path, "")
    log.write_text("Iter(train) [2/3] loss: 1.0\n", encoding="utf-8")
    with pytest.raises(TrainingError, match="stops at iteration 2 of the planned 3"):
        finetune.check_outcome(0, log, 3, 2, 3, tmp_path, "")
    with pytest.raises(TrainingError, match="planned 5 iterations but labkit planned 3"):
        finetune.check_outcome(0, log, 3, 3, 5, tmp_path, "")
    with pytest.raises(TrainingError, match="No checkpoint iter_3.pth"):
        finetune.check_outcome(0, log, 3, 3, 3, tmp_path, "")


def test_data_that_fails_validation_stops_before_training(tiny_checkpoint, food_one, tmp_path):
    records = json.loads(Path(food_one["food"]["train"]).read_text(encoding="utf-8"))
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    records[3]["image"] = "broken.jpg"
    bad = tmp_path / "train.json"
    bad.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    s = tiny_settings(tiny_checkpoint, food_one, data_paths=str(bad), image_folder=str(tmp_path / "images"))
    with pytest.raises(DataValidationError, match="broken.jpg"):
        finetune.train(s, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_missing_model_folder_is_a_clear_error(food_one, tmp_path):
    s = tiny_settings(tmp_path / "no-such-model", food_one)
    with pytest.raises(CheckpointError, match="no-such-model: no such model folder"):
        finetune.train(s, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_foreign_folder_is_never_touched(tiny_checkpoint, food_one, tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious", encoding="utf-8")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not a labkit training folder"):
            finetune.train(tiny_settings(tiny_checkpoint, food_one), mine, progress=False, overwrite=overwrite)
    assert (mine / "thesis.txt").read_text(encoding="utf-8") == "precious"


def test_bad_settings_never_reach_a_run():
    with pytest.raises(settings.SettingsError, match="batch_size=0"):
        settings.tiny_lora_cpu().replace(batch_size=0)
    with pytest.raises(settings.SettingsError, match="unknown setting 'epochs'"):
        settings.tiny_lora_cpu().replace(epochs=3)


def test_log_lines_give_xtuners_planned_total():
    line = ("11/29 12:08:07 - mmengine - INFO - Iter(train) [ 48/120]  lr: 1.9215e-05  eta: 0:00:06  "
            "time: 4.2410  data_time: 0.1155  grad_norm: 0.9913  loss: 0.6385")
    assert finetune.parse_log_line(line) == (48, 120)
    assert finetune.parse_log_line("Iter(val) [1/2]") is None


def test_losses_are_read_as_mmengine_writes_them(tmp_path):
    """mmengine's own LocalVisBackend writes the file (as its LoggerHook does); NaN stays NaN."""
    import math

    from mmengine.visualization import LocalVisBackend

    xtuner_dir = tmp_path / "xtuner"
    backend = LocalVisBackend(str(xtuner_dir / "20250101_000000" / "vis_data"))
    follower = finetune.ScalarsFollower(xtuner_dir)
    assert finetune.read_losses(xtuner_dir) == [] and follower.new_records() == []
    for step, loss in [(1, 2.3456789), (2, 1.25), (3, math.nan)]:
        backend.add_scalars({"lr": 1e-3, "loss": loss, "grad_norm": 0.5, "iter": step}, step=step,
                            file_path="20250101_000000.json")
        if step == 1:
            assert finetune.losses_of(follower.new_records()) == [(1, 2.3456789)]  # live, full precision
    losses = finetune.read_losses(xtuner_dir)
    assert losses[:2] == [(1, 2.3456789), (2, 1.25)] and losses[2][0] == 3 and math.isnan(losses[2][1])
    assert finetune.losses_of(follower.new_records())[0] == (2, 1.25)
    with pytest.raises(TrainingError, match="not a finite number .*iteration 3: nan"):
        finetune.check_losses(losses, tmp_path / "train.log")
    scalars = finetune.scalars_file(xtuner_dir)
    assert scalars == xtuner_dir / "20250101_000000" / "vis_data" / "scalars.json"
    scalars.write_bytes(scalars.read_bytes() + b'{"loss": 1.0, "step": 4\n')
    with pytest.raises(TrainingError, match=re.escape(str(scalars)) + ", line 4: not a JSON record"):
        finetune.read_losses(xtuner_dir)


def test_commands_for_each_hardware_path(tmp_path):
    cpu = finetune.launch_command(settings.tiny_lora_cpu(), "c.py", tmp_path)
    assert cpu[1:3] == ["-m", "labkit.train.launch"] and "--device" in cpu and "cpu" in cpu
    many = finetune.launch_command(settings.course_gpu().replace(gpus=4, zero_stage=2), "c.py", tmp_path)
    # Written for the course's GPU machines; this laptop has no GPU, so only the command is checked.
    assert many[1:5] == ["-m", "torch.distributed.run", "--nproc-per-node", "4"]
    assert many[-2:] == ["--deepspeed", "deepspeed_zero2"] and "labkit.train.launch" in many
