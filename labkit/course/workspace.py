"""Where a notebook finds its inputs and leaves its results.

Three folders: the *data* folder holds the course's food set (the repository's ``data/``, built
there once); the *cache* holds what else is built once and reused (the tiny base model, when it
is not the committed one); the *run* folder holds what one pass through the course produces
(figures, the fine-tuned checkpoint, the converted model, JSON results the report reads). Each
notebook takes them as parameters, so papermill, the main job and a student at the keyboard use
the same code.
"""
import json
from pathlib import Path

from labkit.data import build as food_data
from labkit import fileio
RESULT_FILES = ("architecture.json", "baseline.json", "finetune.json", "conversion.json", "comparison.json")


class Workspace:
    def __init__(self, run_dir, cache_dir, data_dir=None):
        """``data_dir``: the food set's folder; empty or None means the repository's ``data/``."""
        self.run_dir = fileio.check_folder_target(Path(run_dir).resolve(), "run folder (run_dir)")
        self.cache_dir = fileio.check_folder_target(Path(cache_dir).resolve(), "cache folder (cache_dir)")
        self.data_dir = fileio.check_folder_target(Path(data_dir or food_data.DATA_DIR).resolve(),
                                                   "data folder (data_dir)")
        (self.run_dir / "figures").mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._data = None

    # -- inputs built once ----------------------------------------------------------------
    def data(self):
        """The food data set (built into ``data_dir`` on first use): paths by subset and split.

        A ``data_dir`` that holds something else (a build with other settings, foreign files) is
        refused with a message saying what to do (`labkit.data.build.course_data`).
        """
        if self._data is None:
            self._data = food_data.course_data(self.data_dir)
        return self._data

    def base_model(self):
        """The pretrained tiny base model (built into the cache on first use)."""
        from labkit.course.base_model import ensure_base

        path = Path(ensure_base(self.cache_dir))
        fileio.write_text(self.run_dir / "base_model.txt", str(path) + "\n")
        return path

    def samples(self, subset="food", split="test"):
        return food_data.load_samples(self.data()[subset][split])

    def first_picture_of(self, dish, subset="food", split="test"):
        """The path of the first test picture showing ``dish``."""
        for sample in self.samples(subset, split):
            if sample.dish == dish:
                return self.data()["image_folder"] / sample.image
        raise KeyError(f"no picture of {dish!r} in {subset}/{split}")

    # -- results of this run --------------------------------------------------------------
    def path(self, *parts):
        return self.run_dir.joinpath(*parts)

    def figure(self, name):
        return self.run_dir / "figures" / name

    def save_json(self, name, payload):
        return fileio.write_json(self.run_dir / name, payload, default=str)

    def load_json(self, name):
        path = self.run_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run the notebook that writes it first.")
        return json.loads(path.read_text(encoding="utf-8"))
