"""Notebook 04's exercises: merge one LoRA layer by hand, the LoRA scale, the merged layers.

The references are what conversion really did: the converted folder's tensor, the training
config's ``r`` and ``lora_alpha`` (``labkit.convert.pipeline.read_train_setup``) and the count
of merged layers in the folder's ``conversion.json``.
"""
from labkit.course.exercises import Exercise, bind, right, wrong

#: The Linear of exercise 1: InternLM2's output head, which XTuner wraps with LoRA too.
EXERCISE_LAYER = "language_model.output"


def exercises(workspace, trained, out_dir):
    """Exercises 1-3 bound to this run: ``trained`` is notebook 03's finetune.json, ``out_dir`` the
    converted folder. Returns ``q1, q2, q3``."""
    return bind(EXERCISES, workspace, trained=trained, out_dir=out_dir)


def _layer(context):
    from labkit.course.conversion import lora_layer

    return lora_layer(context["trained"]["config_path"], context["trained"]["checkpoint"], EXERCISE_LAYER)


def _close(a, b):
    return tuple(a.shape) == tuple(b.shape) and bool((a - b).abs().max() <= 1e-5 * (1 + b.abs().max()))


# -- 1. merge one layer by hand ---------------------------------------------------------------
def _judge_merge(answer, context):
    from labkit.course.conversion import bf16_gap, folder_tensor

    layer = _layer(context)
    reference = layer.merged()
    if not hasattr(answer, "shape"):
        return wrong(f"答案应是一个张量 tensor，得到的是 {type(answer).__name__}。")
    if tuple(answer.shape) != tuple(reference.shape):
        return wrong(f"形状 shape 是 {tuple(answer.shape)}，应与 W 相同：{tuple(reference.shape)}。"
                     "B 是 (out, r)，A 是 (r, in)，所以是 B @ A，不是 A @ B。")
    answer = answer.float()
    if _close(answer, reference):
        stored = folder_tensor(context["out_dir"], layer.weight_name)
        gap = bf16_gap(answer, stored)
        if gap > 1.0:
            return wrong(f"和公式一致，但和转换后文件夹里的 {layer.weight_name} 差了 {gap:.1f} 个 bf16 舍入步长："
                         "文件夹是不是别的训练结果？")
        return right(f"和转换后文件夹里的 {layer.weight_name} 一致（只差 bf16 舍入，最多 {gap:.2f} 个步长）。")
    delta = layer.B @ layer.A
    if _close(answer, layer.W):
        return wrong("这只是原来的权重 W：还要加上 LoRA 的增量 B @ A × 缩放。")
    if _close(answer, layer.W + delta):
        return wrong("少了缩放 scale：增量要乘以 alpha / r。")
    if _close(answer, layer.W + delta * layer.r / layer.alpha):
        return wrong("缩放倒过来了：是 alpha / r，不是 r / alpha。")
    if _close(answer, delta * layer.scale):
        return wrong("这只是增量 delta：合并后的权重是 W 加上它。")
    return wrong("不对：合并后的权重 = W + B @ A × alpha / r。")


MERGE_ONE_LAYER = Exercise(
    id="04.merge_one_layer",
    title="练习 1 · 手动合并一层 LoRA",
    judge=_judge_merge,
    hint="照着上面演示的那一层做：W + B @ A * (alpha / r)。layer.W、layer.A、layer.B、layer.r、layer.alpha 都在 layer 里。",
    solution="""\
merged = layer.W + layer.B @ layer.A * (layer.alpha / layer.r)  # (out, in) + (out, r) @ (r, in)
""",
)


# -- 2. the LoRA scale ------------------------------------------------------------------------
def _judge_scale(answer, context):
    layer = _layer(context)
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return wrong(f"答案应是一个数 number，得到的是 {answer!r}。")
    if abs(value - layer.scale) <= 1e-9 * max(1.0, abs(layer.scale)):
        return right(f"alpha / r = {layer.alpha:g} / {layer.r} = {layer.scale:g}。")
    if layer.alpha and abs(value - layer.r / layer.alpha) <= 1e-9:
        return wrong("倒过来了：缩放是 alpha / r。")
    if value in (layer.r, layer.alpha):
        return wrong("这是配置里的一个数，缩放要用两个数：lora_alpha 和 lora_r。")
    return wrong("不对：缩放 scale = lora_alpha / lora_r，两个数都在训练配置的 PART 1 里。")


LORA_SCALE = Exercise(
    id="04.lora_scale",
    title="练习 2 · LoRA 的缩放 scale",
    judge=_judge_scale,
    hint="看上面打印的训练配置 config：lora_r 是秩 rank，lora_alpha 是缩放的分子。",
    solution="""\
scale = setup.llm_lora["lora_alpha"] / setup.llm_lora["r"]  # 256 / 128 = 2.0
""",
)


# -- 3. how many layers were merged -----------------------------------------------------------
def _judge_merged_layers(answer, context):
    from labkit.convert import read_report

    expected = read_report(context["out_dir"])["lora_layers_merged"]
    try:
        value = int(answer)
        if value != answer:
            raise ValueError
    except (TypeError, ValueError):
        return wrong(f"答案应是一个整数 integer，得到的是 {answer!r}。")
    if value == expected:
        return right(f"{expected} 个 Linear 层被合并，和 conversion.json 里的 lora_layers_merged 一致。")
    if value == expected - 1:
        return wrong("差一个：XTuner 把语言模型的输出头 output 也包上了 LoRA。")
    return wrong(f"不对：语言模型每层有 5 个 Linear（wqkv、wo、w1、w2、w3），再加上输出头 output。")


MERGED_LAYERS = Exercise(
    id="04.merged_layers",
    title="练习 3 · 一共合并了多少层",
    judge=_judge_merged_layers,
    hint="XTuner 的 target_modules=None 表示语言模型里所有的 Linear：每个解码层 decoder layer 有 "
         "wqkv、wo、w1、w2、w3 五个，外加输出头 output。层数在 config.llm_config.num_hidden_layers。",
    solution="""\
n_layers = base_config["llm_config"]["num_hidden_layers"]
n_merged = 5 * n_layers + 1  # wqkv, wo, w1, w2, w3 per decoder layer, plus the output head
""",
)

EXERCISES = (MERGE_ONE_LAYER, LORA_SCALE, MERGED_LAYERS)
