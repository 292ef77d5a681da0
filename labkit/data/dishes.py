"""The dish table: the one place where labkit names its dishes (and the questions about them).

Every other module (the renderer, the dataset builder, the tokenizer, the evaluation) asks this
table for names instead of spelling them out, so adding or renaming a dish is a one-line change.

Each `Dish` carries three kinds of facts:

* who it is: `name` (Chinese, the word the model must answer with), `key` (an ASCII name used for
  file names), `cuisine` and a short Chinese `description`;
* how it looks: a `Look` - container, piece shape, colours, how many pieces and how they are
  arranged. `labkit.data.paint` turns a `Look` into pictures; the numbers here are its parameters;
* whether it is `held_back`: a held-back dish never appears in the `general` set that the base
  model is pretrained on, only in the `food` fine-tune set. 肠粉 is held back so that the base model
  cannot name it and the fine-tuned model can: that is the before/after story of the course.

Colours are RGB tuples. Each dish has its own signature (dominant colours + piece shape +
arrangement) so that a tiny vision model seeing 64 x 64 tiles can tell the dishes apart.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Look:
    """The drawing parameters of one dish (read by `labkit.data.paint`).

    container: what the food sits on - "steel_plate", "oval_plate", "round_plate", "steamer",
        "bowl", "tray", "paper" or "leaf".
    piece: the shape drawn for one piece (see `labkit.data.pieces.PIECE_PAINTERS`).
    colors: the piece's main colour, a second colour and a third accent colour.
    sauce: colour of a sauce pool under the pieces, or None.
    dip: colour of a small dipping-sauce dish in the middle of the container, or None.
    garnish: colour of small sprinkled bits (scallion, chili, sesame), or None.
    count: (fewest, most) pieces per container.
    arrangement: how pieces are placed - "stripes" (long pieces side by side), "line", "fan",
        "ring", "grid", "hex" or "scatter" (see `labkit.data.paint.ARRANGERS`).
    size: piece size as a fraction of the container's shorter side.
    """

    container: str
    piece: str
    colors: tuple[RGB, RGB, RGB]
    count: tuple[int, int]
    arrangement: str
    size: float
    sauce: RGB | None = None
    garnish: RGB | None = None
    dip: RGB | None = None


@dataclass(frozen=True)
class Dish:
    """One dish: its name, file key, cuisine, description, look and held-back flag."""

    name: str
    key: str
    cuisine: str
    description: str
    look: Look
    held_back: bool = False


DISHES: tuple[Dish, ...] = (
    Dish(
        "肠粉", "cheung_fun", "粤菜",
        "米浆蒸成薄皮卷起的长条，洁白半透明，浇上酱油，撒葱花，是广东早茶的常见点心。",
        Look("steel_plate", "roll", ((244, 242, 234), (228, 182, 160), (255, 255, 255)),
             (2, 3), "stripes", 0.27, sauce=(95, 45, 15), garnish=(70, 160, 60)),
        held_back=True,
    ),
    Dish(
        "叉烧", "char_siu", "粤菜",
        "蜜汁烤制的猪肉切片，边缘红亮，肉色粉褐，甜咸适口。",
        Look("oval_plate", "slice", ((200, 30, 40), (214, 140, 110), (120, 20, 25)),
             (5, 8), "fan", 0.30, sauce=(150, 40, 30)),
    ),
    Dish(
        "虾饺", "har_gow", "粤菜",
        "澄面做皮，包入整只鲜虾，皮薄透明，隐约可见粉红虾肉，放在竹蒸笼里。",
        Look("steamer", "crescent", ((236, 228, 222), (245, 150, 140), (255, 250, 245)),
             (3, 4), "ring", 0.40),
    ),
    Dish(
        "烧卖", "siu_mai", "粤菜",
        "黄色薄皮包着猪肉虾仁，开口向上，顶上点缀橙色蟹籽，放在竹蒸笼里。",
        Look("steamer", "open_cup", ((236, 190, 50), (235, 95, 20), (200, 150, 60)),
             (4, 4), "grid", 0.36),
    ),
    Dish(
        "蛋挞", "egg_tart", "粤菜",
        "酥皮做成圆形挞壳，中间是金黄的蛋奶馅，表面带焦糖斑点。",
        Look("tray", "tart", ((252, 214, 40), (205, 135, 50), (150, 80, 20)),
             (4, 6), "grid", 0.42),
    ),
    Dish(
        "叉烧包", "char_siu_bao", "粤菜",
        "松软的白色发面包子，顶部裂开，露出红色的叉烧馅，放在竹蒸笼里。",
        Look("steamer", "bun", ((250, 248, 240), (190, 30, 35), (225, 220, 205)),
             (3, 3), "ring", 0.52),
    ),
    Dish(
        "小笼包", "xiaolongbao", "沪菜",
        "皮薄多褶的小包子，里面有汤汁，一笼好几个，配姜丝和香醋。",
        Look("steamer", "pleated_bun", ((238, 232, 215), (150, 140, 120), (200, 190, 170)),
             (7, 7), "hex", 0.30),
    ),
    Dish(
        "凤爪", "phoenix_claws", "粤菜",
        "炸后再蒸的鸡爪，外皮橙红起皱，浇豉汁，配红辣椒。",
        Look("round_plate", "claw", ((220, 100, 40), (170, 60, 25), (250, 180, 120)),
             (3, 5), "scatter", 0.45, sauce=(130, 45, 20), garnish=(30, 25, 20)),
    ),
    Dish(
        "糖葫芦", "tanghulu", "京菜",
        "山楂串在竹签上，裹一层亮晶晶的糖衣，红艳酸甜，是北京的街头小吃。",
        Look("paper", "skewer", ((205, 10, 30), (130, 80, 40), (255, 235, 235)),
             (2, 3), "stripes", 0.16),
        held_back=True,
    ),
    Dish(
        "月饼", "mooncake", "粤菜",
        "圆形的饼，饼皮金褐色，压有花纹，切开可见咸蛋黄和莲蓉馅，是中秋节的点心。",
        Look("round_plate", "mooncake", ((190, 110, 40), (140, 70, 20), (250, 170, 20)),
             (1, 2), "line", 0.62),
    ),
    Dish(
        "饺子", "jiaozi", "东北菜",
        "面皮包馅捏成半月形，煮熟后洁白饱满，一盘排成一圈，蘸醋吃。",
        Look("round_plate", "dumpling", ((250, 248, 238), (170, 165, 150), (235, 225, 200)),
             (6, 8), "ring", 0.34, dip=(45, 25, 15)),
    ),
    Dish(
        "麻婆豆腐", "mapo_tofu", "川菜",
        "嫩豆腐块浸在红亮的麻辣肉末酱汁里，撒花椒粉和蒜苗，麻辣鲜香。",
        Look("bowl", "tofu", ((252, 246, 228), (200, 40, 15), (110, 20, 10)),
             (8, 12), "scatter", 0.17, sauce=(205, 45, 15), garnish=(60, 150, 40)),
    ),
    Dish(
        "粽子", "zongzi", "浙菜",
        "糯米用粽叶包成三角形，用绳子扎紧蒸熟，端午节吃。",
        Look("leaf", "pyramid", ((70, 140, 45), (40, 95, 30), (200, 180, 130)),
             (2, 3), "line", 0.50),
        held_back=True,
    ),
)

# The words the course asks and answers with (labkit.data.build builds its records from them, and the
# tiny tokenizer learns its vocabulary from them together with the dish names).
OPEN_QUESTIONS: tuple[str, ...] = (
    "图中的菜是什么？",
    "这是什么菜？",
    "图片里是哪道菜？",
    "请说出图中这道菜的名字。",
    "你能认出图中的菜吗？",
)
CHOICE_QUESTION = "图中的菜是哪一道？"  # followed by " A. 叉烧 B. 肠粉 C. ... D. ..."
ANSWER_PREFIX = "图中的菜是"  # every answer: "图中的菜是肠粉。" or "B，图中的菜是肠粉。"
QUESTIONS: tuple[str, ...] = OPEN_QUESTIONS + (CHOICE_QUESTION,)

_BY_NAME = {dish.name: dish for dish in DISHES}
_BY_KEY = {dish.key: dish for dish in DISHES}


def dish_names() -> list[str]:
    """Every dish name, in table order."""
    return [dish.name for dish in DISHES]


def known_names() -> list[str]:
    """Names of the dishes the base model may see (the `general` pretraining set)."""
    return [dish.name for dish in DISHES if not dish.held_back]


def held_back_names() -> list[str]:
    """Names of the dishes kept out of pretraining (only in the `food` fine-tune set)."""
    return [dish.name for dish in DISHES if dish.held_back]


def get_dish(name_or_key: str) -> Dish:
    """Look a dish up by its Chinese name or its ASCII key; raise KeyError with the choices."""
    dish = _BY_NAME.get(name_or_key) or _BY_KEY.get(name_or_key)
    if dish is None:
        raise KeyError(
            f"unknown dish {name_or_key!r}; known dishes are: {', '.join(dish_names())} "
            f"(keys: {', '.join(_BY_KEY)}). Add new dishes to labkit/data/dishes.py."
        )
    return dish


def is_held_back(name: str) -> bool:
    """True if the dish is held back from the general set (see the module docstring)."""
    return get_dish(name).held_back


def _check_table() -> None:
    """Refuse an inconsistent table at import time: duplicate names/keys or a bad look."""
    if len(_BY_NAME) != len(DISHES) or len(_BY_KEY) != len(DISHES):
        raise ValueError("labkit/data/dishes.py: every dish needs a unique name and key")
    for dish in DISHES:
        if not dish.key.isascii() or not dish.key.replace("_", "").isalnum():
            raise ValueError(f"labkit/data/dishes.py: key {dish.key!r} must be ASCII letters/digits/_")
        low, high = dish.look.count
        if not 1 <= low <= high:
            raise ValueError(f"labkit/data/dishes.py: {dish.name} has a bad count range {dish.look.count}")


_check_table()
