"""Bad input is refused early, by name, and never costs the user a file (issue 11).

Every case uses real files: a copy of the committed tiny base model, real safetensors, real
JSON, real pictures, the real command lines. Each test failed on the code before the fix.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from labkit.course import base_model
from labkit.checkpoints.folder import CheckpointError, check_model_folder, load_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=120):
    """``python -m ARGS`` in a fresh interpreter with this checkout first on the path."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def model_copy(tmp_path):
    """A private copy of the committed tiny base model, to break."""
    return Path(shutil.copytree(base_model.ASSET_DIR, tmp_path / "model"))


def rewrite_weights(folder, change):
    """Load model.safetensors, let ``change(tensors)`` edit the dict, save it back (real safetensors)."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


# == silent wrong results: a checkpoint missing tensors ======================================
def test_missing_tensor_is_named_with_its_file(model_copy):
    name = "language_model.model.layers.1.feed_forward.w2.weight"
    weights = rewrite_weights(model_copy, lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=re.escape(str(weights)) + ".*lacks 1 of the .*" + re.escape(name)):
        check_model_folder(model_copy)
    with pytest.raises(CheckpointError, match=re.escape(name)):
        load_checkpoint(model_copy)  # never random weights with only a warning
    done = run_cli("labkit", "checkpoint", "--check", model_copy)
    assert done.returncode == 2, done.stdout
    assert name in done.stderr and "complete" not in done.stdout


def test_unexpected_tensor_is_named(model_copy):
    import torch

    weights = rewrite_weights(model_copy, lambda t: t.update({"language_model.extra.lora_A.weight": torch.zeros(2, 2)}))
    with pytest.raises(CheckpointError, match=re.escape(str(weights)) + ".*language_model.extra.lora_A.weight"):
        check_model_folder(model_copy)


def test_wrong_shape_is_named_before_torch_sees_it(model_copy):
    import torch

    name = "mlp1.1.weight"
    weights = rewrite_weights(model_copy, lambda t: t.update({name: torch.zeros(t[name].shape[0], 7)}))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model_copy)
    assert str(weights) in str(err.value) and name in str(err.value) and "wrong shape" in str(err.value)


def test_sharded_index_pointing_at_the_wrong_shard(model_copy):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(model_copy / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    save_file({n: tensors[n] for n in names[:half]}, str(model_copy / "a.safetensors"), metadata={"format": "pt"})
    save_file({n: tensors[n] for n in names[half:]}, str(model_copy / "b.safetensors"), metadata={"format": "pt"})
    (model_copy / "model.safetensors").unlink()
    weight_map = {n: "a.safetensors" for n in names}  # the second half is really in b
    index = model_copy / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {**weight_map, names[-1]: "b.safetensors"}}), encoding="utf-8")
    with pytest.raises(CheckpointError, match=re.escape(str(index)) + ".*shard that does not hold them"):
        check_model_folder(model_copy)


# == silent wrong results: a NaN loss, and the max_length that causes it ======================
@pytest.fixture(scope="module")
def food_one(tmp_path_factory):
    """The course food data at its smallest: one picture per dish (13 samples)."""
    from labkit.data.build import build_datasets

    sizes = {"general": {"train": 0, "val": 0, "test": 0}, "food": {"train": 1, "val": 0, "test": 0}}
    return build_datasets(tmp_path_factory.mktemp("bad-data") / "data", seed=0, sizes=sizes, held_back_factor=1)


def xtuner_model_type_settings(data, **overrides):
    """XTuner's own InternVL_V1_5 model type (bf16 weights, full logits), on the base model."""
    from labkit.train import settings
    s = settings.tiny_lora_cpu().replace(
        model_path=str(base_model.ASSET_DIR), data_paths=str(data["food"]["train"]),
        image_folder=str(data["image_folder"]), batch_size=4, max_epochs=1, cpu_threads=1,
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


# == silent wrong results: GPU budgets ========================================================
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


# == silent wrong results: refresh-code and an empty FoodieQA conversion ======================
def test_refresh_code_writes_only_into_a_model_folder(tmp_path, model_copy):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("precious", encoding="utf-8")
    done = run_cli("labkit", "base-model", "refresh-code", notes)
    assert done.returncode == 2 and "config.json: missing" in done.stderr and str(notes) in done.stderr
    assert sorted(p.name for p in notes.iterdir()) == ["thesis.txt"]  # no model code written
    missing = run_cli("labkit", "base-model", "refresh-code", tmp_path / "no-such-model")
    assert missing.returncode == 2 and "no-such-model: no such folder" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "no-such-model").exists()
    # a real model folder is still refreshed
    stale = model_copy / "modeling_internlm2.py"
    stale.write_text("# old code\n", encoding="utf-8")
    assert base_model.refresh_code(model_copy) == ["modeling_internlm2.py"]
    assert stale.read_bytes() == (REPO_ROOT / "labkit" / "model" / "modeling_internlm2.py").read_bytes()
    assert stale.stat().st_mode & 0o777 == 0o666 & ~current_umask()
    assert not [p.name for p in model_copy.iterdir() if p.name.startswith(".")]


def current_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


from test_foodieqa import foodie  # noqa: E402,F401  (the FoodieQA fixture in the real layout)


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


# == unclear errors: annotations ===============================================================
def one_record_file(path, record):
    path.write_text(json.dumps([record], ensure_ascii=False), encoding="utf-8")
    return path


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


# == unclear errors: the chat CLI, the server, the client =====================================
def test_chat_cli_checks_question_and_picture_before_loading(tmp_path):
    missing = tmp_path / "no-model"  # were the model loaded first, this would be the error
    empty = run_cli("labkit", "chat", missing, "   ")
    assert empty.returncode == 2 and "The question is empty" in empty.stderr, empty.stderr
    text = tmp_path / "notes.txt"
    text.write_text("not a picture", encoding="utf-8")
    picture = run_cli("labkit", "chat", missing, "这是什么菜？", "--image", text)
    assert picture.returncode == 2 and str(text) in picture.stderr and "not an image" in picture.stderr
    folder = run_cli("labkit", "chat", missing, "这是什么菜？")
    assert folder.returncode == 2 and f"{missing}: no such model folder" in folder.stderr
    assert "Traceback" not in empty.stderr + picture.stderr + folder.stderr


def test_chat_cli_lmdeploy_template_on_a_missing_model_folder(tmp_path):
    out = tmp_path / "template.json"
    done = run_cli("labkit", "chat", tmp_path / "no-model", "--lmdeploy-template", out)
    assert done.returncode == 2 and "no-model: no such model folder" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_server_on_a_port_in_use_says_which_before_loading(tmp_path):
    import time

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        started = time.monotonic()
        done = run_cli("labkit", "serve", base_model.ASSET_DIR, "--port", port)
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "already listens" in done.stderr
    assert "The model was not loaded" in done.stderr and "Traceback" not in done.stderr
    assert "serving" not in done.stdout, time.monotonic() - started


def test_a_base_url_without_http_is_called_malformed():
    from labkit.chat import ChatInputError, OpenAIEngine

    for url in ("127.0.0.1:23333/v1", "localhost:23333/v1", "http://:23333/v1", "http://host:port/v1"):
        with pytest.raises(ChatInputError, match=re.escape(repr(url)) + " is malformed"):
            OpenAIEngine(url, model="x", timeout=5).ask("你好")
    assert OpenAIEngine("http://127.0.0.1:23333/v1/").base_url == "http://127.0.0.1:23333/v1"


# == unclear errors: a file where a folder is expected =========================================
def test_checkpoint_output_that_is_a_file(tmp_path):
    out = tmp_path / "model"
    out.write_text("my notes", encoding="utf-8")
    done = run_cli("labkit", "checkpoint", "--tiny", out)
    assert done.returncode == 2 and f"{out}: is a file, not a folder" in done.stderr and "Traceback" not in done.stderr
    assert out.read_text(encoding="utf-8") == "my notes"
    check = run_cli("labkit", "checkpoint", "--check", out)
    assert check.returncode == 2 and f"{out}: is a file, not a model folder" in check.stderr


def test_conversion_output_that_is_a_file_is_refused_before_reading_weights(tmp_path):
    from labkit.train import settings, xtuner_config
    from labkit.convert.pipeline import convert

    config = xtuner_config.write_config(settings.tiny_lora_cpu().replace(model_path=str(base_model.ASSET_DIR)),
                                   tmp_path / "config.py", num_samples=8)
    out = tmp_path / "merged"
    out.write_text("my notes", encoding="utf-8")
    with pytest.raises(NotADirectoryError, match=re.escape(str(out)) + ": is a file"):
        convert(config, tmp_path / "iter_1.pth", out)  # the .pth does not exist: never read
    assert out.read_text(encoding="utf-8") == "my notes"


def test_run_dir_that_is_a_file(tmp_path):
    from labkit.course.workspace import Workspace

    run = tmp_path / "run"
    run.write_text("my notes", encoding="utf-8")
    done = run_cli("labkit", "run", "--run-dir", run, "--cache-dir", tmp_path / "cache")
    assert done.returncode == 2 and f"{run}: is a file, not a folder" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(NotADirectoryError, match=re.escape(str(run))):
        Workspace(run / "inside", tmp_path / "cache")
    assert run.read_text(encoding="utf-8") == "my notes"


@pytest.mark.parametrize("text", ["[1, 2]", '"InternVL2"', "null"], ids=["list", "string", "null"])
def test_a_config_json_that_is_not_an_object_is_named(tmp_path, text):
    from labkit.train import plan
    from labkit.tiling import tiling_from_config

    config = tmp_path / "config.json"
    config.write_text(text, encoding="utf-8")
    done = run_cli("labkit", "checkpoint", "--config", config, tmp_path / "out")
    assert done.returncode == 2 and f"{config} holds a JSON" in done.stderr and "not an object" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=re.escape(str(config)) + " holds a JSON .*not an object"):
        plan.estimate(config)
    with pytest.raises(ValueError, match=re.escape(str(config)) + " holds a JSON .*not an object"):
        tiling_from_config(config)


# == further bad inputs found while fixing the above ===========================================
@pytest.mark.parametrize("size", ["0GB", "-1GB", "abc"])
def test_a_shard_size_that_is_not_positive_is_refused_before_anything_is_read(tmp_path, size):
    from labkit.train import settings, xtuner_config
    from labkit.convert.pipeline import convert

    config = xtuner_config.write_config(settings.tiny_lora_cpu().replace(model_path=str(base_model.ASSET_DIR)),
                                   tmp_path / "config.py", num_samples=8)
    with pytest.raises(CheckpointError, match=re.escape(f"max_shard_size {size!r}")):
        convert(config, tmp_path / "iter_1.pth", tmp_path / "out", max_shard_size=size)  # .pth never read
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("limit", [-1, 0])
def test_evaluate_refuses_a_limit_that_would_drop_samples_silently(food_one, limit):
    from labkit.eval.evaluate import evaluate

    with pytest.raises(ValueError, match=f"limit={limit}"):
        evaluate(base_model.ASSET_DIR, food_one["food"]["train"], food_one["image_folder"], limit=limit)


def test_a_folder_given_as_annotation_file_is_named(food_one):
    from labkit.train import finetune
    s = xtuner_model_type_settings(food_one, data_paths=str(food_one["image_folder"]))
    with pytest.raises(IsADirectoryError, match=re.escape(str(food_one["image_folder"])) + ": is a folder"):
        finetune.check_data(s)


def test_overwrite_never_replaces_a_folder_that_is_not_a_model(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("precious", encoding="utf-8")
    done = run_cli("labkit", "checkpoint", "--tiny", notes, "--overwrite")
    assert done.returncode == 2 and "holds no config.json, so it is not a model folder" in done.stderr
    assert sorted(p.name for p in notes.iterdir()) == ["thesis.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]  # no temporary folder left


def test_an_annotation_file_with_a_byte_order_mark_gets_its_own_advice(tmp_path):
    from labkit.data.validate import AnnotationFormatError, read_annotations

    annotation = tmp_path / "train.json"
    annotation.write_bytes(b"\xef\xbb\xbf[]")
    with pytest.raises(AnnotationFormatError, match=re.escape(str(annotation)) + ": starts with a byte-order mark"):
        read_annotations(annotation)


def test_a_safetensors_header_whose_sizes_disagree_is_named(model_copy):
    import struct

    path = model_copy / "model.safetensors"
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + length])
    name = "mlp1.1.weight"
    rows, cols = header[name]["shape"]
    header[name]["shape"] = [rows // 2, cols]  # a half-sized tensor on the same bytes
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= length
    text += b" " * (length - len(text))  # same header length: the file's size stays right
    path.write_bytes(raw[:8] + text + raw[8 + length:])
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ": not a readable safetensors file .*"
                       "invalid shape, data type, or offset .*truncated or corrupt"):
        check_model_folder(model_copy)


def test_data_build_inside_a_file_is_a_clear_error(tmp_path):
    notes = tmp_path / "notes"
    notes.write_text("mine", encoding="utf-8")
    done = run_cli("labkit", "data", "build", notes / "data")
    assert done.returncode == 2 and f"{notes}: is a file" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("name, value", [("weight_decay", math.nan), ("weight_decay", math.inf),
                                         ("max_norm", math.inf)])
def test_settings_refuse_nan_and_infinity(name, value):
    from labkit.train import settings
    with pytest.raises(settings.SettingsError, match=f"setting {name}={value!r} is not allowed"):
        settings.tiny_lora_cpu().replace(**{name: value})


def test_chat_cli_with_lmdeploy_where_it_cannot_run(tmp_path):
    import importlib.util

    if importlib.util.find_spec("lmdeploy") is not None:
        pytest.skip("LMDeploy is installed here; this checks the message where it is not")
    missing = run_cli("labkit", "chat", tmp_path / "no-model", "你好", "--backend", "lmdeploy")
    assert missing.returncode == 2 and "no-model: no such model folder" in missing.stderr
    absent = run_cli("labkit", "chat", base_model.ASSET_DIR, "你好", "--backend", "lmdeploy")
    assert absent.returncode == 2 and "LMDeploy is not installed" in absent.stderr
    assert "Traceback" not in missing.stderr + absent.stderr
