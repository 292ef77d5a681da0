"""A run folder built from real pieces, cheaply: the files notebooks 01-05 write, without running them.

The JSON files have the keys the notebooks save (notebook 05's raw answers through the real
`labkit.eval.evaluate.Report.to_json`), the figures are small real PNGs drawn by matplotlib, the
XTuner config is rendered by labkit from the real preset, mmengine's scalars log has one record
per iteration, and the executed notebooks are real nbformat files with ``exercise`` and
``reflection`` cells.
"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402

from labkit.data.answers import answer_sentence  # noqa: E402
from labkit.data.dishes import DISHES  # noqa: E402
from labkit.eval.evaluate import Answer, Report  # noqa: E402

FIGURES = ("tiles.png", "data_flow.png", "loss.png", "accuracy.png", "confusion.png", "gallery.png")
ITERATIONS = 12
REFLECTION = "## 心得 reflection\n\n肠粉终于被认出来了：LoRA 只训练了很少的参数。"
ANSWERS = {  # what each exercise cell holds: the reference solutions, but a plain number for 01.image_tokens
    "01": ["shuffled = grid.reshape(1, 2, 2, 8)", "n_image_tokens = 9 * 256", "n_mlp1 = 12_595_200"],
    "04": ["merged = layer.W", "scale = 2.0", "n_merged = 5 * 2 + 1"],
}


def _figure(path, title):
    figure, axes = plt.subplots(figsize=(2, 1.5), dpi=50)
    axes.plot([0, 1, 2], [2, 1, 0.5])
    axes.set_title(title)
    figure.savefig(path, format="png")
    plt.close(figure)


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")


def _report(model_dir, tuned):
    """Two test pictures per dish; the base model calls every held-back dish 叉烧包."""
    report = Report(model_dir=model_dir, annotation="data/food/test.json", seconds=3.0)
    for dish in DISHES:
        for k in range(2):
            said = dish.name if tuned or not dish.held_back else "叉烧包"
            answer = answer_sentence(said)
            report.answers.append(Answer(f"food/test/{dish.key}-{k:04d}.jpg", "图中的菜是什么？", dish.name,
                                         answer, said))
    return report


def comparison(base, tuned):
    """comparison.json as notebook 05 saves it."""
    per_dish = []
    for name, (right, total) in base.per_dish().items():
        t_right, t_total = tuned.per_dish()[name]
        per_dish.append(dict(dish=name, held_back=name in {d.name for d in DISHES if d.held_back},
                             base=right / total, tuned=t_right / t_total))
    example_base, example_tuned = base.answers[0], tuned.answers[0]
    return {
        "held_back": {"base": base.accuracy("held_back"), "tuned": tuned.accuracy("held_back")},
        "known": {"base": base.accuracy("known"), "tuned": tuned.accuracy("known")},
        "sentence_rate": {"base": base.sentence_rate(), "tuned": tuned.sentence_rate()},
        "per_dish": per_dish,
        "example": {"image": example_base.image, "question": example_base.question,
                    "base": example_base.answer, "tuned": example_tuned.answer},
        "base_report": base.to_json(), "tuned_report": tuned.to_json(),
    }


def _notebook(path, prefix, reflection=None):
    from labkit.course import exercises

    cells = [nbformat.v4.new_markdown_cell(f"# {prefix}")]
    for k, source in enumerate(ANSWERS.get(prefix, [])):
        cells.append(nbformat.v4.new_code_cell(source, metadata={"tags": [exercises.EXERCISE_TAG]}))
        cells.append(nbformat.v4.new_code_cell(f"q{k + 1}.check({source.split(' = ')[0]})"))
    if reflection:
        cells.append(nbformat.v4.new_markdown_cell(reflection, metadata={"tags": ["reflection"]}))
    book = nbformat.v4.new_notebook(cells=cells)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(book, str(path))


def make_run(root, reflection=REFLECTION):
    """A complete run folder in ``root``; returns its path."""
    from labkit.course.exercises import exercises_of
    from labkit.course.main import NOTEBOOKS
    from labkit.train.settings import tiny_lora_cpu
    from labkit.train.xtuner_config import render_config

    run = Path(root)
    (run / "figures").mkdir(parents=True, exist_ok=True)
    for name in FIGURES:
        _figure(run / "figures" / name, name)
    stages = [dict(step="1. tiles (pixels)", shape=[4, 3, 64, 64], note="4 tiles of 64px"),
              dict(step="6. mlp1 projector", shape=[4, 16, 128], note="LayerNorm, Linear, GELU, Linear")]
    table = [["projector: mlp1", 49920, 0.07], ["total", 724672, 1.0]]
    _write(run / "architecture.json", {
        "model_dir": "base-tiny", "dish": "肠粉", "picture": [313, 100], "tiles": 4, "stages": stages,
        "tiny_total": 724672, "full_total": 2205754368, "tiny_table": table, "full_table": table,
        "tokens_by_max_tiles": [[12, [4, 3], 13, 3328]], "data_flow": {}})
    answers = [dict(dish=d.name, held_back=d.held_back, question="图中的菜是什么？",
                    answer=answer_sentence("叉烧包" if d.held_back else d.name),
                    named="叉烧包" if d.held_back else d.name, image=f"/data/images/food/test/{d.key}-0000.jpg")
               for d in DISHES]
    _write(run / "baseline.json", {
        "model_dir": "base-tiny", "engine": "transformers on cpu", "answers": answers,
        "cheung_fun": answers[0], "form_rate": 1.0,
        "prompt": "<|im_start|>system\nYou are an AI assistant.<|im_end|>\n<|im_start|>user\n<img>"
                  + "<IMG_CONTEXT>" * 64 + "</img>\n图中的菜是什么？<|im_end|>\n<|im_start|>assistant\n"})
    settings = tiny_lora_cpu().replace(model_path="/models/base-tiny", data_paths=("/data/food/train.json",),
                                       image_folder="/data/images")
    (run / "finetune").mkdir(exist_ok=True)
    (run / "finetune" / "config.py").write_text(render_config(settings, num_samples=16), encoding="utf-8")
    losses = [(i, round(1.0 / i, 4)) for i in range(1, ITERATIONS + 1)]
    scalars = run / "finetune" / "xtuner" / "20261201_120000" / "vis_data" / "scalars.json"
    scalars.parent.mkdir(parents=True)
    scalars.write_text("".join(json.dumps({"loss": loss, "step": i, "iter": i}) + "\n" for i, loss in losses))
    _write(run / "finetune.json", {
        "iterations": ITERATIONS, "planned": ITERATIONS, "wall_s": 42.5, "first_loss": losses[0][1],
        "final_loss": losses[-1][1], "checkpoint": str(run / "finetune" / "xtuner" / "iter_12.pth"),
        "config_path": str(run / "finetune" / "config.py"), "num_samples": 16, "settings": "tiny_lora_cpu",
        "overrides": {}, "system_prompt": "You are an AI assistant.",
        "memory_plan": [{"what": "XTuner's own model type, batch 4", "verdict": "does not fit"},
                        {"what": "the recipe itself (lean_logits=True), batch 4", "verdict": "fits"}]})
    tuned_dir = run / "tuned-model"
    tuned_dir.mkdir()
    (tuned_dir / "config.json").write_text("{}", encoding="utf-8")
    _write(run / "conversion.json", {
        "out_dir": str(tuned_dir), "kind": "lora", "shards": 1, "total_mb": 1.39, "max_abs_diff": 7.6e-6,
        "fresh_answer": "图中的菜是肠粉。", "files": {"config.json": 1984, "model.safetensors": 1455312},
        "hand_merge": {"layer": "language_model.model.layers.0.attention.wqkv.weight", "bf16_steps": 0.5}})
    _write(run / "comparison.json", comparison(_report("base-tiny", False), _report(str(tuned_dir), True)))
    results = {e.id: {"passed": True, "status": "passed", "message": "答对了 correct.", "checked": "2026-12-01T12:00:00"}
               for name in NOTEBOOKS for e in exercises_of(name)}
    results["04.merge_one_layer"] = {"passed": False, "status": "wrong", "message": "这只是原来的权重 W",
                                     "checked": "2026-12-01T12:00:00"}
    _write(run / "exercises.json", {"exercises": results})
    for name in NOTEBOOKS:
        prefix = name.split("_")[0]
        _notebook(run / "notebooks" / name, prefix, reflection if prefix == "05" else None)
    _write(run / "course.json", {"started": "2026-12-01T12:00:00", "parameters": {"run_dir": str(run)},
                                 "notebooks": [{"name": n, "seconds": 10.0} for n in NOTEBOOKS],
                                 "wall_s": 50.0, "base_model": "/models/base-tiny"})
    return run
