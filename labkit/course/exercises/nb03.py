"""Notebook 03's exercises: does batch 4 fit the GPU slice, which part grows, LoRA's parameters.

The references are the planner's (``labkit.train.plan``) for InternVL2-2B trained as the course
first did, with XTuner's own model type (``stock``: the course's GPU settings with full-vocabulary
logits): its verdict for batch 4 on the notebook's ``gpu_budget``, the part of the plan that grows
most from batch 2 to batch 4, and ``plan.lora_parameters`` for the LoRA adapters.
"""
from labkit.course.exercises import Exercise, bind, right, whole_number, wrong

#: Exercise 2's options: the parts of a plan (``Plan.rows()`` names) a student picks from.
PARTS = {"A": "weights", "B": "trainable + optimizer", "C": "activations", "D": "logits"}


def exercises(workspace, stock, budget):
    """Exercises 1-3 bound to this run: ``stock`` is the GPU ``Settings`` with XTuner's own model
    type (``lean_logits=False``), ``budget`` the GPU slice (``gpu_budget``). Returns ``q1, q2, q3``."""
    return bind(EXERCISES, workspace, stock=stock, budget=budget)


def _plans(context):
    from labkit.checkpoints.folder import INTERNVL2_2B_CONFIG
    from labkit.train import plan

    return {batch: plan.estimate(INTERNVL2_2B_CONFIG, context["stock"], batch_size=batch) for batch in (2, 4)}


def _verdicts(context):
    from labkit.train import plan

    return {batch: plan.fits(p, context["budget"]) for batch, p in _plans(context).items()}


# -- 1. does batch 4 fit? --------------------------------------------------------------------------
def _judge_batch4(answer, context):
    verdicts = _verdicts(context)
    four, two = verdicts[4], verdicts[2]
    if hasattr(answer, "need_gib") and hasattr(answer, "fits"):  # a plan.fits(...) verdict
        if abs(answer.need_gib - two.need_gib) < 0.01 and abs(answer.need_gib - four.need_gib) >= 0.01:
            return wrong("这是 batch 2 的结果：要问规划器的是 batch_size=4。")
        if abs(answer.need_gib - four.need_gib) >= 0.01:
            return wrong(f"这个计划需要 {answer.need_gib:.1f} GiB，不是 batch 4 的计划（用的是 stock 吗？"
                         "stock 是 XTuner 自己的模型类型，lean_logits=False）。")
        if abs(answer.budget.gib - four.budget.gib) > 1e-9:
            return wrong(f"预算 budget 不对：{answer.budget}，应为 gpu_budget = {four.budget}。")
        answer = answer.fits
    if not isinstance(answer, bool):
        return wrong(f"答案应是 True / False（或 plan.fits(...) 的结果），得到的是 {answer!r}。")
    if answer == four.fits:
        said = "放得下" if four.fits else "放不下"
        return right(f"batch 4 {said}：需要 {four.need_gib:.1f} GiB，{four.budget} 可用 {four.usable_gib:.1f} GiB"
                     f"（留 {four.margin:.0%} 余量）；batch 2 只要 {two.need_gib:.1f} GiB。")
    return wrong("规划器的结论相反：用 plan.fits(plan.estimate(INTERNVL2_2B_CONFIG, stock, batch_size=4), gpu_budget) "
                 "看看需要多少 GiB、可用多少 GiB。")


BATCH4_FITS = Exercise(
    id="03.batch4_fits",
    title="练习 1 · batch 4 放得下吗",
    judge=_judge_batch4,
    hint="上面 batch 2 的那一格改一个数：plan.estimate(INTERNVL2_2B_CONFIG, stock, batch_size=4)，再交给 "
         "plan.fits(..., gpu_budget)；结果可以直接当 True / False 用。",
    solution="""\
plan_4 = plan.estimate(INTERNVL2_2B_CONFIG, stock, batch_size=4)  # XTuner's own model type, 13 tiles
batch4_fits = plan.fits(plan_4, gpu_budget)  # a Verdict: bool(batch4_fits) is the answer
print(plan_4.table())
print(batch4_fits)
""",
)


# -- 2. what grows from batch 2 to batch 4 ------------------------------------------------------------
def _growth(context):
    """GiB each part of :data:`PARTS` adds from batch 2 to batch 4 (a part off the peak counts its size)."""
    plans = _plans(context)
    sizes = {}
    for batch, p in plans.items():
        sizes[batch] = {"weights": p.weights, "trainable + optimizer": p.optimizer,
                        "activations": p.activations, "logits": p.logits}
    return {name: sizes[4][name] - sizes[2][name] for name in PARTS.values()}


def _judge_growth(answer, context):
    if not isinstance(answer, str):
        return wrong(f"答案应是一个字母 letter（{'、'.join(PARTS)}）或部分的名字，得到的是 {answer!r}。")
    key = answer.strip()
    picked = PARTS.get(key.upper()) or next((v for v in PARTS.values() if v == key.lower()), None)
    if picked is None:
        return wrong(f"{answer!r} 不是选项之一：{', '.join(f'{k} {v}' for k, v in PARTS.items())}。")
    growth = _growth(context)
    most = max(growth, key=growth.get)
    table = "，".join(f"{name} +{gib:.2f}" for name, gib in growth.items())
    if picked == most:
        plans = _plans(context)
        tokens = plans[4].sequence_length
        return right(f"batch 2 → 4 各部分增加（GiB）：{table}。logits 是 batch × {tokens} 个位置 × 词表 vocabulary "
                     f"{plans[4].shape.vocab_size:,} 个数，随 batch 成倍增长；batch 2 时它还在预算内。"
                     "labkit 的 lean_logits 只在要算损失 loss 的位置算 logits，所以课程配置 batch 4 也放得下。")
    if growth[picked] < 0.01:
        return wrong(f"{picked} 不随 batch 变化（{table}）：它只和模型的大小有关。")
    return wrong(f"{picked} 确实变大了，但不是最多的：{table}。")


GROWTH = Exercise(
    id="03.what_grows",
    title="练习 2 · 为什么 batch 2 放得下",
    judge=_judge_growth,
    hint="对比 batch 2 和 batch 4 两张表（plan_4.table() 和上面 batch 2 的表），看哪一行涨得最多；"
         "权重 weights 和优化器 optimizer 只和模型有关，不随 batch 变。",
    solution="""\
plan_2 = plan.estimate(INTERNVL2_2B_CONFIG, stock, batch_size=2)
print(f"logits {plan_2.logits:.2f} -> {plan_4.logits:.2f} GiB, activations {plan_2.activations:.2f} -> {plan_4.activations:.2f} GiB")
grows_most = "D"  # logits: batch x tokens x a 92,553-word vocabulary, kept for the loss
""",
)


# -- 3. LoRA's trainable parameters ---------------------------------------------------------------
def _lora_facts(context):
    from labkit.checkpoints.folder import INTERNVL2_2B_CONFIG
    from labkit.train import plan

    shape = plan.read_model_shape(INTERNVL2_2B_CONFIG)
    rank = context["stock"].lora_r
    return shape, rank, plan.lora_parameters(shape, rank, plan.LLM_LINEARS)


def _judge_lora(answer, context):
    shape, rank, expected = _lora_facts(context)
    answer, refused = whole_number(answer)
    if refused:
        return refused
    linears = shape.llm_linear_shapes()
    layers = shape.llm_layers
    if answer == expected:
        llm = sum(i * o for i, o in linears.values()) * layers
        return right(f"{expected:,} 个参数 = {layers} 层 × Σ r·(in + out)，只有这些 Linear 自身参数 {llm:,} 的 "
                     f"{expected / llm:.1%}；规划器 planner 的 plan.lora_parameters 给出的也是 {expected:,}。"
                     f"（XTuner 还给输出头 output 套了一个：再加 r·({shape.llm_hidden} + {shape.vocab_size:,})。）")
    if answer == expected // layers:
        return wrong(f"这是一层的数：语言模型有 {layers} 个解码层 decoder layer，每层都有这 5 个 Linear。")
    if answer == sum(i * o for i, o in linears.values()) * layers:
        return wrong("这是 Linear 自身的参数量 in × out：LoRA 只加两个小矩阵 A (r × in) 和 B (out × r)。")
    if answer in (layers * sum(rank * i for i, _ in linears.values()), layers * sum(rank * o for _, o in linears.values())):
        return wrong("只算了 A 或 B 中的一个：每个 Linear 有 A (r × in) 和 B (out × r) 两个矩阵。")
    if answer == expected + rank * (shape.llm_hidden + shape.vocab_size):
        return wrong("加上了输出头 output：XTuner 确实也训练它，但这里只问解码层里的 Linear（规划器也这样数）。")
    alpha = context["stock"].lora_alpha
    if alpha != rank and answer == expected // rank * alpha:
        return wrong("r 用错了：秩 rank 是 lora_r，不是 lora_alpha（alpha 只决定缩放 alpha / r）。")
    return wrong("不对：每个 Linear(in, out) 的 LoRA 有 r × (in + out) 个参数，5 个 Linear 相加，再乘层数。")


LORA_PARAMETERS = Exercise(
    id="03.lora_parameters",
    title="练习 3 · LoRA 训练多少参数",
    judge=_judge_lora,
    hint="Linear(in, out) 的 LoRA 是 A: (r, in) 和 B: (out, r)，共 r × (in + out) 个参数；上面打印了每个 Linear 的 "
         "(in, out) 和层数。r = stock.lora_r。",
    solution="""\
rank = stock.lora_r  # 128
per_layer = sum(rank * (n_in + n_out) for n_in, n_out in linears.values())  # wqkv, wo, w1, w3, w2
n_lora = per_layer * n_layers  # 24 decoder layers
""",
)

EXERCISES = (BATCH4_FITS, GROWTH, LORA_PARAMETERS)


# -- what the notebook's check compares: the planner's LoRA count against the trained checkpoint ----
def trained_lora_parameters(checkpoint):
    """Elements of every ``lora_A`` / ``lora_B`` tensor in an XTuner ``.pth`` (what PEFT trained)."""
    from labkit.convert.trained import read_trained_weights

    return sum(t.numel() for name, t in read_trained_weights(checkpoint).items() if ".lora_" in name)


def xtuner_lora_parameters(config, rank):
    """LoRA parameters XTuner trains with ``target_modules=None``: the planner's count for the
    decoder layers' Linears, plus the adapter XTuner also puts on the output head."""
    from labkit.train import plan

    shape = plan.read_model_shape(config)
    return plan.lora_parameters(shape, rank, plan.LLM_LINEARS) + rank * (shape.llm_hidden + shape.vocab_size)
