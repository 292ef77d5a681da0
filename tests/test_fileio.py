"""labkit.fileio and the writers that use it: all or nothing, nothing of the user's lost, ordinary modes.

Real files and folders in pytest's tmp_path; the umask is set explicitly and put back.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from labkit import fileio
@pytest.fixture(params=[0o022, 0o027], ids=["umask-022", "umask-027"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path):
    return stat.S_IMODE(Path(path).stat().st_mode)


def hidden(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


def test_files_get_the_mode_an_ordinary_write_gives(tmp_path, umask):
    ordinary = tmp_path / "ordinary.txt"
    ordinary.write_text("x", encoding="utf-8")
    written = fileio.write_text(tmp_path / "atomic.txt", "说明\n")
    assert mode(written) == mode(ordinary) == 0o666 & ~umask
    assert written.read_text(encoding="utf-8") == "说明\n"
    assert fileio.write_json(tmp_path / "a.json", {"菜": "肠粉"}).read_text(encoding="utf-8") == '{\n  "菜": "肠粉"\n}\n'
    assert hidden(tmp_path) == []


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = fileio.write_text(tmp_path / "keep.txt", "old")
    with pytest.raises(RuntimeError, match="disk full"):
        with fileio.atomic_path(target) as tmp:
            tmp.write_text("half", encoding="utf-8")
            raise RuntimeError("disk full")
    assert target.read_text(encoding="utf-8") == "old" and hidden(tmp_path) == []


def test_a_folder_is_not_replaced_by_a_file(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError, match="out: is a folder"):
        fileio.write_text(tmp_path / "out", "x")
    (tmp_path / "notes").write_text("mine", encoding="utf-8")
    with pytest.raises(NotADirectoryError, match="notes: is a file"):
        fileio.write_text(tmp_path / "notes" / "x.txt", "x")
    assert (tmp_path / "notes").read_text(encoding="utf-8") == "mine"


def test_publishing_a_folder_keeps_a_users_dot_old_folder(tmp_path, umask):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old", encoding="utf-8")
    mine = tmp_path / ".model.old"  # the name the checkpoint writer used to delete first
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious", encoding="utf-8")
    with fileio.staged_folder(target) as stage:
        assert mode(stage) == 0o700  # private while it is built
        fileio.write_text(stage / "new.txt", "new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert mode(target) == 0o777 & ~umask and mode(target / "new.txt") == 0o666 & ~umask
    assert (mine / "thesis.txt").read_text(encoding="utf-8") == "precious"
    assert hidden(tmp_path) == [".model.old"]  # no temporary folder left behind


def test_a_failed_folder_build_leaves_the_old_folder(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "old.txt").write_text("old", encoding="utf-8")
    with pytest.raises(ValueError, match="bad record"):
        with fileio.staged_folder(target) as stage:
            fileio.write_text(stage / "half.txt", "half")
            raise ValueError("bad record")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"] and hidden(tmp_path) == []


# -- the writers of labkit ----------------------------------------------------------------------
def test_a_written_checkpoint_is_readable_by_others_and_spares_dot_old(tmp_path, umask):
    from labkit.course import base_model
    from labkit.checkpoints.folder import _prepare_out_dir, _publish, check_model_folder

    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{}", encoding="utf-8")  # an older model folder
    (out / "stale.txt").write_text("replaced", encoding="utf-8")
    mine = tmp_path / ".model.old"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious", encoding="utf-8")
    out, stage = _prepare_out_dir(out, overwrite=True)
    for item in base_model.ASSET_DIR.iterdir():
        shutil.copyfile(item, stage / item.name)
    _publish(stage, out)
    check_model_folder(out)
    assert mode(out) == 0o777 & ~umask and not (out / "stale.txt").exists()
    assert (mine / "thesis.txt").read_text(encoding="utf-8") == "precious" and hidden(tmp_path) == [".model.old"]


def test_data_sets_and_configs_are_readable_by_others(tmp_path, umask):
    from labkit.train import settings, xtuner_config
    from labkit.data.build import build_datasets

    sizes = {"general": {"train": 0, "val": 0, "test": 0}, "food": {"train": 0, "val": 0, "test": 1}}
    built = build_datasets(tmp_path / "data", seed=0, sizes=sizes)
    picture = next(Path(built["image_folder"]).rglob("*.jpg"))
    assert mode(built["root"]) == 0o777 & ~umask
    for path in (built["manifest"], built["food"]["test"], picture):
        assert mode(path) == 0o666 & ~umask, path
    config = xtuner_config.write_config(settings.tiny_lora_cpu(), tmp_path / "configs" / "food.py")
    assert mode(config) == 0o666 & ~umask
    assert hidden(tmp_path) == [] and hidden(tmp_path / "configs") == []


def test_figures_and_reports_are_readable_by_others(tmp_path, umask):
    from labkit.train.loss_plot import save_loss_curve
    from labkit.data.paint import contact_sheet

    curve = save_loss_curve([(1, 2.0), (2, 1.0)], tmp_path / "loss.png")
    sheet = contact_sheet(tmp_path / "sheet.png", seeds=range(1), cell=32, thumb=16)
    for path in (curve, sheet):
        assert mode(path) == 0o666 & ~umask and path.read_bytes()[:4] == b"\x89PNG"
    assert hidden(tmp_path) == []


def test_read_config_takes_the_file_or_its_folder_and_names_a_bad_one(tmp_path):
    (tmp_path / "config.json").write_text('{"template": "模板"}', encoding="utf-8")
    assert fileio.read_config(tmp_path) == fileio.read_config(tmp_path / "config.json") == {"template": "模板"}
    for text, problem in [(None, "does not exist"), ("{not json", "is not valid JSON"),
                          ("[1, 2]", "holds a JSON array, not an object")]:
        folder = tmp_path / problem.replace(" ", "_")
        folder.mkdir()
        if text is not None:
            (folder / "config.json").write_text(text, encoding="utf-8")
        with pytest.raises(fileio.ConfigError, match=re.escape(f"{folder / 'config.json'} {problem}")):
            fileio.read_config(folder)
    (tmp_path / "latin1.json").write_bytes(b'{"name": "\xe9"}')
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "latin1.json")) + " is not UTF-8"):
        fileio.read_config(tmp_path / "latin1.json")


def test_one_reader_of_config_json_and_one_count_of_image_tokens():
    """The checkpoint writer, the planner, the tiling and the reference model share the two facts."""
    from labkit.checkpoints import folder, reference
    from labkit.tiling import tiling_from_config, tokens_per_tile
    from labkit.train import plan

    config = folder.load_config(folder.INTERNVL2_2B_CONFIG)
    assert config == fileio.read_config(folder.INTERNVL2_2B_CONFIG)
    assert plan.read_model_shape(folder.INTERNVL2_2B_CONFIG).num_image_token == tokens_per_tile(448, 14, 0.5) == 256
    assert tiling_from_config(folder.INTERNVL2_2B_CONFIG).tokens_per_tile == 256
    tiny = folder.tiny_config()
    assert plan.read_model_shape(tiny).num_image_token == tiling_from_config(tiny).tokens_per_tile == 16
    from labkit.model.configuration_internvl_chat import InternVLChatConfig

    assert reference.reference_config(InternVLChatConfig(**tiny), image_token_id=1).image_seq_length == 16
