"""Build the course's food data sets in XTuner's InternVL annotation format.

Two subsets are written, each with train/val/test splits:

* `general` - only the known dishes (no held-back dish ever appears, not even as a wrong
  option): the data the tiny base model is pretrained on;
* `food` - every dish, held-back ones included: the course's fine-tune set.

Every record is one picture and one question:

    {"id": "food-train-cheung_fun-0003", "image": "food/train/cheung_fun-0003.jpg",
     "image_wh": [216, 108],
     "conversations": [{"from": "human", "value": "<image>\\n图中的菜是什么？"},
                       {"from": "gpt", "value": "图中的菜是肠粉。"}]}

Questions are either open ("图中的菜是什么？" and paraphrases, answer "图中的菜是肠粉。") or
FoodieQA-style multiple choice ("图中的菜是哪一道？ A. 叉烧 B. 肠粉 C. 月饼 D. 饺子", answer
"B，图中的菜是肠粉。"). Each picture is rendered once and belongs to exactly one subset and split,
so no test picture was ever seen in training. Everything follows from the seed.

    labkit data build                   # the course's set, into data/
    labkit data build other/ --seed 1
    labkit data build other/ --overwrite --sizes '{"food": {"train": 30}}'
    labkit data sheet dishes.png        # a contact sheet of every dish

Layout written:

    OUT_ROOT/images/{general,food}/{train,val,test}/<dish key>-<n>.jpg
    OUT_ROOT/{general,food}/{train,val,test}.json
    OUT_ROOT/manifest.json

The course's own set (seed 0, default sizes) lives in the repository's `data/` folder
(`DATA_DIR`), next to a README.md that a build keeps; `course_data()` builds it there once.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labkit import fileio
from labkit.fileio import REPO_ROOT
from labkit.data.answers import OPTION_LETTERS, answer_dish, answer_sentence
from labkit.data.dishes import CHOICE_QUESTION, DISHES, OPEN_QUESTIONS
from labkit.data.paint import render_dish, save_jpeg, stable_seed
from labkit.data.validate import IMAGE_TAG, read_annotations, validate

SUBSETS = ("general", "food")
SPLITS = ("train", "val", "test")
# Pictures per dish. Small on purpose: the CPU course must build and train in minutes.
DEFAULT_SIZES = {
    "general": {"train": 35, "val": 5, "test": 10},
    "food": {"train": 18, "val": 5, "test": 10},
}
# The held-back dishes are new to the base model, so the food train split holds this many times
# more pictures of each of them than of a known dish (val and test stay equal per dish).
HELD_BACK_TRAIN_FACTOR = 2
MC_FRACTION = 0.3  # share of multiple-choice questions; the rest are open questions

IMAGE_FOLDER = "images"
DATA_DIR = REPO_ROOT / "data"  # where the course's food set is built (ignored by git but its README)
NOTE = "README.md"  # a note beside the data (data/README.md): kept by a build, never counted as data


# ----------------------------------------------------------------------------- questions and records


def choice_question(options: list[str]) -> str:
    """"图中的菜是哪一道？ A. 叉烧 B. 肠粉 C. 月饼 D. 饺子" for the given options."""
    listed = " ".join(f"{OPTION_LETTERS[k]}. {name}" for k, name in enumerate(options))
    return f"{CHOICE_QUESTION} {listed}"


def make_question(name: str, pool: list[str], rng: np.random.Generator,
                  mc_fraction: float = MC_FRACTION) -> tuple[str, str]:
    """A (question, answer) pair about dish `name`; distractors are drawn from `pool` only."""
    others = [other for other in pool if other != name]
    if rng.random() < mc_fraction and len(others) >= len(OPTION_LETTERS) - 1:
        picks = rng.choice(len(others), size=len(OPTION_LETTERS) - 1, replace=False)
        options = [others[k] for k in picks]
        slot = int(rng.integers(len(OPTION_LETTERS)))
        options.insert(slot, name)
        return choice_question(options), answer_sentence(name, OPTION_LETTERS[slot])
    return OPEN_QUESTIONS[int(rng.integers(len(OPEN_QUESTIONS)))], answer_sentence(name)


def make_record(record_id: str, image: str, size: tuple[int, int], question: str,
                answer: str) -> dict:
    """One annotation record in XTuner's InternVL format (image_wh helps its length grouping)."""
    return {
        "id": record_id,
        "image": image,
        "image_wh": [int(size[0]), int(size[1])],
        "conversations": [
            {"from": "human", "value": f"{IMAGE_TAG}\n{question}"},
            {"from": "gpt", "value": answer},
        ],
    }


# ----------------------------------------------------------------------------- reading records


@dataclass(frozen=True)
class Sample:
    """A record read back for evaluation: its picture, question, reference answer and dish."""

    id: str
    image: str
    question: str
    answer: str
    dish: str | None


def load_samples(path: str | os.PathLike) -> list[Sample]:
    """Read an annotation file (.json or .jsonl) into Samples (first question/answer turn)."""
    samples = []
    for index, record in enumerate(read_annotations(path)):
        turns = record["conversations"]
        question = turns[0]["value"].replace(IMAGE_TAG, "").strip()
        answer = turns[1]["value"]
        samples.append(Sample(str(record.get("id", index)), record["image"], question, answer,
                              answer_dish(answer)))
    return samples


# ----------------------------------------------------------------------------- building


def resolve_sizes(sizes: dict | None) -> dict:
    """DEFAULT_SIZES with any entries of `sizes` replaced, e.g. {"food": {"train": 5}}."""
    merged = copy.deepcopy(DEFAULT_SIZES)
    if sizes is not None and not isinstance(sizes, dict):
        raise ValueError(f"sizes must be a dict like {{'food': {{'train': 18}}}}, not {sizes!r}")
    for subset, splits in (sizes or {}).items():
        if subset not in merged or not isinstance(splits, dict):
            raise ValueError(f"sizes: unknown subset {subset!r}; use a dict like "
                             f"{{'general': {{'train': 35}}}} with subsets {SUBSETS}")
        for split, count in splits.items():
            if split not in SPLITS or not isinstance(count, int) or count < 0:
                raise ValueError(f"sizes[{subset!r}]: {split!r}={count!r}; splits are {SPLITS} "
                                 "and counts are whole numbers >= 0")
            merged[subset][split] = count
    return merged


def _holds_files(out_root: Path) -> bool:
    """True when `out_root` holds anything but its README.md note."""
    return any(item.name != NOTE for item in out_root.iterdir())


def _prepare_destination(out_root: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty folder unless asked, and never one that is not ours."""
    if not out_root.exists():
        return
    if not out_root.is_dir():
        raise FileExistsError(f"{out_root} exists and is not a folder; choose another OUT_ROOT.")
    if not _holds_files(out_root):
        return
    if not overwrite:
        raise FileExistsError(
            f"{out_root} is not empty. Pass overwrite=True (CLI: --overwrite) to rebuild it, "
            "or choose an empty or new folder.")
    if not (out_root / "manifest.json").is_file():
        raise FileExistsError(
            f"{out_root} is not empty and has no manifest.json, so it is not a labkit data "
            "folder; labkit will not delete it even with overwrite. Choose another folder.")


def _write_json(path: Path, data) -> None:
    """Write JSON (UTF-8, Chinese kept readable) atomically (labkit.fileio)."""
    fileio.write_json(path, data, indent=1)


def pictures_per_dish(dish, subset: str, split: str, per_dish: int,
                      held_back_factor: int = HELD_BACK_TRAIN_FACTOR) -> int:
    """How many pictures of `dish` go into (subset, split): `per_dish`, times `held_back_factor`
    for a held-back dish in food/train."""
    if dish.held_back and subset == "food" and split == "train":
        return per_dish * held_back_factor
    return per_dish


def _build_split(stage: Path, subset: str, split: str, per_dish: int, seed: int,
                 mc_fraction: float, held_back_factor: int) -> tuple[list[dict], dict]:
    """Render the pictures of one (subset, split) and return its records and per-dish counts."""
    dishes = [d for d in DISHES if subset == "food" or not d.held_back]
    pool = [d.name for d in dishes]
    records, counts = [], {}
    for dish in dishes:
        count = pictures_per_dish(dish, subset, split, per_dish, held_back_factor)
        for index in range(count):
            rel = f"{subset}/{split}/{dish.key}-{index:04d}.jpg"
            picture_seed = stable_seed("picture", seed, subset, split, index)
            image = render_dish(dish, picture_seed)
            save_jpeg(image, stage / IMAGE_FOLDER / rel)
            rng = np.random.default_rng(stable_seed("question", seed, subset, split, dish.key, index))
            question, answer = make_question(dish.name, pool, rng, mc_fraction)
            records.append(make_record(f"{subset}-{split}-{dish.key}-{index:04d}", rel,
                                       image.size, question, answer))
        counts[dish.name] = count
    if split == "train":  # a fixed shuffle, so batches mix dishes even without a sampler
        order = np.random.default_rng(stable_seed("shuffle", seed, subset)).permutation(len(records))
        records = [records[k] for k in order]
    return records, counts


def build_datasets(out_root: str | os.PathLike, seed: int = 0, sizes: dict | None = None,
                   overwrite: bool = False, mc_fraction: float = MC_FRACTION,
                   check: bool = True, held_back_factor: int = HELD_BACK_TRAIN_FACTOR) -> dict:
    """Render and write the `general` and `food` data sets; return where everything is.

    out_root: folder to create (must be new or empty unless `overwrite=True`).
    seed: every picture and question follows from it.
    sizes: pictures per dish, overriding DEFAULT_SIZES, e.g. {"food": {"train": 5}}.
    held_back_factor: food/train holds this many times `sizes` of each held-back dish (1 = as
        many as of a known dish). The first pictures are the same whatever the factor.
    check: validate every written annotation file before publishing the folder.

    Returns {"root", "image_folder", "manifest", "general": {split: path}, "food": {...}}.
    The data is built in a temporary sibling folder and renamed into place at the end, so an
    interrupted build never leaves a half-written OUT_ROOT.
    """
    out_root = Path(out_root).absolute()
    sizes = resolve_sizes(sizes)
    if isinstance(held_back_factor, bool) or not isinstance(held_back_factor, int) or held_back_factor < 1:
        raise ValueError(f"held_back_factor must be a whole number >= 1, not {held_back_factor!r}")
    _prepare_destination(out_root, overwrite)
    started = time.perf_counter()
    stage = fileio.make_stage(out_root, "data folder")
    try:
        counts: dict = {}
        for subset in SUBSETS:
            counts[subset] = {}
            for split in SPLITS:
                records, counts[subset][split] = _build_split(
                    stage, subset, split, sizes[subset][split], seed, mc_fraction, held_back_factor)
                _write_json(stage / subset / f"{split}.json", records)
                if check and records:  # a split asked to hold 0 pictures stays empty
                    validate(stage / subset / f"{split}.json", stage / IMAGE_FOLDER).raise_if_bad()
        manifest = {
            "format": "xtuner-internvl",
            "seed": seed,
            "sizes_per_dish": sizes,
            "held_back_train_factor": held_back_factor,
            "mc_fraction": mc_fraction,
            "image_folder": IMAGE_FOLDER,
            "dishes": [{"name": d.name, "key": d.key, "cuisine": d.cuisine,
                        "held_back": d.held_back} for d in DISHES],
            "counts": counts,
            "pictures": sum(n for subset in counts.values() for split in subset.values()
                            for n in split.values()),
            "build_seconds": round(time.perf_counter() - started, 2),
        }
        _write_json(stage / "manifest.json", manifest)
        if (out_root / NOTE).is_file():  # data/README.md stays where it was
            fileio.copy_file(out_root / NOTE, stage / NOTE)
        _publish(stage, out_root)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return data_paths(out_root)


def data_paths(out_root: str | os.PathLike) -> dict:
    """Where a built data set's files are: {"root", "image_folder", "manifest", subset: {split: path}}."""
    out_root = Path(out_root)
    paths = {subset: {split: out_root / subset / f"{split}.json" for split in SPLITS}
             for subset in SUBSETS}
    return {"root": out_root, "image_folder": out_root / IMAGE_FOLDER,
            "manifest": out_root / "manifest.json", **paths}


def course_data(out_root: str | os.PathLike = DATA_DIR) -> dict:
    """The course's food set (seed 0, default sizes) in `out_root`, built there on first use.

    A missing or empty folder (a README.md alone counts as empty) is built once; a folder that
    holds the course's set is used as it is. Anything else is refused with FileExistsError and
    left untouched: a build made with other settings (it says how to rebuild it), or files that
    are not a labkit data set. Returns `data_paths(out_root)`.
    """
    out_root = Path(out_root).absolute()
    if is_current(out_root):
        return data_paths(out_root)
    if out_root.is_dir() and _holds_files(out_root):
        manifest = out_root / "manifest.json"
        if not manifest.is_file():
            raise FileExistsError(
                f"{out_root} holds files but no manifest.json, so it is not a labkit food set; labkit will "
                "not build into it. Move those files away, or give another data folder (data_dir in a notebook, --data-dir for the main job).")
        raise FileExistsError(
            f"{out_root} holds a food set built with other settings than the course's (seed 0, default "
            f"sizes; {manifest} says {_build_settings(manifest)}). labkit does not replace it on its own: "
            f"rebuild it with `python -m labkit.data.build build {out_root} --overwrite`, or give another "
            "data folder (data_dir in a notebook, --data-dir for the main job).")
    return build_datasets(out_root)


def _build_settings(manifest_path: Path) -> str:
    """The settings a manifest records, in one line (or why it cannot be read)."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"nothing readable ({err})"
    if not isinstance(manifest, dict):
        return "nothing readable (not a JSON object)"
    keys = ("seed", "sizes_per_dish", "held_back_train_factor", "mc_fraction")
    return ", ".join(f"{key}={json.dumps(manifest.get(key), ensure_ascii=False)}" for key in keys)


def is_current(out_root: str | os.PathLike, seed: int = 0, sizes: dict | None = None,
               mc_fraction: float = MC_FRACTION,
               held_back_factor: int = HELD_BACK_TRAIN_FACTOR) -> bool:
    """True when `out_root` holds a finished build made with these arguments.

    A folder built before a default changed (sizes, the held-back factor) is not current, so a
    cache of the course data is rebuilt instead of silently training on the old pictures.
    """
    manifest_path = Path(out_root) / "manifest.json"
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict):
        return False
    return (manifest.get("seed") == seed
            and manifest.get("sizes_per_dish") == resolve_sizes(sizes)
            and manifest.get("mc_fraction") == mc_fraction
            and manifest.get("held_back_train_factor", 1) == held_back_factor)


def _publish(stage: Path, out_root: Path) -> None:
    """Move the finished build into place; an old build is removed only after the swap."""
    fileio.publish_folder(stage, out_root)


def main(argv: list[str] | None = None) -> int:
    """Command line: `build OUT_ROOT [--seed N] [--overwrite]` or `sheet PNG`."""
    parser = argparse.ArgumentParser(prog="labkit data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="render the general and food data sets")
    build.add_argument("out_root", nargs="?", default=str(DATA_DIR),
                       help=f"folder to create (new or empty; default {DATA_DIR})")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--overwrite", action="store_true",
                       help="replace an existing labkit data folder")
    build.add_argument("--sizes", type=json.loads, default=None,
                       help='pictures per dish as JSON, e.g. \'{"food": {"train": 30}}\'')
    build.add_argument("--held-back-factor", type=int, default=HELD_BACK_TRAIN_FACTOR,
                       help="food/train holds this many times more pictures of each held-back dish "
                            f"(default {HELD_BACK_TRAIN_FACTOR})")
    sheet = commands.add_parser("sheet", help="save a contact sheet PNG of every dish")
    sheet.add_argument("png")
    args = parser.parse_args(argv)
    if args.command == "sheet":
        from labkit.data.paint import contact_sheet
        print(f"wrote {contact_sheet(args.png)}")
        return 0
    try:
        result = build_datasets(args.out_root, seed=args.seed, sizes=args.sizes,
                                overwrite=args.overwrite, held_back_factor=args.held_back_factor)
    except (FileExistsError, NotADirectoryError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    manifest = json.loads(result["manifest"].read_text(encoding="utf-8"))
    print(f"wrote {manifest['pictures']} pictures in {manifest['build_seconds']} s "
          f"to {result['root']}")
    for subset in SUBSETS:
        for split in SPLITS:
            print(f"  {result[subset][split]}")
    print(f"image folder: {result['image_folder']}")
    return 0
