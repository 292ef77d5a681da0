"""Where a notebook finds its inputs and leaves its results.

Two folders: the *cache* holds what is built once and reused (the food pictures and the tiny
base model); the *run* folder holds what one pass through the course produces (figures, the
fine-tuned checkpoint, the converted model, JSON results the report reads). Each notebook takes
both as parameters, so papermill, the main job and a student at the keyboard use the same code.
"""
import json
from pathlib import Path

from labkit.data import build as food_data
from labkit import fileio
RESULT_FILES = ("architecture.json", "baseline.json", "finetune.json", "conversion.json", "comparison.json")


class Workspace:
    def __init__(self, run_dir, cache_dir):
        self.run_dir = fileio.check_folder_target(Path(run_dir).resolve(), "run folder (run_dir)")
        self.cache_dir = fileio.check_folder_target(Path(cache_dir).resolve(), "cache folder (cache_dir)")
        (self.run_dir / "figures").mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._data = None

    # -- inputs built once ----------------------------------------------------------------
    @property
    def data_root(self):
        return self.cache_dir / "data"

    def data(self):
        """The food data set (built into the cache on first use): paths by subset and split."""
        if self._data is None:
            root = self.data_root
            if not food_data.is_current(root):  # missing, or built with older defaults
                food_data.build_datasets(root, overwrite=root.exists())
            self._data = {
                "root": root,
                "image_folder": root / food_data.IMAGE_FOLDER,
                **{s: {p: root / s / f"{p}.json" for p in food_data.SPLITS} for s in food_data.SUBSETS},
            }
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
