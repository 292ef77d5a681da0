"""The pretrained tiny base model: how it is made, checked, and found.

The CPU course needs a small model that already recognises the known dishes, answers in the
sentence form "图中的菜是X。", and has never seen the held-back dishes (肠粉 ...), so that the
fine-tune has something visible to teach. It is made the way InternVL itself is made - by
training - only tiny:

1. write a tiny InternVL2 checkpoint with random weights (`labkit.checkpoints.folder`);
2. render the course data (`labkit.data.build`); the ``general`` set holds the known dishes only;
3. fully fine-tune every weight (vision tower, projector, language model) on ``general/train``
   with XTuner (`labkit.train.finetune`, preset `labkit.train.settings.tiny_pretrain_cpu`);
4. turn XTuner's ``.pth`` into an official-format folder (`labkit.convert.pipeline`);
5. check it on the test splits: known dishes >= 80 % right, held-back dishes <= 10 % right
   (it has never seen them, so it names another dish), >= 95 % of answers in sentence form.
   A model that misses a target is not published.

That takes several minutes on a 2-core laptop, so the result is committed under
``labkit/assets/base-tiny`` (bf16 safetensors, about 2 MB) together with ``base-model.json``
(the figures, the seed, the settings). Rebuild it with::

    labkit base-model build labkit/assets/base-tiny --overwrite [--seed 1]
    labkit base-model check labkit/assets/base-tiny     # re-measure the targets
    labkit base-model refresh-code labkit/assets/base-tiny   # after a model-code fix

Notebooks and the main job call `ensure_base()`, which returns the committed folder (or, if it
is missing, builds one into a cache folder named after a fingerprint of the code that makes it).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from labkit.fileio import PACKAGE_DIR

ASSET_DIR = PACKAGE_DIR / "assets" / "base-tiny"
REPORT_NAME = "base-model.json"
TARGETS = {"known_min": 0.80, "held_back_max": 0.10, "sentence_min": 0.95}
# The committed base model's seed (random weights and data order). Seeds 0, 1 and 2 all meet the
# targets; seed 1 gave the fine-tune the best start (docs/finetune.md has the figures).
DEFAULT_SEED = 1
DATA_SEED = 0  # the course data every notebook uses
# The files whose contents decide what a build produces (the cache fingerprint).
SOURCES = ("course/base_model.py", "train/settings.py", "train/xtuner_config.py", "train/finetune.py",
           "train/lean.py", "train/launch.py", "train/dataset.py", "checkpoints/folder.py",
           "checkpoints/tokenizer.py", "data/dishes.py", "data/paint.py", "data/pieces.py", "data/build.py",
           "data/answers.py", "convert/*.py", "model/*.py")


class BaseModelError(RuntimeError):
    """The base model could not be built, or misses a target."""


@dataclass
class BaseCheck:
    """The three figures the base model must meet, measured on the test splits."""

    known_accuracy: float  # general/test: known dishes named correctly
    held_back_accuracy: float  # food/test, held-back dishes only: named correctly (should be ~0)
    sentence_rate: float  # general/test: answers of the form "图中的菜是X。"
    answers: int

    def failures(self) -> list[str]:
        out = []
        if not self.known_accuracy >= TARGETS["known_min"]:
            out.append(f"known dishes {self.known_accuracy:.0%} < {TARGETS['known_min']:.0%}")
        if not self.held_back_accuracy <= TARGETS["held_back_max"]:
            out.append(f"held-back dishes {self.held_back_accuracy:.0%} > {TARGETS['held_back_max']:.0%}")
        if not self.sentence_rate >= TARGETS["sentence_min"]:
            out.append(f"sentence form {self.sentence_rate:.0%} < {TARGETS['sentence_min']:.0%}")
        return out

    def summary(self) -> str:
        return (f"known dishes {self.known_accuracy:.0%} (target >= {TARGETS['known_min']:.0%}), "
                f"held-back dishes {self.held_back_accuracy:.0%} (target <= {TARGETS['held_back_max']:.0%}), "
                f"sentence form {self.sentence_rate:.0%} (target >= {TARGETS['sentence_min']:.0%}); "
                f"{self.answers} answers")


def pretrain_settings(model_path, data_root, seed=0):
    """The full fine-tune that makes the base model (`settings.tiny_pretrain_cpu`) on ``data_root``."""
    from labkit.train.settings import tiny_pretrain_cpu

    data_root = Path(data_root)
    return tiny_pretrain_cpu().replace(model_path=str(model_path),
                                       data_paths=(str(data_root / "general" / "train.json"),),
                                       image_folder=str(data_root / "images"), seed=seed)


def check_base(model_dir, data_root) -> BaseCheck:
    """Measure the targets on ``data_root``'s test splits (greedy answers, as students ask)."""
    from labkit.checkpoints.folder import load_checkpoint
    from labkit.eval.evaluate import evaluate

    data_root = Path(data_root)
    loaded = load_checkpoint(model_dir)
    general = evaluate(model_dir, data_root / "general" / "test.json", data_root / "images", model=loaded)
    food = evaluate(model_dir, data_root / "food" / "test.json", data_root / "images", model=loaded)
    return BaseCheck(known_accuracy=general.accuracy("known"), held_back_accuracy=food.accuracy("held_back"),
                     sentence_rate=general.sentence_rate(), answers=len(general.answers) + len(food.answers))


def fingerprint() -> str:
    """A short hash of the code that decides a build's result (names a cache folder)."""
    digest = hashlib.sha256()
    for pattern in SOURCES:
        for path in sorted(PACKAGE_DIR.glob(pattern)):
            digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _log(message, quiet):
    if not quiet:
        print(f"[base_model] {message}", flush=True)


def build(out_dir, seed=DEFAULT_SEED, data_root=None, work_dir=None, overwrite=False, progress=True, quiet=False,
          cpu_threads=0, data_seed=DATA_SEED, start=None) -> Path:
    """Build the base model into ``out_dir`` (published only if it meets every target).

    ``start``: a tiny model folder of your own to pretrain instead of labkit's random one (any
    InternVL2 folder with an InternLM2 LLM, e.g. one with another remote code or tokenizer); the
    result keeps that folder's code and tokenizer.

    ``seed`` decides the random weights and the data order; the pictures are the course data
    (``data_seed``), rendered afresh unless ``data_root`` names a folder built by
    `labkit.data.build.build_datasets`. ``work_dir`` keeps the intermediate files (else a temporary
    folder, removed at the end).
    """
    from labkit import fileio
    from labkit.checkpoints.folder import _prepare_out_dir, _publish, write_checkpoint
    from labkit.convert import convert
    from labkit.data.build import build_datasets
    from labkit.train.finetune import train

    started = time.monotonic()
    out_dir, stage = _prepare_out_dir(out_dir, overwrite)
    scratch = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="labkit-base-model-"))
    scratch.mkdir(parents=True, exist_ok=True)
    timings = {}
    try:
        mark = time.monotonic()
        random_dir = Path(start) if start else write_checkpoint(scratch / "random", seed=seed, overwrite=True)
        timings["random_checkpoint_s"] = round(time.monotonic() - mark, 1)
        _log(f"random tiny checkpoint: {random_dir}", quiet)
        mark = time.monotonic()
        if data_root is None:
            data_root = build_datasets(scratch / "data", seed=data_seed, overwrite=True)["root"]
        timings["data_s"] = round(time.monotonic() - mark, 1)
        settings = pretrain_settings(random_dir, data_root, seed).replace(cpu_threads=cpu_threads)
        _log(f"training on {settings.data_paths[0]}", quiet)
        result = train(settings, scratch / "train", progress=progress, overwrite=True)
        timings["train_s"] = result.wall_time_s
        mark = time.monotonic()
        shutil.rmtree(stage)  # convert writes its own folder atomically
        convert(result.config_path, result.checkpoint, stage, overwrite=True, quiet=quiet)
        timings["convert_s"] = round(time.monotonic() - mark, 1)
        mark = time.monotonic()
        check = check_base(stage, data_root)
        timings["check_s"] = round(time.monotonic() - mark, 1)
        _log(check.summary(), quiet)
        if check.failures():
            raise BaseModelError(f"the trained model misses its targets ({'; '.join(check.failures())}); "
                                 f"nothing was published. Training log: {result.log_path}")
        timings["total_s"] = round(time.monotonic() - started, 1)
        report = {
            "command": f"labkit base-model build {out_dir} --seed {seed}" + (f" --start {start}" if start else ""),
            "seed": seed, "data_seed": data_seed, "fingerprint": fingerprint(),
            "check": asdict(check), "targets": TARGETS,
            "timings": timings, "iterations": result.iterations, "final_loss": result.losses[-1][1],
            "settings": {k: v for k, v in asdict(settings).items() if k not in ("model_path", "data_paths",
                                                                                  "image_folder")},
        }
        fileio.write_json(stage / REPORT_NAME, report)
        _publish(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        if not work_dir:
            shutil.rmtree(scratch, ignore_errors=True)
    _log(f"wrote {out_dir} in {time.monotonic() - started:.0f} s", quiet)
    return out_dir


def stale_code(model_dir) -> list[str]:
    """Remote-code files in ``model_dir`` that differ from labkit/model (the current model code)."""
    from labkit import model as model_code
    code_dir = Path(model_code.__file__).parent
    return [name for name in model_code.REMOTE_CODE_FILES
            if not (Path(model_dir) / name).is_file()
            or (Path(model_dir) / name).read_bytes() != (code_dir / name).read_bytes()]


def refresh_code(model_dir) -> list[str]:
    """Copy the current labkit/model files into ``model_dir`` (weights untouched); return what changed.

    For a fix in the model code that keeps parameter names and shapes. If the weights no longer
    load or answer afterwards (`check` fails), rebuild instead.
    """
    from labkit import fileio
    from labkit import model as model_code
    _check_code_target(model_dir)
    code_dir = Path(model_code.__file__).parent
    changed = stale_code(model_dir)
    for name in changed:
        fileio.copy_file(code_dir / name, Path(model_dir) / name)
    return changed


def _check_code_target(model_dir) -> None:
    """Only an InternVL2 checkpoint folder gets model code: config.json with both parts, and weights."""
    from labkit import model as model_code
    from labkit.checkpoints.folder import CheckpointError, load_config

    folder = Path(model_dir)
    if not folder.exists():
        raise CheckpointError(f"{folder}: no such folder; pass the model folder whose code should be refreshed "
                              "(e.g. labkit/assets/base-tiny).")
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: is a file, not a model folder; nothing was written.")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing, so {folder} is not a model folder; nothing was written. "
                              "Pass a checkpoint folder (config.json, model.safetensors, tokenizer).")
    config = load_config(config_path)
    if not all(isinstance(config.get(key), dict) for key in ("vision_config", "llm_config")):
        raise CheckpointError(f"{config_path}: has no vision_config and llm_config, so {folder} is not an InternVL2 "
                              "checkpoint; nothing was written.")
    if not ((folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()):
        raise CheckpointError(f"{folder}: holds no model.safetensors (or index), so it is not a model folder; "
                              "nothing was written.")
    foreign = sorted(p.name for p in folder.glob("*.py") if p.name not in model_code.REMOTE_CODE_FILES)
    if foreign or "auto_map" in config["llm_config"]:
        raise CheckpointError(
            f"{folder}: carries remote code that is not labkit's ({', '.join(foreign) or 'llm_config.auto_map'}; "
            "OpenGVLab's InternVL2 folder, for example); refresh-code only updates labkit's own code and "
            "wrote nothing. The folder runs with its own code as it is.")


def default_cache_dir() -> Path:
    return Path(os.environ.get("LABKIT_CACHE", Path.home() / ".cache" / "labkit"))


def ensure_base(cache_dir=None, progress=True) -> Path:
    """The base model folder: the committed one, or a cached build of the current code.

    Returns ``labkit/assets/base-tiny`` when it is there and complete. Otherwise builds the
    base model once into ``cache_dir/base-tiny-<fingerprint>`` (default ``~/.cache/labkit``,
    or ``$LABKIT_CACHE``) and returns that; a later call finds it.
    """
    from labkit.checkpoints.folder import check_model_folder

    if (ASSET_DIR / "config.json").is_file():
        check_model_folder(ASSET_DIR)
        return ASSET_DIR
    target = Path(cache_dir or default_cache_dir()) / f"base-tiny-{fingerprint()}"
    if (target / REPORT_NAME).is_file():
        check_model_folder(target)
        return target
    return build(target, progress=progress, overwrite=target.exists())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="labkit base-model", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="build the base model from scratch (several minutes on a CPU)")
    b.add_argument("out_dir")
    b.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"weights and data order (default {DEFAULT_SEED})")
    b.add_argument("--data", help="reuse a data folder built by `labkit data build`")
    b.add_argument("--work-dir", help="keep intermediate files (random model, data, XTuner run) here")
    b.add_argument("--threads", type=int, default=0, help="CPU threads for training (0 = all cores)")
    b.add_argument("--overwrite", action="store_true")
    b.add_argument("--start", help="pretrain this tiny model folder instead of a random labkit one")
    r = sub.add_parser("refresh-code", help="copy the current labkit/model code into a base model folder")
    r.add_argument("model_dir")
    c = sub.add_parser("check", help="measure the targets of a base model folder")
    c.add_argument("model_dir")
    c.add_argument("--data", help="data folder (default: build the seed-0 data into a temporary folder)")
    args = parser.parse_args(argv)
    if args.action == "build":
        from labkit.checkpoints.folder import CheckpointError

        try:
            build(args.out_dir, seed=args.seed, data_root=args.data, work_dir=args.work_dir,
                  overwrite=args.overwrite, cpu_threads=args.threads, start=args.start)
        except (CheckpointError, FileExistsError, NotADirectoryError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if args.action == "refresh-code":
        from labkit.checkpoints.folder import CheckpointError

        try:
            changed = refresh_code(args.model_dir)
        except CheckpointError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"updated {', '.join(changed)}" if changed else "the model code was already current")
        return 0
    data_root, scratch = args.data, None
    if data_root is None:
        from labkit.data.build import build_datasets

        scratch = Path(tempfile.mkdtemp(prefix="labkit-base-check-"))
        data_root = build_datasets(scratch / "data", seed=DATA_SEED)["root"]
    try:
        check = check_base(args.model_dir, data_root)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    print(check.summary())
    return 1 if check.failures() else 0
