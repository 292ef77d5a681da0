"""The self-checking exercises of notebooks 01 and 04, and the solved copies the main job runs.

Each exercise: a wrong answer is reported wrong, the reference solution passes, an unfilled
answer says "not done yet" without raising, and every check lands in the run's exercises.json.
The references are real: notebook 01's against the tiny model's own code, notebook 04's against
a real XTuner LoRA checkpoint converted by labkit.convert.
"""
from __future__ import annotations

import types

import nbformat
import pytest

from labkit.course import exercises as ex
from labkit.course.exercises import ____, nb01, nb04
from labkit.course.main import REPO_ROOT
from labkit.course.workspace import Workspace

NOTEBOOKS = REPO_ROOT / "notebooks"


def results(ws):
    """What the checks recorded in the run folder (labkit's own reader of exercises.json)."""
    return ex.read_results(ws.run_dir)


def passed(q, answer, ws):
    """Check an answer as a notebook cell does; return whether the recorded result passed."""
    assert q.check(answer) is None
    return results(ws)[q.id]["passed"]


def solved(exercise, **names):
    """Run an exercise's reference solution in a namespace like the notebook's; return it."""
    namespace = dict(names)
    exec(exercise.solution, namespace)  # noqa: S102 - labkit's own reference source
    return namespace


# --- notebook 01 -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    from labkit.checkpoints.folder import load_checkpoint
    from labkit.course.base_model import ensure_base

    model, _ = load_checkpoint(ensure_base(REPO_ROOT / ".cache" / "labkit-test"))
    return model


@pytest.fixture(scope="module")
def full():
    from labkit.course.architecture import full_size_model

    return full_size_model()


def nb01_answers(full):
    grid = nb01.demo_grid()
    return {
        "01.pixel_shuffle": ("shuffled", dict(grid=grid), grid.reshape(1, 2, 2, 8)),  # no permute: wrong blocks
        "01.image_tokens": ("n_image_tokens", {}, 8 * 256),  # the thumbnail forgotten
        "01.mlp1_parameters": ("n_mlp1", dict(full=full), 4096 * 2048 + 2048 * 2048),  # no biases, no LayerNorm
    }


def test_nb01_right_wrong_and_unfilled_answers(ws, tiny_model, full, capsys):
    bound = nb01.exercises(ws, tiny_model)
    assert [q.id for q in bound] == [e.id for e in nb01.EXERCISES]
    answers = nb01_answers(full)
    for q in bound:
        name, given, wrong_answer = answers[q.id]
        assert not passed(q, ____, ws)
        assert results(ws)[q.id]["status"] == "not done"
        assert "not done yet" in capsys.readouterr().out
        assert not passed(q, wrong_answer, ws)
        out = capsys.readouterr().out
        assert out.startswith("✗") and "提示 hint" in out
        assert results(ws)[q.id]["status"] == "wrong"
        assert passed(q, solved(q.exercise, **given)[name], ws)
        assert capsys.readouterr().out.startswith("✓")
        assert results(ws)[q.id]["passed"] is True and results(ws)[q.id]["status"] == "passed"


def test_nb01_pixel_shuffle_names_the_transposed_grid(ws, tiny_model, capsys):
    from labkit.course.architecture import folder_pixel_shuffle

    q1 = nb01.exercises(ws, tiny_model)[0]
    reference = folder_pixel_shuffle(tiny_model)(nb01.demo_grid())
    assert not passed(q1, reference.transpose(1, 2), ws)
    assert "转置" in capsys.readouterr().out


def test_a_check_never_raises_on_odd_answers(ws, tiny_model, capsys):
    q1, q2, q3 = nb01.exercises(ws, tiny_model)
    for q, answer in ((q1, "not a tensor"), (q1, nb01.demo_grid().reshape(2, 2, 2, 4)), (q2, 2304.5),
                      (q2, None), (q3, [1, 2]), (q3, True)):
        assert not passed(q, answer, ws)
    assert capsys.readouterr().out.count("✗") == 6
    assert not any(r["passed"] for r in results(ws).values())


def test_hint_and_solution_print(ws, tiny_model, capsys):
    q1 = nb01.exercises(ws, tiny_model)[0]
    q1.hint()
    q1.solution()
    out = capsys.readouterr().out
    assert "提示 hint" in out and "permute" in out and q1.exercise.solution in out


def test_the_latest_check_of_an_exercise_is_recorded(ws, tiny_model):
    q1, q2, _ = nb01.exercises(ws, tiny_model)
    q2.check(2304)
    q2.check(1)
    assert results(ws)["01.image_tokens"]["passed"] is False and "01.pixel_shuffle" not in results(ws)
    q1.check(____)
    assert set(results(ws)) == {"01.image_tokens", "01.pixel_shuffle"}


# --- notebook 04 -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A real XTuner LoRA checkpoint (r 8, alpha 16, weights moved) and its converted folder."""
    pytest.importorskip("xtuner.model", reason="XTuner builds the checkpoint")
    from xtuner_checkpoints import build_xtuner_model, lora_settings, move_weights, save_like_mmengine, write_config

    from labkit.checkpoints.folder import write_checkpoint
    from labkit.convert import convert

    work = tmp_path_factory.mktemp("nb04")
    base = write_checkpoint(work / "tiny-base")
    config = write_config(work / "tiny_lora.py", lora_settings(base))
    model = build_xtuner_model(config)
    move_weights(model)
    pth = save_like_mmengine(model, work / "iter_10.pth", config)
    out = convert(config, pth, work / "tuned-model", verify=False, quiet=True)
    return types.SimpleNamespace(trained={"config_path": str(config), "checkpoint": str(pth)}, out_dir=out,
                                 base=base)


@pytest.mark.slow  # converts a real XTuner checkpoint
def test_nb04_right_wrong_and_unfilled_answers(ws, converted, capsys):
    from labkit.convert.pipeline import read_train_setup
    from labkit.course import conversion

    q1, q2, q3 = nb04.exercises(ws, converted.trained, converted.out_dir)
    layer = conversion.lora_layer(converted.trained["config_path"], converted.trained["checkpoint"],
                                  nb04.EXERCISE_LAYER)
    setup = read_train_setup(converted.trained["config_path"])
    names = dict(layer=layer, setup=setup, base_config=conversion.folder_config(setup.model_path))
    cases = [
        (q1, "merged", layer.W + layer.B @ layer.A),  # the scale forgotten
        (q2, "scale", layer.r / layer.alpha),  # upside down
        (q3, "n_merged", 5 * conversion.folder_config(converted.base)["llm_config"]["num_hidden_layers"]),  # no head
    ]
    for q, name, wrong_answer in cases:
        assert not passed(q, ____, ws) and results(ws)[q.id]["status"] == "not done"
        assert not passed(q, wrong_answer, ws) and results(ws)[q.id]["status"] == "wrong"
        assert passed(q, solved(q.exercise, **names)[name], ws), capsys.readouterr().out
        assert results(ws)[q.id]["passed"] is True
    out = capsys.readouterr().out
    assert "alpha / r" in out and "输出头 output" in out


@pytest.mark.slow  # converts a real XTuner checkpoint
def test_the_hand_merge_equals_the_converted_weight(converted):
    from labkit.course import conversion

    layer = conversion.lora_layer(converted.trained["config_path"], converted.trained["checkpoint"])
    assert layer.scale == 2.0 and (layer.B @ layer.A).abs().max() > 0
    stored = conversion.folder_tensor(converted.out_dir, layer.weight_name)
    assert conversion.bf16_gap(layer.merged(), stored) <= 1.0
    assert conversion.bf16_gap(layer.W, stored) > 1.0  # the merge is visible above bf16 rounding
    modules = conversion.lora_modules(converted.trained["checkpoint"])
    assert layer.module in modules and nb04.EXERCISE_LAYER in modules


# --- solved copies and the main job --------------------------------------------------------------
@pytest.mark.parametrize("name", ["01_architecture.ipynb", "04_conversion.ipynb"])
def test_the_solved_copy_holds_every_reference_solution(name, tmp_path):
    committed = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [c for c in committed.cells if ex.EXERCISE_TAG in c.metadata.get("tags", [])]
    assert tagged and all("____" in c.source for c in tagged), "committed notebooks hold the student version"
    ids = ex.solve_notebook(NOTEBOOKS / name, tmp_path / name)
    assert ids == [e.id for e in ex.exercises_of(name)]
    solved_book = nbformat.read(tmp_path / name, as_version=4)
    sources = [c.source for c in solved_book.cells if ex.EXERCISE_TAG in c.metadata.get("tags", [])]
    assert sources == [e.solution for e in ex.exercises_of(name)]
    assert all("____" not in s for s in sources)


def test_solving_refuses_a_notebook_whose_exercises_do_not_line_up(tmp_path):
    book = nbformat.read(NOTEBOOKS / "01_architecture.ipynb", as_version=4)
    first = next(i for i, c in enumerate(book.cells) if ex.EXERCISE_TAG in c.metadata.get("tags", []))
    book.cells[first + 1].source = "q2.check(shuffled)"
    nbformat.write(book, tmp_path / "01_architecture.ipynb")
    with pytest.raises(ValueError, match=r"01_architecture.ipynb: the code cell after exercise cell 1 .* q1\.check"):
        ex.solve_notebook(tmp_path / "01_architecture.ipynb", tmp_path / "out.ipynb")
    del book.cells[first]
    nbformat.write(book, tmp_path / "01_architecture.ipynb")
    with pytest.raises(ValueError, match="has 2 cells tagged 'exercise' but .* defines 3"):
        ex.solve_notebook(tmp_path / "01_architecture.ipynb", tmp_path / "out.ipynb")


def test_a_notebook_without_an_exercise_module_has_no_exercises():
    assert ex.exercises_of("99_nothing.ipynb") == ()


def test_the_main_job_fails_naming_the_notebook_and_the_exercise(tmp_path, monkeypatch):
    """papermill stands in: it records what a solved notebook whose first check failed would."""
    import papermill

    from labkit.course import main

    ran = []

    def fake_execute(source, target, parameters, **kwargs):
        ran.append(nbformat.read(source, as_version=4))
        ws = Workspace(parameters["run_dir"], parameters["cache_dir"])
        ex.record(ws, "01.pixel_shuffle", False, "wrong", "形状不对")
        ex.record(ws, "01.image_tokens", True, "passed", "ok")

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    with pytest.raises(main.ExerciseCheckError) as caught:
        main.run_course(tmp_path / "run", tmp_path / "cache", notebooks=["01_architecture.ipynb"], progress=False)
    message = str(caught.value)
    assert "01_architecture.ipynb" in message and "01.pixel_shuffle" in message and "形状不对" in message
    assert "01.mlp1_parameters" in message and "never ran" in message and "01.image_tokens" not in message
    assert "____" not in "".join(c.source for c in ran[0].cells if ex.EXERCISE_TAG in c.metadata.get("tags", []))
    assert not list((tmp_path / "run" / "notebooks").glob("solved-*")), "the solved copy is cleaned up"
