"""Shared pytest set-up: the fixtures many test folders use, and GPU tests skipped without CUDA.

The folders under tests/ mirror labkit's packages (data/, checkpoints/, model/, train/, convert/,
chat/, eval/, course/); what spans them stays at the top. Plain helper functions are in
``helpers.py`` (pyproject puts tests/ on the path, so ``from helpers import run_cli`` works
everywhere); the fixtures are here, so a test names them as arguments and imports nothing.

Markers (declared in pyproject.toml): ``slow`` trains, converts or runs notebooks, ``browser``
drives a real browser in JupyterLab, ``gpu`` needs CUDA. Pick with ``-m``, e.g.
``./lab test -m "not slow"`` for the quick tests only.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import randomize_, run_python


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """Skip every ``@pytest.mark.gpu`` test when this machine has no usable CUDA device."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items or _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")
    for item in gpu_items:
        item.add_marker(skip)


# -- model folders ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Path of the tiny course checkpoint exactly as a student makes it, by the CLI
    ``labkit checkpoint --tiny DIR`` (bfloat16, default random initialisation)."""
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    run_python(["-m", "labkit", "checkpoint", "--tiny", out])
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_checkpoint), trust_remote_code=True)


@pytest.fixture(scope="session")
def parity_checkpoint(tiny_tokenizer, tmp_path_factory):
    """Path of a float32 tiny checkpoint whose every weight is random and of order one
    (``helpers.randomize_`` says why)."""
    import torch

    from labkit.checkpoints.folder import build_model, tiny_config, write_checkpoint

    model = randomize_(build_model(tiny_config(len(tiny_tokenizer)), seed=0), seed=1)
    out = tmp_path_factory.mktemp("ckpt") / "parity"
    write_checkpoint(out, tokenizer=tiny_tokenizer, model=model, dtype=torch.float32)
    return out


@pytest.fixture(scope="session")
def opengvlab_like_checkpoint(tmp_path_factory):
    """Path of the OpenGVLab-like tiny folder (seed 0; tests/opengvlab_like_folder.py)."""
    from opengvlab_like_folder import FOLDER_NAME, build_opengvlab_like

    return build_opengvlab_like(tmp_path_factory.mktemp("ckpt") / FOLDER_NAME)


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory):
    """The tiny base model: labkit's committed one, or else built once into the shared test cache."""
    from helpers import shared_cache

    from labkit.course.workspace import Workspace

    return Workspace(tmp_path_factory.mktemp("base-model-run"), shared_cache()).base_model()


@pytest.fixture
def model_copy(tmp_path):
    """A private copy of the committed tiny base model, to break."""
    from labkit.course import base_model

    return Path(shutil.copytree(base_model.ASSET_DIR, tmp_path / "model"))


# -- data ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def food_one(tmp_path_factory):
    """The course food data at its smallest: one picture per dish (13 samples)."""
    from labkit.data.build import build_datasets

    sizes = {"general": {"train": 0, "val": 0, "test": 0}, "food": {"train": 1, "val": 0, "test": 0}}
    return build_datasets(tmp_path_factory.mktemp("food-one") / "data", seed=0, sizes=sizes, held_back_factor=1)


@pytest.fixture
def foodie(tmp_path):
    """FOODIE_ROOT with sivqa_tidy.json and images/, shaped like the downloaded FoodieQA set."""
    from labkit.data import foodieqa
    from labkit.data.paint import render_to_file

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
