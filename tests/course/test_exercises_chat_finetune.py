"""The self-checking exercises of notebooks 02 (chat) and 03 (fine-tune), without training.

For each exercise: the reference solution passes, typical wrong answers are reported wrong with
the reason, an unfilled answer says "not done yet", and nothing raises. The references are real:
notebook 02's the chat engine's own prompt on the committed tiny base model, notebook 03's the
planner on InternVL2-2B's config, and its LoRA count against a real XTuner LoRA model's tensors.
"""
from __future__ import annotations


import nbformat
import pytest

from labkit.course import exercises as ex
from labkit.course.exercises import ____, nb02, nb03
from labkit.course.main import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"


def results(ws):
    """What the checks recorded in the run folder (labkit's own reader of exercises.json)."""
    return ex.read_results(ws.run_dir)


def check(q, answer, ws, capsys):
    """Check an answer as a notebook cell does; return (passed, status, printed text)."""
    assert q.check(answer) is None
    result = results(ws)[q.id]
    return result["passed"], result["status"], capsys.readouterr().out


def solved(exercise, **names):
    namespace = dict(names)
    exec(exercise.solution, namespace)  # noqa: S102 - labkit's own reference source
    return namespace


# --- notebook 02 -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_dir():
    from labkit.course.base_model import ensure_base

    return ensure_base(REPO_ROOT / ".cache" / "labkit-test")


@pytest.fixture(scope="module")
def engine(base_dir):
    from labkit import chat

    return chat.make_engine(base_dir, backend="transformers", device="cpu")


@pytest.fixture
def nb02_run(ws, engine, base_dir):
    from labkit.checkpoints import remote_code

    question = "图中的菜是什么？"
    quiz = nb02.quiz_picture(ws)
    names = dict(engine=engine, quiz=quiz, quiz_size=nb02.picture_size(quiz), question=question,
                 model_dir=base_dir, remote_code=remote_code)
    return nb02.exercises(ws, engine, question, quiz), names


def test_nb02_reference_solutions_pass_and_match_the_engine(ws, engine, nb02_run, capsys):
    (q1, q2, q3), names = nb02_run
    names.update(solved(q1.exercise, **names))
    full = engine.prompt(names["question"], image=names["quiz"], full=True)
    assert names["n_image_tokens"] == full.count("<IMG_CONTEXT>") > 0
    assert check(q1, names["n_image_tokens"], ws, capsys)[:2] == (True, "passed")
    names.update(solved(q2.exercise, **names))
    assert names["my_prompt"] == full
    assert check(q2, names["my_prompt"], ws, capsys)[:2] == (True, "passed")
    dish_of = solved(q3.exercise)["dish_of"]
    passed, _, out = check(q3, dish_of, ws, capsys)
    assert passed and out.startswith("✓")


def test_nb02_unfilled_answers_are_not_done(nb02_run, ws, capsys):
    for q in nb02_run[0]:
        passed, status, out = check(q, ____, ws, capsys)
        assert (passed, status) == (False, "not done") and "not done yet" in out


def test_nb02_image_tokens_wrong_answers_say_why(nb02_run, ws, engine, capsys):
    (q1, _, _), names = nb02_run
    tiling = engine.tiling
    cols, rows = tiling.choose_grid(*names["quiz_size"])
    assert cols * rows > 1, "the quiz picture is cut into several tiles, so it has a thumbnail"
    per_tile = tiling.tokens_per_tile
    cases = [((cols * rows) * per_tile, "缩略图"), (cols * rows + 1, "图块数"),
             ((cols * rows + 1) * per_tile * 4, "像素重排"), (7, "不对"), ("many", "整数")]
    for answer, reason in cases:
        passed, status, out = check(q1, answer, ws, capsys)
        assert (passed, status) == (False, "wrong") and reason in out and "提示 hint" in out, out


def test_nb02_exact_prompt_wrong_answers_say_why(nb02_run, ws, engine, capsys):
    (_, q2, _), names = nb02_run
    full = engine.prompt(names["question"], image=names["quiz"], full=True)
    n = full.count("<IMG_CONTEXT>")
    with_marker = engine.prompt(names["question"])  # no picture: the plain conversation
    cases = [
        (full.replace("<IMG_CONTEXT>" * n, "<IMG_CONTEXT>" * (n - 1)), "个数不对"),
        (full.replace("<img>" + "<IMG_CONTEXT>" * n + "</img>", "<image>"), "<image>"),
        (full.replace("<|im_end|>", "<|im_end|>\n"), "换行"),
        (full.rstrip("\n"), "空白"),
        (with_marker, "第"),
        (42, "字符串"),
    ]
    for answer, reason in cases:
        passed, status, out = check(q2, answer, ws, capsys)
        assert (passed, status) == (False, "wrong") and reason in out, out


def test_nb02_dish_of_is_judged_on_the_runs_own_answers(nb02_run, ws, capsys):
    (_, _, q3), _ = nb02_run
    ws.save_json("baseline.json", {"answers": [{"answer": "图中的菜是糖葫芦。"}, {"answer": "不知道"}]})
    judged = nb02.judged_answers(ws.path("baseline.json"))
    assert "图中的菜是糖葫芦。" in judged and "不知道" not in judged
    only_fixed = {t: t.split("图中的菜是")[1][:-1] for t in nb02.FIXED_ANSWERS}
    cases = [
        (only_fixed.get, "应为"),  # right on the fixed answers, None on the run's own
        (lambda text: text.split("图中的菜是")[1], "句号"),
        (lambda text: text.rstrip("。"), "图中的菜是"),
        (lambda text: text[100], "IndexError"),
        ("肠粉", "函数"),
    ]
    for answer, reason in cases:
        passed, status, out = check(q3, answer, ws, capsys)
        assert (passed, status) == (False, "wrong") and reason in out, out
    assert check(q3, solved(q3.exercise)["dish_of"], ws, capsys)[0]


# --- notebook 03 -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stock():
    from labkit.train import settings as recipes

    return recipes.course_gpu().replace(lean_logits=False)


BUDGET = "A100 80GB x 30%"


@pytest.fixture
def nb03_run(ws, stock):
    from labkit.checkpoints.folder import INTERNVL2_2B_CONFIG
    from labkit.train import plan

    shape = plan.read_model_shape(INTERNVL2_2B_CONFIG)
    names = dict(plan=plan, INTERNVL2_2B_CONFIG=INTERNVL2_2B_CONFIG, stock=stock, gpu_budget=BUDGET,
                 linears=shape.llm_linear_shapes(), n_layers=shape.llm_layers)
    return nb03.exercises(ws, stock, BUDGET), names


def test_nb03_reference_solutions_pass(nb03_run, ws, capsys):
    (q1, q2, q3), names = nb03_run
    names.update(solved(q1.exercise, **names))
    assert not names["batch4_fits"], "the planner: XTuner's own model type at batch 4 overflows 24 GB"
    passed, _, out = check(q1, names["batch4_fits"], ws, capsys)
    assert passed and "放不下" in out
    assert check(q1, False, ws, capsys)[0], "a plain bool is judged too"
    names.update(solved(q2.exercise, **names))
    passed, _, out = check(q2, names["grows_most"], ws, capsys)
    assert passed and "lean_logits" in out
    assert check(q2, "logits", ws, capsys)[0] and check(q2, " d ", ws, capsys)[0]
    names.update(solved(q3.exercise, **names))
    assert names["n_lora"] == 125_829_120
    passed, _, out = check(q3, names["n_lora"], ws, capsys)
    assert passed and "plan.lora_parameters" in out


def test_nb03_batch2_fits_and_the_planner_says_logits_grow_most(stock):
    verdicts = nb03._verdicts({"stock": stock, "budget": BUDGET})
    assert verdicts[2].fits and not verdicts[4].fits
    growth = nb03._growth({"stock": stock})
    assert max(growth, key=growth.get) == "logits" and growth["weights"] == 0


def test_nb03_unfilled_answers_are_not_done(nb03_run, ws, capsys):
    for q in nb03_run[0]:
        passed, status, out = check(q, ____, ws, capsys)
        assert (passed, status) == (False, "not done") and "not done yet" in out


def test_nb03_wrong_answers_say_why(nb03_run, ws, capsys):
    (q1, q2, q3), names = nb03_run
    plan, config, stock = names["plan"], names["INTERNVL2_2B_CONFIG"], names["stock"]
    linears, layers, r = names["linears"], names["n_layers"], stock.lora_r
    per_layer = sum(r * (i + o) for i, o in linears.values())
    head = r * (2048 + 92553)
    cases = [
        (q1, True, "相反"),
        (q1, plan.fits(plan.estimate(config, stock, batch_size=2), BUDGET), "batch 2"),
        (q1, plan.fits(plan.estimate(config, stock.replace(lean_logits=True), batch_size=4), BUDGET), "stock"),
        (q1, plan.fits(plan.estimate(config, stock, batch_size=4), "80GB"), "预算"),
        (q1, "no", "True / False"),
        (q2, "A", "不随 batch"),
        (q2, "C", "不是最多"),
        (q2, "E", "不是选项"),
        (q2, 4, "字母"),
        (q3, per_layer, "一层"),
        (q3, layers * sum(i * o for i, o in linears.values()), "in × out"),
        (q3, layers * sum(r * i for i, _ in linears.values()), "A 或 B"),
        (q3, layers * per_layer + head, "输出头"),
        (q3, layers * per_layer // r * stock.lora_alpha, "lora_alpha"),
        (q3, 12345, "不对"),
        (q3, 1.5, "整数"),
    ]
    for q, answer, reason in cases:
        passed, status, out = check(q, answer, ws, capsys)
        assert (passed, status) == (False, "wrong") and reason in out, (answer, out)


def test_the_planners_lora_count_is_what_xtuner_trains(tmp_path):
    """nb03's count (the planner's formula + the output head) equals a real XTuner LoRA model's
    lora_A / lora_B tensors, saved as XTuner saves them."""
    pytest.importorskip("xtuner.model", reason="XTuner builds the model")
    from xtuner_checkpoints import build_xtuner_model, lora_settings, save_like_mmengine, write_config

    from labkit.checkpoints.folder import write_checkpoint

    base = write_checkpoint(tmp_path / "tiny-base")
    config = write_config(tmp_path / "tiny_lora.py", lora_settings(base))
    pth = save_like_mmengine(build_xtuner_model(config), tmp_path / "iter_1.pth", config)
    assert nb03.trained_lora_parameters(pth) == nb03.xtuner_lora_parameters(base, 8) > 0


# --- the committed notebooks and their solved copies ---------------------------------------------
@pytest.mark.parametrize("name", ["02_baseline_chat.ipynb", "03_finetune.ipynb"])
def test_the_solved_copy_holds_every_reference_solution(name, tmp_path):
    committed = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [c for c in committed.cells if ex.EXERCISE_TAG in c.metadata.get("tags", [])]
    assert len(tagged) == len(ex.exercises_of(name)) == 3
    assert all(c.source.split("#")[0].strip().endswith("= ____") for c in tagged), "student version committed"
    assert ex.solve_notebook(NOTEBOOKS / name, tmp_path / name) == [e.id for e in ex.exercises_of(name)]
    solved_book = nbformat.read(tmp_path / name, as_version=4)
    sources = [c.source for c in solved_book.cells if ex.EXERCISE_TAG in c.metadata.get("tags", [])]
    assert sources == [e.solution for e in ex.exercises_of(name)]


@pytest.mark.parametrize("name", ["02_baseline_chat.ipynb", "03_finetune.ipynb"])
def test_the_notebook_follows_the_course_arc_in_chinese(name):
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    headings = [line for c in book.cells if c.cell_type == "markdown"
                for line in c.source.splitlines() if line.startswith("## ")]
    for part in ("目标", "加载", "观察", "动手", "检查", "练习", "小结"):
        assert any(part in h for h in headings), f"{name}: no heading with {part}"
    assert "预计用时" in book.cells[0].source and "GPU" in book.cells[0].source
