"""Replay: known-dish samples of the base model's own training set mixed into the fine-tune set.

The draw (labkit.data.build.replay_indices), the setting and the XTuner config rendered from it,
the sample count the training plan uses, and XTuner's own InternVL dataset reading the mix.
"""
from collections import Counter

import pytest

from labkit.data import build as data
from labkit.data.answers import answer_dish
from labkit.data.dishes import held_back_names, known_names
from labkit.data.validate import read_annotations
from labkit.train import finetune, settings, xtuner_config

SIZES = {"general": {"train": 3, "val": 0, "test": 0}, "food": {"train": 1, "val": 0, "test": 0}}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return data.build_datasets(tmp_path_factory.mktemp("replay") / "data", seed=0, sizes=SIZES)


def dishes_of(records):
    return Counter(answer_dish(r["conversations"][1]["value"]) for r in records)


def test_the_draw_is_balanced_seeded_and_known_dishes_only(built):
    records = read_annotations(built["food"]["train"]) + read_annotations(built["general"]["train"])
    drawn = data.replay_indices(records, 25, seed=0)
    assert len(drawn) == len(set(drawn)) == 25
    counts = dishes_of(records[k] for k in drawn)
    assert set(counts) <= set(known_names()) and not set(counts) & set(held_back_names())
    assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == len(known_names())
    assert data.replay_indices(records, 25, seed=0) == drawn
    assert data.replay_indices(records, 25, seed=1) != drawn
    assert data.replay_indices(records, 0) == []


def test_the_draw_refuses_more_than_there_is(built):
    records = read_annotations(built["general"]["train"])  # 3 of each known dish
    assert len(data.replay_indices(records, len(records))) == len(records)
    with pytest.raises(ValueError, match=f"replay={len(records) + 1}: only {len(records)} known-dish samples"):
        data.replay_records(built["general"]["train"], len(records) + 1)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="whole number"):
            data.replay_indices(records, bad)


def test_auto_names_general_train_beside_the_food_set(built):
    assert data.replay_source("auto", built["food"]["train"]) == built["general"]["train"].absolute()
    assert data.replay_source("mine.json", built["food"]["train"]).name == "mine.json"


def test_the_setting_is_checked_and_rendered():
    with pytest.raises(settings.SettingsError, match="replay=-1"):
        settings.tiny_lora_cpu().replace(replay=-1)
    text = xtuner_config.render_config(settings.tiny_lora_cpu().replace(replay=40))
    assert "\nreplay = 40  # replay:" in text and '\nreplay_data = "auto"' in text
    assert "replay=replay," in text and "replay_data=replay_data," in text and "replay_seed=seed," in text
    assert "\nreplay = 0 " in xtuner_config.render_config(settings.tiny_pretrain_cpu())


def test_the_plan_counts_the_replay_samples(built):
    from labkit.course.base_model import ASSET_DIR

    recipe = settings.tiny_lora_cpu().replace(replay=0, model_path=str(ASSET_DIR), data_paths=str(built["food"]["train"]),
                                              image_folder=str(built["image_folder"]))
    resolved = finetune.resolve_paths(recipe.replace(replay=7))
    assert resolved.replay_data == str(built["general"]["train"].absolute())
    food = finetune.count_samples(built["food"]["train"])
    assert finetune.check_data(resolved) == food + 7
    assert finetune.check_data(finetune.resolve_paths(recipe)) == food
    missing = finetune.resolve_paths(recipe.replace(replay=7, replay_data="nowhere.json"))
    with pytest.raises(FileNotFoundError, match="nowhere.json: replay file not found .* replay=0"):
        finetune.check_data(missing)


def test_xtuner_reads_the_mix(built):
    """XTuner's InternVL_V1_5_Dataset (through labkit's subclass) holds the food set plus the drawn replay."""
    from xtuner.utils import PROMPT_TEMPLATE

    from labkit.course.base_model import ASSET_DIR
    from labkit.train.dataset import FolderPromptDataset

    common = dict(template=PROMPT_TEMPLATE.internlm2_chat, data_paths=[str(built["food"]["train"])],
                  image_folders=[str(built["image_folder"])], repeat_times=[1], max_length=2048)
    plain = FolderPromptDataset(str(ASSET_DIR), **common)
    mixed = FolderPromptDataset(str(ASSET_DIR), replay=12, replay_data="auto", replay_seed=3, **common)
    assert len(mixed) == len(plain) + 12 == len(mixed.group_length) == len(mixed.image_folder)
    expected = data.replay_records(built["general"]["train"], 12, seed=3)
    assert mixed.data[len(plain):] == expected and mixed.data[:len(plain)] == plain.data
    assert set(dishes_of(mixed.data[len(plain):])) <= set(known_names())
