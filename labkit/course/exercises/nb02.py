"""Notebook 02's exercises: a picture's ``<IMG_CONTEXT>`` count, the exact prompt, an answer's dish.

The references are what the chat engine really does: the count of ``<IMG_CONTEXT>`` in the
prompt the engine renders (``engine.prompt(..., full=True)``), that prompt itself, and
``labkit.data.answers.answer_dish`` on the base model's own answers in the run's
``baseline.json`` (plus a few fixed answers in the sentence form).
"""
from labkit.course.exercises import Exercise, bind, right, whole_number, wrong

#: The dish whose first test picture exercises 1 and 2 use (notebook 02 shows 肠粉's prompt).
QUIZ_DISH = "虾饺"

#: Answers in the sentence form that exercise 3 always judges, beside the run's own answers.
FIXED_ANSWERS = ("图中的菜是肠粉。", "图中的菜是叉烧包。", "B，图中的菜是虾饺。", "图中的菜是麻婆豆腐。")

IMG_CONTEXT = "<IMG_CONTEXT>"


def quiz_picture(workspace):
    """The picture of exercises 1 and 2: the first test picture of :data:`QUIZ_DISH`."""
    return workspace.first_picture_of(QUIZ_DISH)


def picture_size(path):
    """``(width, height)`` of a picture file."""
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def exercises(workspace, engine, question, picture):
    """Exercises 1-3 bound to this run: the chat ``engine``, the ``question`` and the quiz
    ``picture`` (:func:`quiz_picture`). Returns ``q1, q2, q3``."""
    return bind(EXERCISES, workspace, engine=engine, question=question, picture=picture,
                baseline=workspace.path("baseline.json"))


def _engine_prompt(context):
    return context["engine"].prompt(context["question"], image=context["picture"], full=True)


def _tiling_facts(context):
    tiling = context["engine"].tiling
    width, height = picture_size(context["picture"])
    cols, rows = tiling.choose_grid(width, height)
    return tiling, (width, height), (cols, rows)


# -- 1. how many <IMG_CONTEXT> ------------------------------------------------------------------
def _judge_image_tokens(answer, context):
    expected = _engine_prompt(context).count(IMG_CONTEXT)
    answer, refused = whole_number(answer)
    if refused:
        return refused
    tiling, (width, height), (cols, rows) = _tiling_facts(context)
    per_tile = tiling.tokens_per_tile
    tiles = expected // per_tile
    if answer == expected:
        thumb = " + 1 张缩略图 thumbnail" if tiles > cols * rows else ""
        return right(f"{width}×{height} 的图 → {cols}×{rows} 网格{thumb} = {tiles} 个图块，每块 {per_tile} 个 token，"
                     f"和引擎 engine 渲染的提示词里 {expected} 个 {IMG_CONTEXT} 一致。")
    if answer == cols * rows * per_tile and tiles > cols * rows:
        return wrong("少了缩略图 thumbnail：图块多于一块时，还会再加一张整图缩小后的图块。")
    if answer in (tiles, cols * rows):
        return wrong("这是图块数，不是 token 数：每个图块占多少个 <IMG_CONTEXT>？")
    if answer == tiles * per_tile * 4:
        return wrong("忘了像素重排 pixel shuffle：它把每个图块的 patch 数变成 1/4。")
    return wrong(f"不对：先按宽高比 aspect ratio {width}/{height} 选网格（最多 {tiling.max_num} 块），"
                 "再加缩略图，最后乘每块的 token 数。")


IMAGE_TOKENS = Exercise(
    id="02.image_tokens",
    title="练习 1 · 这张图占几个 <IMG_CONTEXT>",
    judge=_judge_image_tokens,
    hint="每块的 token 数 = (tile_size / patch_size)² × downsample_ratio²；图块数 = cols × rows，多于一块时 + 1 "
         "张缩略图。网格可以用 engine.tiling.choose_grid(width, height) 选（规则在第 01 节）。",
    solution="""\
tiling = engine.tiling
width, height = quiz_size  # nb02.picture_size(quiz)
cols, rows = tiling.choose_grid(width, height)  # the grid nearest the picture's aspect ratio
tiles = cols * rows + (1 if tiling.use_thumbnail and cols * rows > 1 else 0)  # + the thumbnail
per_tile = (tiling.tile_size // tiling.patch_size) ** 2 * tiling.downsample_ratio ** 2  # pixel shuffle: 1/4
n_image_tokens = int(tiles * per_tile)
""",
)


# -- 2. the exact prompt by hand ------------------------------------------------------------------
def _first_difference(a, b):
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return at, a[max(0, at - 20):at + 20], b[max(0, at - 20):at + 20]


def _without_count(text):
    """The prompt with each run of ``<IMG_CONTEXT>`` shortened to one, whatever its length."""
    import re

    return re.sub(f"(?:{re.escape(IMG_CONTEXT)})+", IMG_CONTEXT, text)


def _judge_prompt(answer, context):
    from labkit.chat.prompt import abbreviate

    expected = _engine_prompt(context)
    if not isinstance(answer, str):
        return wrong(f"答案应是一个字符串 str，得到的是 {type(answer).__name__}。")
    if answer == expected:
        return right(f"逐字相同：{len(expected)} 个字符，其中 {expected.count(IMG_CONTEXT)} 个 {IMG_CONTEXT}。")
    if _without_count(answer) == _without_count(expected):
        return wrong(f"结构对了，{IMG_CONTEXT} 的个数不对：你写了 {answer.count(IMG_CONTEXT)} 个，"
                     f"引擎写了 {expected.count(IMG_CONTEXT)} 个（练习 1 的答案）。")
    if "<image>" in answer:
        return wrong("<image> 只是占位标记 marker：模型读到的是 <img> + <IMG_CONTEXT> × N + </img>。")
    if answer.strip() == expected.strip():
        return wrong("只差开头或结尾的空白 whitespace：提示词以 '<|im_start|>assistant\\n' 结束，换行也算。")
    if answer.replace("\n", "") == expected.replace("\n", ""):
        return wrong("换行 newline 不对：InternLM2 的模板在 <|im_end|> 后面不换行，角色名 role 后面换行。")
    at, mine, theirs = _first_difference(abbreviate(answer), abbreviate(expected))
    return wrong(f"从第 {at} 个字符起不同（{IMG_CONTEXT} 已缩写）：你的 …{mine!r}…，引擎的 …{theirs!r}…")


EXACT_PROMPT = Exercise(
    id="02.exact_prompt",
    title="练习 2 · 手写模型读到的提示词",
    judge=_judge_prompt,
    hint="照着上面打印的提示词写：系统提示词 system prompt 用 folder_template 读出来的那句；问题前面是 "
         "'<img>' + '<IMG_CONTEXT>' * n_image_tokens + '</img>\\n'；<|im_end|> 后面不换行；最后停在 "
         "'<|im_start|>assistant\\n'。",
    solution="""\
template, system_prompt = remote_code.folder_template(model_dir)  # internlm2-chat-xtuner and its system prompt
image_tokens = "<img>" + "<IMG_CONTEXT>" * n_image_tokens + "</img>"
my_prompt = (f"<|im_start|>system\\n{system_prompt}<|im_end|>"
             f"<|im_start|>user\\n{image_tokens}\\n{question}<|im_end|>"
             "<|im_start|>assistant\\n")
""",
)


# -- 3. an answer's dish ---------------------------------------------------------------------------
def judged_answers(baseline):
    """The answers exercise 3 judges: the fixed ones, and those in the sentence form among the
    base model's answers in ``baseline`` (the run's baseline.json, once notebook 02 wrote it)."""
    import json
    from pathlib import Path

    from labkit.data.answers import expected_form

    texts = list(FIXED_ANSWERS)
    if Path(baseline).is_file():
        texts += [a["answer"] for a in json.loads(Path(baseline).read_text(encoding="utf-8")).get("answers", [])]
    return list(dict.fromkeys(t for t in texts if expected_form(t)))


def _judge_dish_of(answer, context):
    from labkit.data.answers import answer_dish

    if not callable(answer):
        return wrong(f"答案应是一个函数 function（def dish_of(text): ...），得到的是 {type(answer).__name__}。")
    texts = judged_answers(context["baseline"])
    for text in texts:
        expected = answer_dish(text)
        try:
            got = answer(text)
        except Exception as err:  # the student's function, on one answer
            return wrong(f"dish_of({text!r}) 出错 raised {type(err).__name__}: {err}")
        if got != expected:
            if isinstance(got, str) and got.rstrip("。") == expected:
                return wrong(f"dish_of({text!r}) 给出 {got!r}：句号 。 不是菜名的一部分。")
            if isinstance(got, str) and expected and got.endswith(expected):
                return wrong(f"dish_of({text!r}) 给出 {got!r}：菜名前面的 '图中的菜是' 或选项字母也要去掉。")
            return wrong(f"dish_of({text!r}) 给出 {got!r}，应为 {expected!r}。")
    return right(f"{len(texts)} 个回答的菜名都和 labkit.data.answers.answer_dish 一致。")


DISH_OF = Exercise(
    id="02.dish_of",
    title="练习 3 · 从回答里取出菜名",
    judge=_judge_dish_of,
    hint="回答的句式是 '图中的菜是X。'（有时前面有选项 'B，'）：找到 '图中的菜是' 之后、'。' 之前的那段文字。"
         "str.split 或 str.find 都可以。",
    solution="""\
def dish_of(text):
    after = text.split("图中的菜是", 1)[1]  # what follows the sentence's fixed start
    return after.split("。", 1)[0]  # up to the full stop
""",
)

EXERCISES = (IMAGE_TOKENS, EXACT_PROMPT, DISH_OF)
