"""Wall time of the main job (`./lab run`): the five notebooks, headless, on the tiny model.

Runs `labkit.course.main.run_course` into a fresh run folder and prints the seconds per notebook,
the total, and the figures the run produced. The one-time install is not counted; the food
data (data/) and the base model (the cache) are reused when present (pass --cold to build them too).

    python benchmarks/course_time.py [--cold] [--out course_time.json]
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from labkit.course.main import DEFAULT_CACHE, DEFAULT_DATA, run_course  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", action="store_true", help="start from an empty cache and data folder (data rebuilt)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="labkit-course-"))
    cache = scratch / "cache" if args.cold else DEFAULT_CACHE
    data = scratch / "data" if args.cold else DEFAULT_DATA
    start = time.perf_counter()
    report = run_course(scratch / "run", cache, progress=False, data_dir=data)
    wall = time.perf_counter() - start
    run = report.parent
    course = json.loads((run / "course.json").read_text(encoding="utf-8"))
    comparison = json.loads((run / "comparison.json").read_text(encoding="utf-8"))
    finetune = json.loads((run / "finetune.json").read_text(encoding="utf-8"))
    print(f"{'notebook':<26} {'seconds':>8}")
    for item in course["notebooks"]:
        print(f"{item['name']:<26} {item['seconds']:>8.1f}")
    print(f"{'total (main job)':<26} {wall:>8.1f}   target <= 600 s on 2 cores ({'met' if wall <= 600 else 'MISSED'})")
    print(f"fine-tune: {finetune['iterations']} iterations in {finetune['wall_s']:.0f} s")
    print(f"held-back dishes: base {comparison['held_back']['base']:.0%} -> tuned {comparison['held_back']['tuned']:.0%}; "
          f"known: base {comparison['known']['base']:.0%} -> tuned {comparison['known']['tuned']:.0%}")
    print(f"report: {report}")
    if args.out:
        args.out.write_text(json.dumps({"wall_s": round(wall, 1), "cold": args.cold, **course,
                                        "comparison": {k: comparison[k] for k in ("held_back", "known")}},
                                       indent=2, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
