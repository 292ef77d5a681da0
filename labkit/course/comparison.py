"""Notebook 05's helpers: what fine-tuning fixed and broke, what the run trained with, and replay.

The figures of the replay comparison are not re-trained in the notebook: they come from
``benchmarks/finetune_cpu.py --replay both`` (five seeds, replay off and on), whose output is
committed as ``benchmarks/results/finetune_cpu_replay.json``.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from labkit.fileio import REPO_ROOT

REPLAY_BENCHMARK = REPO_ROOT / "benchmarks" / "results" / "finetune_cpu_replay.json"
REPLAY_COMMAND = "python benchmarks/finetune_cpu.py --threads 1 --replay both --seeds 0 1 2 3 4"


def mistakes(report) -> Counter:
    """``{(dish shown, dish said): count}`` over the wrong answers that named a dish."""
    return Counter((a.expected, a.named) for a in report.answers if not a.correct and a.named is not None)


def most_confused(report) -> list:
    """The (shown, said) pairs the model mixed up most often (several when tied); [] when none."""
    counts = mistakes(report)
    if not counts:
        return []
    top = max(counts.values())
    return sorted(pair for pair, n in counts.items() if n == top)


def said_counts(report) -> Counter:
    """How often the model named each dish, over all pictures: over-prediction shows here."""
    return Counter(a.named for a in report.answers if a.named is not None)


def trained_with(config_path) -> dict:
    """What the run's rendered XTuner config trained with: replay, its source, epochs, seed."""
    from mmengine.config import Config

    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the run's XTuner config is missing; run notebook 03 first.")
    cfg = Config.fromfile(str(path))
    return {name: cfg.get(name) for name in ("replay", "replay_data", "max_epochs", "lr", "seed", "data_paths")}


def replay_benchmark(path=REPLAY_BENCHMARK) -> dict:
    """The committed replay benchmark (``--out`` of benchmarks/finetune_cpu.py)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no replay benchmark; produce it with `{REPLAY_COMMAND} --out {path}`.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); produce it again with `{REPLAY_COMMAND} --out {path}`.") from err


def replay_rows(bench) -> list:
    """One row per (replay off/on, seed): held-back and known-dish accuracy, and the known drop."""
    base_known = bench["base"]["known"]
    return [dict(mode=r["mode"], seed=r["seed"], replay=r["replay"], held_back=r["tuned"]["held_back"],
                 known=r["tuned"]["known"], known_drop=r["tuned"]["known"] - base_known)
            for r in bench["runs"]]


def format_replay_rows(bench) -> str:
    lines = [f"base model: held-back {bench['base']['held_back']:.0%}, known {bench['base']['known']:.0%}",
             f"{'replay':<6} {'seed':>4} {'samples':>7} {'held-back':>9} {'known':>6} {'vs base':>8}"]
    for row in replay_rows(bench):
        lines.append(f"{row['mode']:<6} {row['seed']:>4} {row['replay']:>7} {row['held_back']:>9.0%} "
                     f"{row['known']:>6.0%} {row['known_drop'] * 100:>+7.0f}p")
    for mode, s in bench["summary"].items():
        lines.append(f"{mode:<6} {'mean':>4} {'':>7} {s['held_back_mean']:>9.1%} {s['known_mean']:>6.1%} "
                     f"{(s['known_mean'] - bench['base']['known']) * 100:>+7.1f}p")
    return "\n".join(lines)


def replay_figure(bench, path):
    """Held-back and known-dish accuracy per seed, replay off and on, with the targets drawn."""
    from matplotlib.figure import Figure

    from labkit.eval.figures import _font_kwargs, save_and_show

    rows = replay_rows(bench)
    seeds = sorted({r["seed"] for r in rows})
    font = _font_kwargs()
    fig = Figure(figsize=(9, 3.4), dpi=100)
    for ax, key, title, target in zip(fig.subplots(1, 2), ("held_back", "known"),
                                      ("新菜 held-back dishes", "已知菜 known dishes"),
                                      (0.95, bench["base"]["known"] - 0.02)):
        for offset, mode in ((-0.2, "off"), (0.2, "on")):
            values = {r["seed"]: r[key] for r in rows if r["mode"] == mode}
            ax.bar([s + offset for s in seeds], [values.get(s, 0) for s in seeds], width=0.4,
                   label=f"回放 replay {mode}")
        ax.axhline(target, color="black", linestyle="--", linewidth=1)
        if key == "known":
            ax.axhline(bench["base"]["known"], color="grey", linewidth=1)
        ax.set_ylim(0.7, 1.01)
        ax.set_xticks(seeds, [f"seed {s}" for s in seeds])
        ax.set_title(title, **font)
        ax.legend(prop={"size": 8, **({"family": font["fontfamily"]} if font else {})}, loc="lower right")
    fig.tight_layout()
    return save_and_show(fig, path)
