"""The five course notebooks: committed clean, built the same way, and executed for real.

The slow test runs the main job (`labkit.course.main.run_course`: papermill over notebooks 01-05 in
order, on the tiny default) and checks what the notebooks produced - the files, the figures
and the numbers - not merely that no cell raised.
"""
import ast
import json
import os
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from labkit.course.main import NOTEBOOKS, REPO_ROOT, run_course

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def shared_cache() -> Path:
    return Path(os.environ.get("LABKIT_TEST_CACHE") or REPO_ROOT / ".cache" / "labkit-test").resolve()


def read(name):
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def code_cells(book):
    return [c for c in book.cells if c.cell_type == "code"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs(name):
    for cell in code_cells(read(name)):
        assert not cell.outputs and cell.execution_count is None, f"{name}: strip outputs before committing"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_opens_with_a_parameters_cell(name):
    first = code_cells(read(name))[0]
    assert "parameters" in first.metadata.get("tags", []), f"{name}: the first code cell must be tagged 'parameters'"
    names = {t.id for node in ast.parse(first.source).body if isinstance(node, ast.Assign) for t in node.targets}
    assert {"run_dir", "cache_dir", "device", "model_dir"} <= names


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_imports_only_labkit_and_defines_nothing(name):
    """Every function a notebook uses lives in labkit; a cell that grows a def belongs there."""
    for cell in code_cells(read(name)):
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            assert not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Lambda)), f"{name}: move it to labkit"
            if isinstance(node, ast.ImportFrom):
                assert node.module.split(".")[0] == "labkit", f"{name}: imports {node.module}"
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] == "labkit" for a in node.names), f"{name}: imports outside labkit"


@pytest.fixture(scope="module")
def course_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("course") / "run"
    report = run_course(run_dir, shared_cache(), progress=False)
    return run_dir, report


def load(run_dir, name):
    return json.loads((run_dir / name).read_text(encoding="utf-8"))


def assert_png(path):
    assert path.is_file(), f"{path} missing"
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 50


@pytest.mark.slow
def test_main_job_runs_every_notebook_in_order(course_run):
    run_dir, report = course_run
    course = load(run_dir, "course.json")
    assert [n["name"] for n in course["notebooks"]] == NOTEBOOKS
    for name in NOTEBOOKS:
        executed = nbformat.read(run_dir / "notebooks" / name, as_version=4)
        injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and str(run_dir.resolve()) in injected[0].source
        assert all(c.execution_count for c in code_cells(executed)), f"{name}: a cell did not run"


@pytest.mark.slow
def test_architecture_notebook_traces_real_shapes(course_run):
    run_dir, _ = course_run
    arch = load(run_dir, "architecture.json")
    assert arch["full_total"] == 2_205_754_368
    shapes = {s["step"].split(".")[0]: s["shape"] for s in arch["stages"]}
    tiles = arch["tiles"]
    assert shapes["1"][:2] == [tiles, 3] and shapes["6"][:2] == [tiles, 16]
    assert_png(run_dir / "figures" / "tiles.png")


@pytest.mark.slow
def test_baseline_misnames_cheung_fun(course_run):
    run_dir, _ = course_run
    base = load(run_dir, "baseline.json")
    assert base["cheung_fun"]["named"] != "肠粉"
    assert base["cheung_fun"]["answer"].startswith("图中的菜是")
    assert base["form_rate"] >= 0.9


@pytest.mark.slow
def test_finetune_ran_the_planned_iterations(course_run):
    run_dir, _ = course_run
    tune = load(run_dir, "finetune.json")
    assert tune["iterations"] == tune["planned"] > 0
    assert tune["final_loss"] < tune["first_loss"]
    assert Path(tune["checkpoint"]).is_file()
    assert_png(run_dir / "figures" / "loss.png")


@pytest.mark.slow
def test_conversion_wrote_a_loadable_folder(course_run):
    run_dir, _ = course_run
    conv = load(run_dir, "conversion.json")
    out = Path(conv["out_dir"])
    for name in ("config.json", "model.safetensors", "tokenizer.json", "modeling_internvl_chat.py"):
        assert (out / name).is_file(), name
    assert conv["max_abs_diff"] < 1e-3 and conv["fresh_answer"]


@pytest.mark.slow
def test_comparison_shows_the_fine_tune_teaching_cheung_fun(course_run):
    run_dir, report = course_run
    comp = load(run_dir, "comparison.json")
    assert comp["held_back"]["base"] <= 0.10
    # The course's target (benchmarks/finetune_cpu.py); fine-tunes on the food set with its
    # doubled held-back pictures measured 97-100 % (docs/finetune.md).
    assert comp["held_back"]["tuned"] >= 0.90
    cheung_fun = next(d for d in comp["per_dish"] if d["dish"] == "肠粉")
    assert cheung_fun["base"] == 0 and cheung_fun["tuned"] > 0
    assert "肠粉" in comp["example"]["tuned"] and "肠粉" not in comp["example"]["base"]
    for name in ("accuracy.png", "confusion.png", "gallery.png"):
        assert_png(run_dir / "figures" / name)
    text = (run_dir / "writeup" / "writeup.md").read_text(encoding="utf-8")
    assert "figures/confusion.png" in text and "肠粉" in text
    assert report.name == "writeup.html" and "<table>" in report.read_text(encoding="utf-8")


@pytest.mark.slow
def test_every_exercise_passes_with_the_reference_solutions(course_run):
    from labkit.course import exercises

    run_dir, _ = course_run
    recorded = exercises.read_results(run_dir)
    expected = [e.id for name in NOTEBOOKS for e in exercises.exercises_of(name)]
    assert expected and sorted(recorded) == sorted(expected)
    assert all(recorded[i]["passed"] for i in expected), recorded


@pytest.mark.slow
def test_the_tuned_model_is_ready_to_publish(course_run):
    """The main job's tuned folder carries a card with the evaluation and passes the publish check."""
    from labkit.convert import publish

    run_dir, _ = course_run
    tuned = run_dir / "tuned-model"
    assert load(run_dir, "course.json")["publish_check"]["ok"]
    check = publish.check_folder(tuned)
    assert check.ok, check.summary()
    card = (tuned / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\n") and "肠粉" in card  # the evaluation table, per dish
