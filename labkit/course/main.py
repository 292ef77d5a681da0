"""The main job: run the whole course headless on the tiny default and write a report.

    labkit run [--run-dir runs/NAME] [--cache-dir .cache/labkit] [--data-dir data]

1. make sure the food data exist (built once into ``data/``; a folder holding anything else is
   refused before any notebook runs),
2. execute notebooks 01-05 in order with papermill, each with the run, cache and data folders
   among its parameters (a notebook gets only the parameters its ``parameters`` cell declares),
   with the exercises' reference solutions filled in (``labkit.course.exercises.solve_notebook``;
   ``--no-solutions`` runs the student copies as committed), and stop at the first notebook
   whose exercise checks did not all pass,
3. keep the executed copies under ``RUN/notebooks/`` and write the write-up (``RUN/writeup/``, ``RUN/writeup.zip``).
"""
import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from labkit.data.build import DATA_DIR as DEFAULT_DATA
from labkit.fileio import REPO_ROOT

NOTEBOOKS = [
    "01_architecture.ipynb",
    "02_baseline_chat.ipynb",
    "03_finetune.ipynb",
    "04_conversion.ipynb",
    "05_comparison.ipynb",
]
DEFAULT_CACHE = REPO_ROOT / ".cache" / "labkit"


def new_run_dir(root=REPO_ROOT / "runs"):
    return Path(root) / datetime.now().strftime("%Y%m%d-%H%M%S")


class ExerciseCheckError(RuntimeError):
    """A notebook run with the reference solutions had an exercise check that did not pass."""


def run_course(run_dir=None, cache_dir=DEFAULT_CACHE, notebooks=NOTEBOOKS, parameters=None, progress=True,
               data_dir=DEFAULT_DATA, solutions=True):
    """Execute the notebooks in order into ``run_dir``; return the report path.

    ``solutions``: run each notebook with its exercise cells replaced by the reference solutions
    and raise :class:`ExerciseCheckError` unless every check passed; False runs them as committed.
    """
    from labkit import fileio
    run_dir = fileio.check_folder_target(Path(run_dir or new_run_dir()), "run folder (--run-dir)")
    fileio.check_folder_target(Path(cache_dir), "cache folder (--cache-dir)")
    data_dir = fileio.check_folder_target(Path(data_dir), "data folder (--data-dir)")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir} already holds a run; choose a new --run-dir (nothing was changed).")
    import papermill

    from labkit.course import exercises
    from labkit.course.report import write_report
    from labkit.data.build import course_data

    declared = {name: papermill.inspect_notebook(str(REPO_ROOT / "notebooks" / name)) for name in notebooks}
    unknown = sorted(set(parameters or {}) - {key for keys in declared.values() for key in keys})
    if unknown:
        raise ValueError(f"parameters {', '.join(unknown)}: no notebook declares them in its parameters cell.")
    course_data(data_dir)  # built once; a stale or foreign folder is refused before any notebook runs
    (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    (run_dir / "figures").mkdir(exist_ok=True)
    params = {"run_dir": str(run_dir.resolve()), "cache_dir": str(Path(cache_dir).resolve()),
              "data_dir": str(data_dir.resolve()), "device": "cpu"}
    params.update(parameters or {})
    record = {"started": datetime.now().isoformat(timespec="seconds"), "notebooks": [], "parameters": params,
              "solutions": solutions}
    start = time.perf_counter()
    for name in notebooks:
        t0 = time.perf_counter()
        print(f"[labkit] running {name} ...", flush=True)
        source = REPO_ROOT / "notebooks" / name
        if solutions:
            source = run_dir / "notebooks" / f"solved-{name}"
            exercises.solve_notebook(REPO_ROOT / "notebooks" / name, source)
        try:
            papermill.execute_notebook(
                str(source),
                str(run_dir / "notebooks" / name),
                parameters={key: value for key, value in params.items() if key in declared[name]},
                cwd=str(REPO_ROOT / "notebooks"),
                progress_bar=progress,
                kernel_name="python3",
            )
        finally:
            if solutions:
                source.unlink(missing_ok=True)
        if solutions:
            failed = exercises.failed_checks(run_dir, name)
            if failed:
                raise ExerciseCheckError(f"{name}, run with the reference solutions: "
                                         + "; ".join(failed) + f" (see {run_dir / 'notebooks' / name}).")
        record["notebooks"].append({"name": name, "seconds": round(time.perf_counter() - t0, 1)})
        print(f"[labkit] {name} done in {record['notebooks'][-1]['seconds']:.0f} s", flush=True)
    record["wall_s"] = round(time.perf_counter() - start, 1)
    base = run_dir / "base_model.txt"
    record["base_model"] = base.read_text(encoding="utf-8").strip() if base.is_file() else "tiny base model"
    record["publish_check"] = _card_and_check(run_dir / "tuned-model", run_dir)
    fileio.write_json(run_dir / "course.json", record)
    report = write_report(run_dir)
    print(f"[labkit] report: {report}", flush=True)
    return report


def _card_and_check(tuned, run_dir):
    """The tuned folder's card again, now with notebook 05's evaluation, then the publish check."""
    if not tuned.is_dir():
        return None
    from labkit.convert import publish

    publish.write_card(tuned, run_dir=run_dir)
    check = publish.check_folder(tuned)
    print(f"[labkit] publish check: {check.summary().splitlines()[-1]}", flush=True)
    return {"ok": check.ok, "findings": [f"{f.level} {f.path}: {f.message}" for f in check.findings]}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="labkit run", description="Run the whole course headless.")
    parser.add_argument("--run-dir", type=Path, default=None, help="where to put this run (default runs/DATE-TIME)")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("LABKIT_CACHE", DEFAULT_CACHE)))
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                        help="the course's food set (default data/, built there once)")
    parser.add_argument("--no-solutions", dest="solutions", action="store_false",
                        help="run the notebooks as committed, exercises unfilled (default: reference solutions)")
    args = parser.parse_args(argv)
    try:
        run_course(args.run_dir, args.cache_dir, data_dir=args.data_dir, solutions=args.solutions)
    except ExerciseCheckError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (FileExistsError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
