"""Notebook 05's exercises: per-dish accuracy from the raw answers, the most confused pair, replay.

The references are what the evaluation really found: the tuned model's `Report` (its
``per_dish()`` and its answers, ``labkit.course.comparison.most_confused``), and the committed
replay benchmark (``labkit.course.comparison.replay_benchmark``).
"""
import math

from labkit.course.exercises import Exercise, bind, right, wrong


def exercises(workspace, base, tuned, bench):
    """Exercises 1-3 bound to this run: ``base`` and ``tuned`` are `labkit.eval.evaluate.Report`s of
    the test split, ``bench`` the replay benchmark. Returns ``q1, q2, q3``."""
    return bind(EXERCISES, workspace, base=base, tuned=tuned, bench=bench)


def _shares(report):
    return {name: right_ / total for name, (right_, total) in report.per_dish().items()}


def _same_shares(answer, reference):
    return set(answer) == set(reference) and all(
        isinstance(answer[k], (int, float)) and not isinstance(answer[k], bool)
        and math.isclose(answer[k], reference[k], abs_tol=1e-9) for k in reference)


# -- 1. per-dish accuracy from the raw answers -------------------------------------------------
def _judge_per_dish(answer, context):
    reference = _shares(context["tuned"])
    if not isinstance(answer, dict):
        return wrong(f"答案应是一个字典 dict（菜名 -> 准确率），得到的是 {type(answer).__name__}。")
    if _same_shares(answer, reference):
        return right(f"{len(reference)} 道菜的准确率都和 tuned.per_dish() 一致。")
    if _same_shares(answer, _shares(context["base"])):
        return wrong("这是基座模型 base 的准确率：练习要的是微调后 tuned 的答案。")
    missing = [k for k in reference if k not in answer]
    extra = [k for k in answer if k not in reference]
    if missing:
        return wrong(f"少了这些菜：{'、'.join(map(str, missing))}。测试集里每道菜都要有一项。")
    if extra:
        return wrong(f"多了测试集里没有的键 key：{'、'.join(map(str, extra))}。键是图里的菜 a.expected。")
    values = list(answer.values())
    if all(isinstance(v, tuple) and len(v) == 2 for v in values):
        return wrong("这是 (答对数, 总数) 的计数：要的是比例，答对数 / 总数。")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and all(
            math.isclose(answer[k], 100 * reference[k], abs_tol=1e-6) for k in reference):
        return wrong("这是百分数：要的是 0 到 1 之间的比例，不要乘 100。")
    for name in reference:
        value = answer[name]
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isclose(value, reference[name], abs_tol=1e-9)):
            return wrong(f"{name} 的准确率不对：你算的是 {value!r}。一道菜的准确率 = 图里是它且模型说对的答案数 "
                         "/ 图里是它的答案数。")
    return wrong("不对：每道菜的准确率 = 说对的答案数 / 这道菜的答案数。")


PER_DISH = Exercise(
    id="05.per_dish_accuracy",
    title="练习 1 · 从原始答案算每道菜的准确率",
    judge=_judge_per_dish,
    hint="遍历 tuned.answers：每个答案 a 有 a.expected（图里的菜）和 a.correct（说对没有）。"
         "按 a.expected 分组，数总数和答对数，再相除。",
    solution="""\
totals, rights = {}, {}
for a in tuned.answers:
    totals[a.expected] = totals.get(a.expected, 0) + 1
    rights[a.expected] = rights.get(a.expected, 0) + a.correct
accuracy = {dish: rights[dish] / totals[dish] for dish in totals}
""",
)


# -- 2. the most confused pair -----------------------------------------------------------------
def _judge_confused(answer, context):
    from labkit.course.comparison import mistakes, most_confused

    tuned = context["tuned"]
    top = most_confused(tuned)
    if not top:
        return wrong("微调后的模型没有把任何一道菜认成另一道菜：这一题没有答案（数据不寻常，检查一下运行）。")
    if not (isinstance(answer, (tuple, list)) and len(answer) == 2):
        return wrong(f"答案应是一对 (图里的菜, 模型说的菜)，比如 (\"饺子\", \"肠粉\")；得到的是 {answer!r}。")
    pair = tuple(answer)
    counts = mistakes(tuned)
    n = counts[top[0]]
    if pair in top:
        return right(f"图里是 {pair[0]}、模型说成 {pair[1]}，一共 {n} 次，是微调后最常见的混淆。")
    if pair[0] == pair[1]:
        return wrong("两道菜一样：混淆是把一道菜说成了另一道菜。")
    if pair[::-1] in top:
        return wrong("顺序反了：先写图里的菜（混淆矩阵的行 row），再写模型说的菜（列 column）。")
    if pair in counts:
        return wrong(f"这对确实混淆过，但只有 {counts[pair]} 次；最多的一对有 {n} 次。")
    if pair in mistakes(context["base"]):
        return wrong("这是基座模型的混淆：要看微调后的模型（右边那张混淆矩阵）。")
    return wrong("这一对没有混淆过：在右边的混淆矩阵里找对角线 diagonal 以外最大的数。")


MOST_CONFUSED = Exercise(
    id="05.most_confused_pair",
    title="练习 2 · 最常混淆的一对菜",
    judge=_judge_confused,
    hint="只看答错且说出了菜名的答案（not a.correct and a.named），数每个 (a.expected, a.named) 出现几次，"
         "取最多的那一对：用一个 dict 计数，max(counts, key=counts.get)。",
    solution="""\
counts = {}
for a in tuned.answers:
    if not a.correct and a.named:  # a wrong answer that named another dish
        counts[(a.expected, a.named)] = counts.get((a.expected, a.named), 0) + 1
confused_pair = max(counts, key=counts.get)  # (dish shown, dish said)
""",
)


# -- 3. what replay bought ---------------------------------------------------------------------
def _replay_gain(bench):
    means = {}
    for mode in ("off", "on"):
        values = [r["tuned"]["known"] for r in bench["runs"] if r["mode"] == mode]
        if not values:
            raise ValueError(f"the replay benchmark has no runs with replay {mode}")
        means[mode] = sum(values) / len(values)
    return 100 * (means["on"] - means["off"])


def _judge_replay(answer, context):
    gain = _replay_gain(context["bench"])
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return wrong(f"答案应是一个数 number（百分点 percentage points），得到的是 {answer!r}。")
    if math.isclose(value, gain, abs_tol=0.05):
        return right(f"回放让已知菜的平均准确率变化了 {gain:+.1f} 个百分点。")
    if math.isclose(value, gain / 100, abs_tol=0.0005):
        return wrong("这是比例之差：要的是百分点，乘以 100。")
    if math.isclose(value, -gain, abs_tol=0.05):
        return wrong("符号反了：是 回放开 on 的平均值减去 回放关 off 的平均值。")
    return wrong("不对：分别求 replay on 和 replay off 五个种子 seed 的已知菜准确率平均值，相减，再乘以 100。")


REPLAY_GAIN = Exercise(
    id="05.replay_gain",
    title="练习 3 · 回放换回了多少",
    judge=_judge_replay,
    hint="bench[\"runs\"] 的每一项有 r[\"mode\"]（\"off\" 或 \"on\"）和 r[\"tuned\"][\"known\"]（已知菜准确率，0 到 1）。",
    solution="""\
known = {"off": [], "on": []}
for r in bench["runs"]:
    known[r["mode"]].append(r["tuned"]["known"])
gain_points = 100 * (sum(known["on"]) / len(known["on"]) - sum(known["off"]) / len(known["off"]))
""",
)

EXERCISES = (PER_DISH, MOST_CONFUSED, REPLAY_GAIN)
