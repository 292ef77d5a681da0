"""Fine-tune InternVL2 with XTuner's own trainer, and make sure it really trained.

    from labkit.train import finetune, settings
    result = finetune.train(settings.tiny_lora_cpu(), "runs/food-lora")
    result.checkpoint      # runs/food-lora/xtuner/iter_30.pth - the trained weights (LoRA + mlp1)
    result.losses          # [(1, 6.41), (2, 5.87), ...]

What `train` does, step by step:

1. Check the inputs before anything slow starts: the model folder is a complete checkpoint,
   every annotation file passes `labkit.data.validate` (XTuner would silently swap a broken sample
   for a random other one), ``max_length`` holds every picture's image tokens
   (`check_max_length`), and the work folder holds no finished run.
2. Plan: count the samples and compute how many iterations XTuner will run
   (`Settings.planned_iterations`), then render the XTuner config into the work folder with
   that plan (`labkit.train.xtuner_config.render_config`).
3. Run XTuner's training entry point in a child process (`labkit.train.launch`; several GPUs
   through ``torchrun`` + DeepSpeed). Its output streams into ``train.log``. The losses come from
   mmengine's own record of every logged iteration, ``xtuner/<timestamp>/vis_data/scalars.json``
   (`read_losses`); a progress bar and the optional ``on_loss(iteration, loss)`` callback follow
   that file as it grows.
4. Decide success from evidence, not from hope: exit code 0, no Python traceback in the log,
   the losses reach the planned iteration, ``iter_<planned>.pth`` exists, and every logged loss
   is finite (`check_losses`). Anything else raises `TrainingError` with the end of the log.
5. Save the loss curve (``loss.png``) and a ``result.json`` that marks the folder finished.

The work folder then holds ``config.py`` (the rendered XTuner config), ``train.log``,
``loss.png``, ``result.json`` and ``xtuner/`` - XTuner's own work dir with ``iter_<N>.pth``.

CPU or one GPU: ``python -m labkit.train.launch CONFIG --work-dir W``. Several GPUs
(``Settings(gpus=N, zero_stage=2)``): ``torchrun --nproc-per-node N -m labkit.train.launch
CONFIG --work-dir W --deepspeed deepspeed_zero2`` - written for the course GPU machines, not
testable on a laptop.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from labkit.train.settings import Settings
from labkit.train.xtuner_config import write_config
from labkit.fileio import REPO_ROOT

MARKER = "labkit-run.json"  # written when a run starts: the folder belongs to labkit
RESULT = "result.json"  # written when a run finished and passed every check
LOG_NAME = "train.log"
CONFIG_NAME = "config.py"
XTUNER_DIR = "xtuner"  # XTuner's own work dir: checkpoints, its config dump, timestamped logs
TAIL_LINES = 40
# mmengine's LoggerHook hands every logged iteration's scalars (loss, lr, grad_norm, ...) to the
# default LocalVisBackend, which appends them as one JSON object a line, with the iteration as
# "step", to <work dir>/<timestamp>/vis_data/scalars.json.
SCALARS = "*/vis_data/scalars.json"
# The counter of mmengine's training log line, "Iter(train) [ 12/120]  lr: ...": XTuner's total.
ITER_LINE = re.compile(r"Iter\(train\)\s*\[\s*(\d+)\s*/\s*(\d+)\s*\]")


class TrainingError(RuntimeError):
    """Training did not finish as planned; the message carries the end of the log."""

    def __init__(self, message, log_path=None, log_tail=""):
        self.log_path, self.log_tail = log_path, log_tail
        text = message
        if log_path:
            text += f"\nFull log: {log_path}"
        if log_tail:
            text += f"\n--- last lines of the log ---\n{log_tail}"
        super().__init__(text)


@dataclass
class TrainResult:
    """What a finished run left behind, with the figures that prove it trained."""

    work_dir: Path
    checkpoint: Path  # xtuner/iter_<N>.pth: the trained weights (LoRA + mlp1, or the whole model)
    config_path: Path  # the exact XTuner config the run used
    log_path: Path
    loss_curve: Path | None
    num_samples: int
    iterations: int  # iterations XTuner ran (== planned_iterations)
    planned_iterations: int
    losses: list = field(default_factory=list)  # [(iteration, loss), ...] from mmengine's scalars.json
    wall_time_s: float = 0.0

    def to_json(self) -> dict:
        data = asdict(self)
        for key in ("work_dir", "checkpoint", "config_path", "log_path", "loss_curve"):
            data[key] = str(data[key]) if data[key] is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict) -> "TrainResult":
        data = dict(data)
        for key in ("work_dir", "checkpoint", "config_path", "log_path", "loss_curve"):
            data[key] = Path(data[key]) if data[key] is not None else None
        data["losses"] = [tuple(pair) for pair in data["losses"]]
        return cls(**data)


# -- 1. inputs ----------------------------------------------------------------------------
def resolve_paths(settings: Settings, base=None) -> Settings:
    """The settings with every path made absolute (relative paths are read from ``base``/cwd)."""
    base = Path(base or os.getcwd())

    def absolute(path):
        path = Path(path).expanduser()
        return str(path if path.is_absolute() else (base / path).resolve())

    resolved = settings.replace(
        model_path=absolute(settings.model_path),
        data_paths=tuple(absolute(p) for p in settings.data_paths),
        image_folder=absolute(settings.image_folder),
    )
    from labkit.data.build import replay_source

    return resolved.replace(replay_data=str(replay_source(
        settings.replay_data if settings.replay_data == "auto" else absolute(settings.replay_data),
        resolved.data_paths[0])))


def check_model(settings: Settings) -> None:
    """The model folder must be a complete checkpoint (labkit.checkpoints.folder.check_model_folder)."""
    from labkit.checkpoints.folder import check_model_folder

    check_model_folder(settings.model_path)


def check_data(settings: Settings) -> int:
    """Validate every annotation file against the image folder; return the number of samples.

    XTuner skips a sample whose image fails to load and trains on a random other one instead,
    without stopping; validating first means nothing is silently skipped.
    """
    from labkit.data.validate import validate

    total = 0
    for path in settings.data_paths:
        if Path(path).is_dir():
            raise IsADirectoryError(f"{path}: is a folder, not an annotation file (setting data_paths); name the "
                                    ".json or .jsonl file inside it.")
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: annotation file not found (setting data_paths). Build the data "
                                    "with labkit.data.build.build_datasets or point data_paths at your file.")
        validate(path, settings.image_folder).raise_if_bad()
        total += count_samples(path)
    if total == 0:
        raise ValueError(f"{', '.join(settings.data_paths)}: no training samples.")
    check_max_length(settings)
    return total + check_replay(settings)


def check_replay(settings: Settings) -> int:
    """The replay samples ``settings`` mix in (0 when replay is off), their file validated first."""
    if not settings.replay:
        return 0
    from labkit.data.build import replay_records
    from labkit.data.validate import validate

    if not Path(settings.replay_data).is_file():
        raise FileNotFoundError(f"{settings.replay_data}: replay file not found (setting replay_data, used because "
                                f"replay={settings.replay}). Build the data with labkit.data.build.build_datasets "
                                "(it writes general/train.json), point replay_data at a file, or set replay=0.")
    validate(settings.replay_data, settings.image_folder).raise_if_bad()
    return len(replay_records(settings.replay_data, settings.replay, settings.seed))


def check_max_length(settings: Settings) -> int:
    """Refuse a ``max_length`` that one sample's image tokens alone fill; return the largest image span.

    XTuner cuts every sample at ``max_length`` tokens. A picture becomes ``tiles x tokens per
    tile`` ``<IMG_CONTEXT>`` tokens between ``<img>`` and ``</img>`` (the tiling the model's
    config.json sets), and the answer comes after it. When ``max_length`` is not larger than
    that, the answer is cut off entirely: XTuner's own model type then averages a loss over no
    tokens and logs NaN for every iteration, and labkit's lean model stops on a cut image. Both
    are known before anything launches, for every model type.
    """
    from PIL import Image

    from labkit.checkpoints.folder import load_config
    from labkit.tiling import tiling_from_config
    from labkit.data.validate import image_path_of, read_annotations

    config_path = Path(settings.model_path) / "config.json"
    tiling = tiling_from_config(load_config(config_path))
    largest, where = 0, None
    sizes = {}
    for path in settings.data_paths:
        for index, record in enumerate(read_annotations(path)):
            rel, _ = image_path_of(record)
            if rel is None:
                continue  # a text-only record has no image tokens (validate has judged it already)
            image = Path(settings.image_folder) / rel
            if image not in sizes:
                with Image.open(image) as picture:
                    sizes[image] = picture.size
            tokens = tiling.count_image_tokens(*sizes[image]) + 2  # <img> ... </img>
            if tokens > largest:
                largest, where = tokens, (path, index, rel, sizes[image])
    if where is not None and settings.max_length <= largest:
        from labkit.train.settings import SettingsError

        path, index, rel, (width, height) = where
        raise SettingsError(
            f"max_length={settings.max_length} is too small: {path}, record {index + 1} (image {rel!r}, "
            f"{width}x{height} px) needs {largest} tokens for its picture alone "
            f"({tiling.count_tiles(width, height)} tiles x {tiling.tokens_per_tile} tokens + <img></img>, as "
            f"{config_path} tiles it), so XTuner would cut off every answer token and train on nothing "
            f"(a NaN loss). Raise max_length well above {largest} (the presets use 2048 for the tiny model, "
            "8192 for InternVL2-2B), or lower max_dynamic_patch in config.json."
        )
    return largest


def count_samples(path) -> int:
    """Samples in a JSON list or JSONL annotation file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return sum(1 for line in text.splitlines() if line.strip())
    return len(json.loads(text))


def prepare_work_dir(work_dir, overwrite=False) -> Path:
    """An empty (or labkit-owned, unfinished) work folder; a finished run needs ``overwrite``."""
    work_dir = Path(work_dir).resolve()
    if work_dir.exists() and not work_dir.is_dir():
        raise FileExistsError(f"{work_dir}: exists and is not a folder; choose another work_dir.")
    if work_dir.is_dir() and any(work_dir.iterdir()):
        if not (work_dir / MARKER).is_file():
            raise FileExistsError(
                f"{work_dir}: not empty and not a labkit training folder; nothing was touched. "
                "Choose a new or empty work_dir."
            )
        if (work_dir / RESULT).is_file() and not overwrite:
            raise FileExistsError(
                f"{work_dir}: already holds a finished run ({RESULT}); nothing was touched. Use "
                "finetune.load_result() to read it, choose a new work_dir, or pass overwrite=True to train again."
            )
        shutil.rmtree(work_dir)  # our own unfinished run, or a finished one the caller replaces
    work_dir.mkdir(parents=True, exist_ok=True)
    return work_dir


# -- 3. running XTuner --------------------------------------------------------------------
def launch_command(settings: Settings, config_path, work_dir) -> list[str]:
    """The command that runs XTuner's trainer for these settings."""
    module = ["-m", "labkit.train.launch", str(config_path), "--work-dir", str(work_dir),
              "--device", settings.device]
    if settings.zero_stage:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(settings.gpus),
                *module, "--deepspeed", f"deepspeed_zero{settings.zero_stage}"]
    return [sys.executable, *module]


def _child_env(settings: Settings) -> dict:
    env = dict(os.environ)
    if settings.cpu_threads:
        # On a CPU that other programs also use, fewer threads than cores can be much faster:
        # torch's threads wait for each other at every operation.
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(settings.cpu_threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def parse_log_line(line):
    """``(iteration, total)`` from mmengine's training log line, else None (the total XTuner planned)."""
    match = ITER_LINE.search(line)
    if not match:
        return None
    return int(match.group(1)), int(match.group(2))


def scalars_file(xtuner_dir) -> Path | None:
    """mmengine's ``vis_data/scalars.json`` in XTuner's work dir (the newest run's), or None."""
    found = sorted(Path(xtuner_dir).glob(SCALARS))
    return found[-1] if found else None


def _records(path, data: bytes, first_line=1):
    """The JSON objects in ``data`` (whole lines only); a line that is not JSON names the file."""
    records = []
    for number, line in enumerate(data.splitlines(), first_line):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as err:
            raise TrainingError(f"{path}, line {number}: not a JSON record ({err}); mmengine's scalars log "
                                "is damaged, so the losses cannot be read. Train again.") from None
    return records


def losses_of(records) -> list[tuple[int, float]]:
    """``[(iteration, loss), ...]`` from mmengine's scalar records (NaN and inf kept as they are)."""
    return [(int(r["step"]), float(r["loss"])) for r in records if isinstance(r, dict) and "loss" in r]


class ScalarsFollower:
    """The records mmengine appends to scalars.json, read as the run goes on (whole lines only)."""

    def __init__(self, xtuner_dir):
        self.xtuner_dir, self.path, self.offset, self.lines = Path(xtuner_dir), None, 0, 0

    def new_records(self) -> list[dict]:
        if self.path is None:
            self.path = scalars_file(self.xtuner_dir)
            if self.path is None:
                return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        data = data[:data.rfind(b"\n") + 1]  # a line mmengine is still writing waits for the next call
        records = _records(self.path, data, self.lines + 1)
        self.offset, self.lines = self.offset + len(data), self.lines + data.count(b"\n")
        return records


def read_losses(xtuner_dir) -> list[tuple[int, float]]:
    """Every logged loss of the run in ``xtuner_dir``, from mmengine's scalars.json ([] if none)."""
    return losses_of(ScalarsFollower(xtuner_dir).new_records())


def run_logged(command, log_path, planned, xtuner_dir, progress=True, on_loss=None, timeout_s=None, env=None):
    """Run ``command``, copy its output into ``log_path``, follow the losses in mmengine's scalars.json.

    Returns ``(exit_code, total_shown, tail)``: XTuner's planned total as its log line shows it.
    """
    tail = deque(maxlen=TAIL_LINES)
    last_iter, total_shown = 0, None
    scalars = ScalarsFollower(xtuner_dir)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=planned, desc="XTuner training", unit="it")

    def follow():
        nonlocal last_iter
        for iteration, loss in losses_of(scalars.new_records()):
            if bar is not None:
                bar.update(iteration - last_iter)
                bar.set_postfix(loss=f"{loss:.4f}")
            last_iter = iteration
            if on_loss is not None:
                on_loss(iteration, loss)

    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env or os.environ,
                                cwd=str(REPO_ROOT), text=True, encoding="utf-8", errors="replace", bufsize=1)
        try:
            for line in proc.stdout:
                log.write(line)
                tail.append(line.rstrip("\n"))
                parsed = parse_log_line(line)
                if parsed:
                    total_shown = parsed[1]
                follow()  # mmengine writes the JSON record right after the log line
                if timeout_s and time.monotonic() - started > timeout_s:
                    proc.kill()
                    note = f"[labkit] stopped: the run took longer than timeout_s={timeout_s}"
                    log.write(note + "\n")
                    tail.append(note)
                    break
            code = proc.wait()
            follow()
        except BaseException:  # Ctrl-C in a notebook: stop the child we started, then re-raise
            proc.kill()
            proc.wait()
            raise
        finally:
            if bar is not None:
                bar.close()
    return code, total_shown, "\n".join(tail)


def log_tail(log_path, lines=TAIL_LINES) -> str:
    """The end of a log; when it holds a Python traceback, from the start of the last one."""
    text = Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()
    starts = [i for i, line in enumerate(text) if "Traceback (most recent call last)" in line]
    begin = max(len(text) - lines, 0)
    if starts:
        begin = max(min(starts[-1], begin), len(text) - 3 * lines)
    return "\n".join(line if len(line) < 400 else line[:400] + " ..." for line in text[begin:])


def find_checkpoint(work_dir, iteration) -> Path | None:
    """``iter_<iteration>.pth`` (a file, or a folder under DeepSpeed) if XTuner saved it."""
    path = Path(work_dir) / f"iter_{iteration}.pth"
    return path if path.exists() else None


def check_outcome(code, log_path, planned, last_iter, total_shown, work_dir, tail):
    """Raise TrainingError unless every piece of evidence says the run finished as planned."""
    log_text = Path(log_path).read_text(encoding="utf-8", errors="replace")
    if code != 0:
        raise TrainingError(f"XTuner training failed (exit code {code}).", log_path, tail)
    if "Traceback (most recent call last)" in log_text:
        raise TrainingError("XTuner exited 0 but its log holds a Python traceback.", log_path, tail)
    if total_shown is not None and total_shown != planned:
        raise TrainingError(
            f"XTuner planned {total_shown} iterations but labkit planned {planned} "
            "(samples / (batch_size * accumulative_counts), rounded up, x accumulative_counts x max_epochs).",
            log_path, tail)
    if last_iter != planned:
        raise TrainingError(f"The log stops at iteration {last_iter} of the planned {planned} (losses as mmengine "
                            f"recorded them in {Path(work_dir) / SCALARS}).", log_path, tail)
    checkpoint = find_checkpoint(work_dir, planned)
    if checkpoint is None:
        raise TrainingError(f"No checkpoint iter_{planned}.pth in {work_dir} after training.", log_path, tail)
    return checkpoint


def check_losses(losses, log_path, tail=""):
    """Raise TrainingError when a logged loss is NaN or infinite: such a run learned nothing usable."""
    bad = [(i, loss) for i, loss in losses if not math.isfinite(loss)]
    if bad:
        shown = ", ".join(f"iteration {i}: {loss}" for i, loss in bad[:5])
        raise TrainingError(
            f"The training loss is not a finite number ({shown}; {len(bad)} of {len(losses)} logged iterations). "
            "The checkpoint holds nothing usable and the run is not marked finished. Usual causes: max_length "
            "cuts off every answer token (raise it), a learning rate far too high (lower lr), or float16 "
            "overflow (use amp='bfloat16').", log_path, tail)


# -- the whole run ------------------------------------------------------------------------
def train(settings: Settings, work_dir, progress=True, on_loss=None, overwrite=False, validate=True,
          timeout_s=None) -> TrainResult:
    """Fine-tune with XTuner as ``settings`` say; return a `TrainResult` or raise `TrainingError`.

    ``on_loss(iteration, loss)`` is called for every logged iteration (e.g. `labkit.train.loss_plot.LiveLoss`),
    with the values the result records: mmengine's scalars.json, followed as it grows.
    ``validate=False`` skips the data check - only for demonstrating what XTuner does without it.
    """
    settings = resolve_paths(settings)
    check_model(settings)
    num_samples = (check_data(settings) if validate
                   else sum(count_samples(p) for p in settings.data_paths) + settings.replay)
    work_dir = prepare_work_dir(work_dir, overwrite)
    planned = settings.planned_iterations(num_samples)
    marker = {"settings": asdict(settings), "num_samples": num_samples, "planned_iterations": planned}
    _write_json(work_dir / MARKER, marker)
    config_path = write_config(settings, work_dir / CONFIG_NAME, num_samples=num_samples)
    log_path = work_dir / LOG_NAME
    started = time.monotonic()
    xtuner_dir = work_dir / XTUNER_DIR
    code, total_shown, _ = run_logged(
        launch_command(settings, config_path, xtuner_dir), log_path, planned, xtuner_dir, progress, on_loss,
        timeout_s, _child_env(settings))
    wall = round(time.monotonic() - started, 1)
    losses = read_losses(xtuner_dir) if code == 0 else []  # a failed run is judged by its exit code first
    last_iter = losses[-1][0] if losses else 0
    checkpoint = check_outcome(code, log_path, planned, last_iter, total_shown, xtuner_dir, log_tail(log_path))
    check_losses(losses, log_path, log_tail(log_path))
    from labkit.train.loss_plot import save_loss_curve

    curve = save_loss_curve(losses, work_dir / "loss.png", title=f"training loss ({settings.method})")
    result = TrainResult(work_dir=work_dir, checkpoint=checkpoint, config_path=config_path, log_path=log_path,
                         loss_curve=curve, num_samples=num_samples, iterations=last_iter,
                         planned_iterations=planned, losses=losses, wall_time_s=wall)
    _write_json(work_dir / RESULT, result.to_json())
    return result


def load_result(work_dir) -> TrainResult:
    """The `TrainResult` of a finished run in ``work_dir``."""
    path = Path(work_dir) / RESULT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {work_dir} holds no finished labkit training run.")
    return TrainResult.from_json(json.loads(path.read_text(encoding="utf-8")))


def _write_json(path, data):
    from labkit import fileio
    fileio.write_json(path, data)
