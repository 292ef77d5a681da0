"""labkit.course.base_model: the committed tiny base model matches the current code and still answers."""
from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def fresh_pictures(tmp_path_factory):
    """New pictures (seed 7, never trained on): 2 of every dish, in the general and food test splits."""
    from labkit.data.build import build_datasets

    sizes = {"general": {"train": 0, "val": 0, "test": 2}, "food": {"train": 0, "val": 0, "test": 2}}
    return build_datasets(tmp_path_factory.mktemp("base-pictures") / "data", seed=7, sizes=sizes)


def test_committed_base_model_matches_the_current_code():
    from labkit.course import base_model
    from labkit.checkpoints.folder import TINY_VOCAB, check_model_folder
    from labkit.checkpoints.tokenizer import course_texts, train_tokenizer

    folder = base_model.ASSET_DIR
    check_model_folder(folder)
    assert base_model.stale_code(folder) == [], (
        "labkit/model changed since the base model was built: run "
        "`labkit base-model refresh-code labkit/assets/base-tiny` (or rebuild it) and commit")
    from transformers import AutoTokenizer

    shipped = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True).get_vocab()
    assert shipped == train_tokenizer(course_texts(), vocab_size=TINY_VOCAB).get_vocab(), (
        "the course texts (dishes, prompts) changed: rebuild the base model "
        "(labkit base-model build labkit/assets/base-tiny --overwrite)")
    report = json.loads((folder / base_model.REPORT_NAME).read_text(encoding="utf-8"))
    assert base_model.BaseCheck(**{k: report["check"][k] for k in
                                   ("known_accuracy", "held_back_accuracy", "sentence_rate", "answers")}).failures() == []


def test_committed_base_model_answers_new_pictures(fresh_pictures):
    """Loaded with the current code, it names known dishes, never 肠粉, in the sentence form."""
    import torch

    from labkit.course import base_model
    from labkit.checkpoints.folder import load_checkpoint
    from labkit.eval.evaluate import evaluate

    torch.set_num_threads(1)
    loaded = load_checkpoint(base_model.ASSET_DIR)
    images = fresh_pictures["image_folder"]
    general = evaluate(base_model.ASSET_DIR, fresh_pictures["general"]["test"], images, model=loaded)
    food = evaluate(base_model.ASSET_DIR, fresh_pictures["food"]["test"], images, model=loaded)
    assert general.accuracy("known") >= 0.7  # 20 pictures: a little below the 80 % target is noise
    assert general.sentence_rate() >= 0.95
    assert food.accuracy("held_back") == 0.0
    assert not any(a.named == "肠粉" for a in food.answers)


def test_ensure_base_returns_the_committed_folder(tmp_path):
    from labkit.course import base_model
    assert base_model.ensure_base(tmp_path / "cache") == base_model.ASSET_DIR
    assert not (tmp_path / "cache").exists()  # nothing was built


def test_the_base_model_fingerprint_reads_every_file_it_names():
    """Each entry of base_model.SOURCES names files that exist (a moved module must move here too)."""
    from labkit.course import base_model
    from labkit.fileio import PACKAGE_DIR

    missing = [pattern for pattern in base_model.SOURCES if not list(PACKAGE_DIR.glob(pattern))]
    assert not missing, f"base_model.SOURCES names no file for {missing}"
