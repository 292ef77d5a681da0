"""The dataset builder: layout, splits without shared pictures, held-back dishes, answers."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from labkit.data import answers, build as data, dishes
from labkit.data.validate import validate
from labkit.fileio import REPO_ROOT

TINY_SIZES = {"general": {"train": 1, "val": 0, "test": 0}, "food": {"train": 1, "val": 0, "test": 0}}

TINY = {"general": {"train": 2, "val": 1, "test": 1}, "food": {"train": 2, "val": 1, "test": 1}}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return data.build_datasets(tmp_path_factory.mktemp("build") / "data", seed=3, sizes=TINY)


def _records(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_layout_manifest_and_counts(built):
    manifest = json.loads(built["manifest"].read_text(encoding="utf-8"))
    assert manifest["seed"] == 3
    factor = manifest["held_back_train_factor"]
    assert factor == data.HELD_BACK_TRAIN_FACTOR > 1
    n_known, n_held = len(dishes.known_names()), len(dishes.held_back_names())
    for subset in data.SUBSETS:
        for split in data.SPLITS:
            per_dish = TINY[subset][split]
            held = per_dish * factor if (subset, split) == ("food", "train") else per_dish
            expected = {name: per_dish for name in dishes.known_names()}
            if subset == "food":
                expected.update({name: held for name in dishes.held_back_names()})
            assert manifest["counts"][subset][split] == expected
            records = _records(built[subset][split])
            assert len(records) == n_known * per_dish + (n_held * held if subset == "food" else 0)
            assert validate(built[subset][split], built["image_folder"]).ok
    assert manifest["pictures"] == sum(1 for _ in built["image_folder"].rglob("*.jpg"))


def test_held_back_factor_only_adds_held_back_training_pictures(tmp_path):
    sizes = {"general": {"train": 1, "val": 0, "test": 1}, "food": {"train": 2, "val": 0, "test": 1}}
    one = data.build_datasets(tmp_path / "one", seed=2, sizes=sizes, held_back_factor=1)
    three = data.build_datasets(tmp_path / "three", seed=2, sizes=sizes, held_back_factor=3)
    for subset, split in (("general", "train"), ("general", "test"), ("food", "test")):
        assert one[subset][split].read_bytes() == three[subset][split].read_bytes()
    ids_one = {r["id"] for r in _records(one["food"]["train"])}
    ids_three = {r["id"] for r in _records(three["food"]["train"])}
    assert ids_one < ids_three
    added = {i.split("-")[2] for i in ids_three - ids_one}
    assert added == {dishes.get_dish(name).key for name in dishes.held_back_names()}
    assert len(ids_three - ids_one) == 2 * 2 * len(dishes.held_back_names())
    for picture in one["image_folder"].rglob("*.jpg"):  # the first pictures stay the same
        twin = three["image_folder"] / picture.relative_to(one["image_folder"])
        assert picture.read_bytes() == twin.read_bytes()
    with pytest.raises(ValueError, match="held_back_factor"):
        data.build_datasets(tmp_path / "zero", sizes=sizes, held_back_factor=0)


def test_no_picture_is_shared_between_splits_or_subsets(built):
    seen_paths, seen_bytes = set(), set()
    for subset in data.SUBSETS:
        for split in data.SPLITS:
            for record in _records(built[subset][split]):
                digest = hashlib.sha256((built["image_folder"] / record["image"]).read_bytes()).digest()
                assert record["image"] not in seen_paths and digest not in seen_bytes
                seen_paths.add(record["image"])
                seen_bytes.add(digest)


def test_general_never_mentions_a_held_back_dish(built):
    for split in data.SPLITS:
        text = built["general"][split].read_text(encoding="utf-8")
        for name in dishes.held_back_names():
            assert name not in text
    food_train = built["food"]["train"].read_text(encoding="utf-8")
    assert all(name in food_train for name in dishes.held_back_names())


def test_answers_name_the_pictured_dish_in_the_sentence_form(built):
    kinds = set()
    for record in _records(built["food"]["train"]) + _records(built["general"]["test"]):
        human, gpt = record["conversations"]
        assert human["value"].startswith("<image>\n") and human["value"].count("<image>") == 1
        dish = dishes.get_dish(record["id"].split("-")[2])
        assert answers.expected_form(gpt["value"]) and answers.answer_dish(gpt["value"]) == dish.name
        letter = answers.answer_choice(gpt["value"])
        if data.CHOICE_QUESTION in human["value"]:
            kinds.add("choice")
            assert f"{letter}. {dish.name}" in human["value"]
            assert human["value"].count(". ") == 4
        else:
            kinds.add("open")
            assert letter is None and human["value"][len("<image>\n"):] in data.OPEN_QUESTIONS
    assert kinds == {"choice", "open"}


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    sizes = {"general": {"train": 1, "val": 0, "test": 0}, "food": {"train": 1, "val": 0, "test": 0}}
    a = data.build_datasets(tmp_path / "a", seed=5, sizes=sizes)
    b = data.build_datasets(tmp_path / "b", seed=5, sizes=sizes)
    c = data.build_datasets(tmp_path / "c", seed=6, sizes=sizes)
    assert a["food"]["train"].read_bytes() == b["food"]["train"].read_bytes()
    for picture in a["image_folder"].rglob("*.jpg"):
        twin = b["image_folder"] / picture.relative_to(a["image_folder"])
        other = c["image_folder"] / picture.relative_to(a["image_folder"])
        assert picture.read_bytes() == twin.read_bytes() != other.read_bytes()


def test_refuses_a_non_empty_folder_and_overwrites_only_its_own(tmp_path):
    sizes = {"general": {"train": 1, "val": 0, "test": 0}, "food": {"train": 0, "val": 0, "test": 0}}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my homework")
    with pytest.raises(FileExistsError, match="not empty"):
        data.build_datasets(mine, sizes=sizes)
    with pytest.raises(FileExistsError, match="not a labkit data folder"):
        data.build_datasets(mine, sizes=sizes, overwrite=True)
    assert (mine / "notes.txt").read_text() == "my homework"

    out = tmp_path / "out"
    data.build_datasets(out, seed=1, sizes=sizes)
    with pytest.raises(FileExistsError):
        data.build_datasets(out, seed=2, sizes=sizes)
    data.build_datasets(out, seed=2, sizes=sizes, overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["seed"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_is_current_knows_a_build_from_older_defaults(tmp_path):
    sizes = {"general": {"train": 1, "val": 0, "test": 0}, "food": {"train": 1, "val": 0, "test": 0}}
    assert not data.is_current(tmp_path / "missing")
    root = data.build_datasets(tmp_path / "data", seed=4, sizes=sizes)["root"]
    assert data.is_current(root, seed=4, sizes=sizes)
    assert not data.is_current(root, seed=5, sizes=sizes)
    assert not data.is_current(root, seed=4)  # default sizes
    assert not data.is_current(root, seed=4, sizes=sizes, held_back_factor=1)
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    del manifest["held_back_train_factor"]  # what a build before the factor existed wrote
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert data.is_current(root, seed=4, sizes=sizes, held_back_factor=1)
    assert not data.is_current(root, seed=4, sizes=sizes)


def test_the_course_data_is_built_once_where_only_its_readme_lies(tmp_path, monkeypatch):
    from labkit.course import workspace
    root = tmp_path / "data"
    root.mkdir()
    (root / "README.md").write_text("说明", encoding="utf-8")
    calls = []
    monkeypatch.setattr(data, "build_datasets", lambda out: calls.append(Path(out)) or data.data_paths(out))
    paths = workspace.Workspace(tmp_path / "run", tmp_path / "cache", root).data()
    assert calls == [root] and paths["food"]["train"] == root / "food" / "train.json"
    assert paths["image_folder"] == root / "images"


def test_a_build_keeps_the_folders_readme(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "README.md").write_text("说明", encoding="utf-8")
    data.build_datasets(root, sizes=TINY_SIZES)
    data.build_datasets(root, sizes=TINY_SIZES, overwrite=True)
    assert (root / "README.md").read_text(encoding="utf-8") == "说明" and (root / "manifest.json").is_file()


def test_stale_or_foreign_data_folders_are_refused_and_left_alone(tmp_path):
    from labkit.course import workspace
    stale = tmp_path / "stale"
    data.build_datasets(stale, seed=0, sizes=TINY_SIZES)  # not the course's default sizes
    before = sorted(p.relative_to(stale) for p in stale.rglob("*"))
    with pytest.raises(FileExistsError, match=re.escape(str(stale)) + " holds a food set built with other "
                       r"settings.*seed=0, sizes_per_dish=.*build build .*--overwrite"):
        workspace.Workspace(tmp_path / "run", tmp_path / "cache", stale).data()
    assert sorted(p.relative_to(stale) for p in stale.rglob("*")) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(FileExistsError, match=re.escape(str(foreign)) + " holds files but no manifest.json"):
        data.course_data(foreign)
    assert [p.name for p in foreign.iterdir()] == ["thesis.txt"]


def test_the_course_data_lives_in_the_repositorys_data_folder(tmp_path):
    """The main job, the notebooks' default and the rendered XTuner configs all point at data/."""
    from labkit.course import main, workspace
    from labkit.train import settings

    assert data.DATA_DIR == main.DEFAULT_DATA == REPO_ROOT / "data"
    assert workspace.Workspace(tmp_path / "run", tmp_path / "cache", "").data_dir == data.DATA_DIR
    lora = settings.tiny_lora_cpu()
    assert (REPO_ROOT / lora.data_paths[0]).parent.parent == data.DATA_DIR
    assert REPO_ROOT / lora.image_folder == data.DATA_DIR / data.IMAGE_FOLDER
    assert 'data_paths = ("data/food/train.json",)' in (REPO_ROOT / "configs" / "tiny_lora_food_cpu.py").read_text()
    assert (REPO_ROOT / "data" / "README.md").is_file()


def test_bad_sizes_are_explained():
    with pytest.raises(ValueError, match="unknown subset"):
        data.resolve_sizes({"pretrain": {"train": 1}})
    with pytest.raises(ValueError, match="splits are"):
        data.resolve_sizes({"food": {"dev": 1}})


@pytest.mark.parametrize("text, dish", [
    ("图中的菜是肠粉。", "肠粉"),
    ("B，图中的菜是叉烧包。", "叉烧包"),          # longest name wins over 叉烧
    ("这是叉烧吧", "叉烧"),
    ("图中的菜是饺子。不是虾饺。", "饺子"),        # the sentence form decides
    ("可能是叉烧，也可能是月饼", None),            # two different dishes: undecided
    ("我不知道", None),
    ("图中的菜是披萨。", None),
    (None, None),
])
def test_answer_dish(text, dish):
    assert answers.answer_dish(text) == dish


@pytest.mark.parametrize("text, ok", [
    ("图中的菜是肠粉。", True), ("C，图中的菜是月饼。", True), (" 图中的菜是肠粉。\n", True),
    ("图中的菜是肠粉", False), ("肠粉。", False), ("E，图中的菜是肠粉。", False),
    ("图中的菜是肠粉。很好吃。", False), ("", False),
])
def test_expected_form(text, ok):
    assert answers.expected_form(text) is ok


def test_load_samples_reads_back_what_was_written(built):
    samples = data.load_samples(built["food"]["test"])
    assert {s.dish for s in samples} == set(dishes.dish_names())
    assert all("<image>" not in s.question and s.image.endswith(".jpg") for s in samples)


def test_cli_builds_and_refuses(tmp_path):
    out = tmp_path / "cli"
    sizes = json.dumps({"general": {"train": 1, "val": 0, "test": 0},
                        "food": {"train": 0, "val": 0, "test": 1}})
    cmd = [sys.executable, "-m", "labkit", "data", "build", str(out), "--seed", "4", "--sizes", sizes]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert (out / "food" / "test.json").is_file() and "pictures" in done.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    assert again.returncode == 2 and "not empty" in again.stderr
