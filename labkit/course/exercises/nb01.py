"""Notebook 01's exercises: pixel shuffle by hand, image tokens of a photo, mlp1's parameters.

Each reference comes from the model's own code or labkit's tiling, never from a copy of the
answer: pixel shuffle from the loaded model's ``pixel_shuffle``, the token count from
``labkit.tiling``, the parameter count from InternVL2-2B's ``mlp1`` built on the meta device.
"""
import functools

from labkit.course.exercises import Exercise, bind, right, whole_number, wrong

#: The photo of exercise 2: a 1080p phone screenshot.
QUIZ_PHOTO = (1920, 1080)


def demo_grid():
    """One tile's 4x4 grid of 2-channel tokens, numbered 0..31: (tiles, H, W, C) = (1, 4, 4, 2)."""
    import torch

    return torch.arange(32, dtype=torch.float32).reshape(1, 4, 4, 2)


def exercises(workspace, model):
    """Exercises 1-3 bound to this run's workspace and the loaded model: ``q1, q2, q3``."""
    return bind(EXERCISES, workspace, model=model)


# -- 1. pixel shuffle -----------------------------------------------------------------------
def _judge_pixel_shuffle(answer, context):
    from labkit.course.architecture import folder_pixel_shuffle

    grid = demo_grid()
    reference = folder_pixel_shuffle(context["model"])(grid)
    if not hasattr(answer, "shape"):
        return wrong(f"答案应是一个张量 tensor，得到的是 {type(answer).__name__}。")
    if tuple(answer.shape) != tuple(reference.shape):
        return wrong(f"形状 shape 是 {tuple(answer.shape)}，应为 {tuple(reference.shape)}："
                     "网格的高和宽各减半，通道数 ×4。")
    answer = answer.float()
    if bool((answer == reference).all()):
        return right("和模型自己的 pixel_shuffle 逐个数值相同。")
    if bool((answer == reference.transpose(1, 2)).all()):
        return wrong("网格被转置了 transposed（这是旧的 ps_version v1 的结果）：行和列的位置对调了。")
    if bool((answer == grid.reshape(reference.shape)).all()):
        return wrong("只 reshape 不够：那样折叠的是同一行里相邻的 4 个 token，而不是 2×2 的方块 block。")
    mismatch = (answer != reference).nonzero()[0].tolist()
    return wrong(f"形状对了，数值不对：位置 {tuple(mismatch)} 是 {answer[tuple(mismatch)].item():g}，"
                 f"模型给出 {reference[tuple(mismatch)].item():g}。")


PIXEL_SHUFFLE = Exercise(
    id="01.pixel_shuffle",
    title="练习 1 · 像素重排 pixel shuffle",
    judge=_judge_pixel_shuffle,
    hint="把高 H 拆成 (H/2, 2)、宽 W 拆成 (W/2, 2)：grid.reshape(1, 2, 2, 2, 2, C)；再用 permute 把两个"
         "「块内偏移」(行偏移, 列偏移) 挪到通道 C 旁边，最后 reshape 成 (1, 2, 2, 4*C)。",
    solution="""\
tiles, height, width, channels = grid.shape
blocks = grid.reshape(tiles, height // 2, 2, width // 2, 2, channels)  # split rows and columns into (block, offset)
blocks = blocks.permute(0, 1, 3, 2, 4, 5)  # (tiles, H/2, W/2, row offset, column offset, C)
shuffled = blocks.reshape(tiles, height // 2, width // 2, 4 * channels)
""",
)


# -- 2. image tokens of a photo -------------------------------------------------------------
def _internvl2_2b_tiling():
    from labkit.checkpoints.folder import INTERNVL2_2B_CONFIG
    from labkit.tiling import tiling_from_config

    return tiling_from_config(INTERNVL2_2B_CONFIG)


def _judge_image_tokens(answer, context):
    tiling = _internvl2_2b_tiling()
    cols, rows = tiling.choose_grid(*QUIZ_PHOTO)
    tiles = tiling.count_tiles(*QUIZ_PHOTO)
    per_tile = tiling.tokens_per_tile
    expected = tiles * per_tile
    answer, refused = whole_number(answer)
    if refused:
        return refused
    if answer == expected:
        return right(f"{cols}×{rows} 个图块 tile + 1 张缩略图 thumbnail = {tiles} 块，每块 {per_tile} 个 token。")
    if answer == cols * rows * per_tile:
        return wrong("少了缩略图 thumbnail：图块多于一块时，还会再加一张整图缩小后的图块。")
    if answer in (tiles, cols * rows):
        return wrong("这是图块数，不是 token 数：每个图块占多少个 <IMG_CONTEXT> 位置？")
    if answer == tiles * per_tile * 4:
        return wrong("忘了像素重排 pixel shuffle：它把每个图块的 1024 个 patch 折叠成 256 个 token。")
    return wrong(f"不对：先按宽高比 aspect ratio {QUIZ_PHOTO[0]}/{QUIZ_PHOTO[1]} 选网格，再数图块和 token。")


IMAGE_TOKENS = Exercise(
    id="01.image_tokens",
    title="练习 2 · 一张照片的图像 token 数",
    judge=_judge_image_tokens,
    hint="InternVL2-2B：图块 448 px，最多 12 块，每块 256 个 token。在 cols×rows ≤ 12 的网格里找 cols/rows 最接近"
         " 1920/1080 ≈ 1.78 的；2:1 和 4:2 一样接近时，照片像素多于网格面积的一半就选大的。多于一块时再加一张缩略图。",
    solution="""\
# 1920 / 1080 = 1.78: the nearest grid shapes are 2:1 (2x1 and 4x2, equally near); 4x2 wins because
# the photo has more than half of 4 * 2 * 448 * 448 pixels (labkit/tiling.py, choose_grid).
cols, rows = 4, 2
tiles = cols * rows + 1  # plus the thumbnail, since there is more than one tile
n_image_tokens = tiles * (448 // 14) ** 2 // 4  # 256 per tile after pixel shuffle
""",
)


# -- 3. mlp1's parameters -------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _mlp1_of_internvl2_2b():
    from labkit.course.architecture import full_size_model

    mlp1 = full_size_model().mlp1
    return [(type(layer).__name__, {n: p.numel() for n, p in layer.named_parameters()}) for layer in mlp1]


def _judge_mlp1_parameters(answer, context):
    layers = _mlp1_of_internvl2_2b()
    expected = sum(sum(p.values()) for _, p in layers)
    answer, refused = whole_number(answer)
    if refused:
        return refused
    if answer == expected:
        parts = " + ".join(f"{name} {sum(p.values()):,}" for name, p in layers if p)
        return right(f"{expected:,} = {parts}。")
    biases = sum(p.get("bias", 0) for _, p in layers)
    norm = sum(sum(p.values()) for name, p in layers if name == "LayerNorm")
    if answer == expected - biases:
        return wrong("少了偏置 bias：每个 Linear 和 LayerNorm 都有一个偏置向量。")
    if answer == expected - norm:
        return wrong("少了 LayerNorm：它有 weight 和 bias 两个向量，长度都是 4 × ViT 宽度。")
    return wrong("不对：mlp1 = LayerNorm(4C) → Linear(4C, H) → GELU → Linear(H, H)；C 是 ViT 宽度，H 是 LLM 宽度。")


MLP1_PARAMETERS = Exercise(
    id="01.mlp1_parameters",
    title="练习 3 · mlp1 的参数量",
    judge=_judge_mlp1_parameters,
    hint="InternVL2-2B：ViT 宽度 C = full.config.vision_config.hidden_size，LLM 宽度 H = "
         "full.config.llm_config.hidden_size。像素重排后输入宽度是 4C。Linear(a, b) 有 a*b + b 个参数，"
         "LayerNorm(n) 有 2n 个；GELU 没有参数。",
    solution="""\
vit_width = full.config.vision_config.hidden_size  # C = 1024 (InternViT-300M)
llm_width = full.config.llm_config.hidden_size  # H = 2048 (InternLM2-1.8B)
folded = 4 * vit_width  # pixel shuffle: a 2x2 block of tokens in the channels
n_mlp1 = (2 * folded  # LayerNorm(4C): weight + bias
          + folded * llm_width + llm_width  # Linear(4C, H): weight + bias
          + llm_width * llm_width + llm_width)  # Linear(H, H); GELU has no parameters
""",
)

EXERCISES = (PIXEL_SHUFFLE, IMAGE_TOKENS, MLP1_PARAMETERS)
