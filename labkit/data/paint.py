"""A procedural food painter: turns a dish's `Look` (labkit.data.dishes) into varied pictures.

Why pictures are drawn rather than downloaded: the course runs offline on a laptop, and a tiny
vision model needs a few hundred clean, labelled pictures whose content we control. Each dish
keeps a strong signature - its dominant colours, its piece shape and its arrangement - while
everything else varies from picture to picture:

    table colour/texture, plate colour, lighting, number of pieces, their position, size and
    rotation, the picture's size and aspect ratio (1:3 ... 3:1), blur and sensor noise.

The aspect ratios are chosen so that InternVL's dynamic tiling (64 px tiles in the CPU course)
cuts a picture into 1, 2, 3, 4 or 6 tiles. Containers that are round (steamers, round plates,
bowls) are repeated along a long picture, and long containers stretch, so every tile still shows
the dish.

Determinism: the same (dish, seed) gives the same pixels, hence the same JPEG bytes. All random
choices come from one numpy Generator seeded from a hash of the dish key and the seed.

Drawing happens at `SUPERSAMPLE` times the final size and is then reduced, which smooths edges.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from labkit import fileio
from labkit.data.dishes import DISHES, Dish, Look, get_dish
from labkit.data.pieces import PIECE_PAINTERS, Canvas, ellipse, jitter, rounded_rect, shade

SUPERSAMPLE = 3
JPEG_QUALITY = 90
# (width, height) ratios a picture may have; (1, 1) is listed twice so squares are common.
ASPECTS = ((1, 3), (1, 2), (2, 3), (1, 1), (1, 1), (3, 2), (2, 1), (3, 1))
SHORT_SIDE = (64, 160)  # shorter side in pixels, before the long-side cap
LONG_SIDE_MAX = 400

# Table colours: browns, greys and muted blues - never red or green, which are dish signatures.
TABLE_COLORS = (
    (196, 160, 118), (150, 105, 70), (105, 72, 48), (170, 170, 165), (120, 122, 125),
    (70, 72, 78), (225, 215, 195), (235, 232, 225), (120, 140, 165), (180, 175, 150),
)
PLATE_COLORS = ((250, 250, 248), (245, 240, 228), (236, 238, 240), (250, 246, 238))
RIM_COLORS = ((60, 90, 160), (180, 150, 90), (150, 150, 150))
BAMBOO = (205, 165, 105)


# ----------------------------------------------------------------------------- containers


@dataclass
class Container:
    """A plate-like area: centre, half-length `a` along `angle`, half-width `b` across it."""

    x: float
    y: float
    a: float
    b: float
    angle: float

    def to_world(self, u: float, v: float) -> tuple[float, float]:
        """Container-local (u along the long axis, v across it) to canvas coordinates."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        return self.x + c * u - s * v, self.y + s * u + c * v


ROUND_CONTAINERS = {"steamer", "round_plate", "bowl"}
SHADOW = (0, 0, 0, 60)


def _draw_plate(cv: Canvas, box: Container, look: Look) -> None:
    """A round or oval porcelain plate, sometimes with a coloured rim line."""
    rng = cv.rng
    plate = jitter(rng, PLATE_COLORS[rng.integers(len(PLATE_COLORS))], 0.02)
    outline = ellipse(box.a, box.b, 64)
    cv.poly(outline * 1.01 + [0.03 * box.b, 0.06 * box.b], box.x, box.y, box.angle, fill=SHADOW)
    cv.poly(outline, box.x, box.y, box.angle, fill=plate, outline=shade(plate, 0.8), width=1.0)
    if rng.random() < 0.35:
        rim = RIM_COLORS[rng.integers(len(RIM_COLORS))]
        cv.line(np.concatenate([outline, outline[:1]]) * 0.93, box.x, box.y, box.angle,
                fill=rim, width=1.5)
    inner = outline * np.array([(box.a - 0.14 * box.b) / box.a, 0.86])
    cv.poly(inner, box.x, box.y, box.angle, fill=shade(plate, 0.97),
            outline=shade(plate, 0.9), width=0.8)


def _draw_leaves(cv: Canvas, box: Container, look: Look) -> None:
    """An oval plate lined with three pointed bamboo leaves (under 粽子)."""
    _draw_plate(cv, box, look)
    t = np.linspace(0, 2 * math.pi, 32, endpoint=False)
    leaf = np.stack([0.55 * box.a * np.cos(t),
                     0.5 * box.b * np.sin(t) * (0.3 + 0.7 * np.abs(np.sin(t)))], axis=1)
    for k in range(3):
        shift = [(k - 1) * 0.5 * box.a, cv.rng.uniform(-0.2, 0.2) * box.b]
        cv.poly(leaf + shift, box.x, box.y, box.angle + cv.rng.uniform(-0.4, 0.4),
                fill=jitter(cv.rng, (95, 150, 60)), outline=(50, 100, 35), width=0.8)


def _draw_steel_plate(cv: Canvas, box: Container, look: Look) -> None:
    """The shallow metal plate 肠粉 is steamed and served on, with a bright reflection."""
    a, b = box.a, box.b
    steel = jitter(cv.rng, (150, 152, 156), 0.08)
    rect = rounded_rect(2 * a, 2 * b, 0.3 * b)
    cv.poly(rect + [0.03 * b, 0.06 * b], box.x, box.y, box.angle, fill=SHADOW)
    cv.poly(rect, box.x, box.y, box.angle, fill=shade(steel, 0.8), outline=shade(steel, 0.5),
            width=1.2)
    cv.poly(rect * np.array([(a - 0.1 * b) / a, 0.9]), box.x, box.y, box.angle, fill=steel)
    cv.poly(rounded_rect(1.7 * a, 0.25 * b, 0.1 * b) + [0, -0.55 * b], box.x, box.y, box.angle,
            fill=(255, 255, 255, 60))


def _draw_steamer(cv: Canvas, box: Container, look: Look) -> None:
    """A round bamboo steamer seen from above: rim, woven floor, sometimes a paper liner."""
    r, x, y = box.a, box.x, box.y
    cv.poly(ellipse(r * 1.02, r * 1.02) + [0.04 * r, 0.08 * r], x, y, 0, fill=SHADOW)
    wood = jitter(cv.rng, BAMBOO, 0.05)
    cv.poly(ellipse(r, r, 64), x, y, 0, fill=shade(wood, 0.85), outline=shade(wood, 0.55),
            width=1.2)
    cv.poly(ellipse(0.86 * r, 0.86 * r, 64), x, y, 0, fill=wood, outline=shade(wood, 0.6),
            width=1.0)
    for k in range(-6, 7):  # woven slats of the floor
        off = k * 0.13 * r
        half = math.sqrt(max(0.0, (0.84 * r) ** 2 - off ** 2))
        cv.line(np.array([[off, -half], [off, half]]), x, y, 0, fill=shade(wood, 0.8, 120))
        cv.line(np.array([[-half, off], [half, off]]), x, y, 0, fill=shade(wood, 0.8, 120))
    if cv.rng.random() < 0.5:
        cv.poly(ellipse(0.74 * r, 0.74 * r, 48), x, y, 0, fill=(245, 238, 215, 200))


def _draw_bowl(cv: Canvas, box: Container, look: Look) -> None:
    """A ceramic bowl filled with the dish's sauce, flecked with oil and minced meat."""
    rng, r, x, y = cv.rng, box.a, box.x, box.y
    ceramic = jitter(rng, ((245, 243, 238), (60, 45, 40), (230, 235, 245))[rng.integers(3)])
    cv.poly(ellipse(r * 1.02, r * 1.02) + [0.04 * r, 0.08 * r], x, y, 0, fill=SHADOW)
    cv.poly(ellipse(r, r, 64), x, y, 0, fill=ceramic, outline=shade(ceramic, 0.7), width=1)
    sauce = jitter(rng, look.sauce or (150, 60, 30), 0.05)
    cv.poly(ellipse(0.84 * r, 0.84 * r, 64), x, y, 0, fill=sauce,
            outline=shade(ceramic, 0.6), width=1.0)
    for _ in range(40):
        sx, sy = rng.uniform(-0.6, 0.6, size=2) * r
        cv.dot(x + sx, y + sy, rng.uniform(0.02, 0.05) * r,
               shade(sauce, rng.choice([0.6, 1.25]), 160))


def _draw_tray(cv: Canvas, box: Container, look: Look) -> None:
    """A dark metal baking tray (under 蛋挞)."""
    a, b = box.a, box.b
    metal = jitter(cv.rng, (95, 92, 90), 0.1)
    rect = rounded_rect(2 * a, 2 * b, 0.12 * b)
    cv.poly(rect + [0.03 * b, 0.06 * b], box.x, box.y, box.angle, fill=SHADOW)
    cv.poly(rect, box.x, box.y, box.angle, fill=metal, outline=shade(metal, 0.6), width=1.2)
    cv.poly(rect * np.array([(a - 0.08 * b) / a, 0.92]), box.x, box.y, box.angle,
            fill=shade(metal, 1.15))


def _draw_paper(cv: Canvas, box: Container, look: Look) -> None:
    """A sheet of white, cream or kraft paper with a fold line (under 糖葫芦)."""
    a, b = box.a, box.b
    sheet = jitter(cv.rng, ((240, 232, 210), (215, 190, 150), (250, 248, 242))[cv.rng.integers(3)])
    rect = rounded_rect(2 * a, 2 * b, 0.02 * b)
    cv.poly(rect + [0.02 * b, 0.04 * b], box.x, box.y, box.angle, fill=SHADOW)
    cv.poly(rect, box.x, box.y, box.angle, fill=sheet, outline=shade(sheet, 0.85), width=0.8)
    cv.line(np.array([[-a, 0.1 * b], [a, -0.1 * b]]), box.x, box.y, box.angle,
            fill=shade(sheet, 0.92))


CONTAINER_PAINTERS = {
    "round_plate": _draw_plate, "oval_plate": _draw_plate, "leaf": _draw_leaves,
    "steel_plate": _draw_steel_plate, "steamer": _draw_steamer, "bowl": _draw_bowl,
    "tray": _draw_tray, "paper": _draw_paper,
}


def _draw_extras(cv: Canvas, box: Container, look: Look) -> None:
    """What lies between container and pieces: a sauce pool and a dipping dish, if any."""
    rng = cv.rng
    if look.sauce is not None and look.container != "bowl":
        phase = rng.uniform(0, 6)
        blob = ellipse(box.a * 0.88, box.b * 0.84, 40, lambda t: 1 + 0.08 * np.sin(3 * t + phase))
        cv.poly(blob, box.x, box.y, box.angle, fill=jitter(rng, look.sauce) + (215,))
    if look.dip is not None:
        r = 0.22 * min(box.a, box.b)
        cv.poly(ellipse(r, r, 32), box.x + 0.1 * r, box.y + 0.15 * r, 0, fill=(0, 0, 0, 70))
        cv.poly(ellipse(r, r, 32), box.x, box.y, 0, fill=(245, 245, 240),
                outline=(150, 150, 150), width=0.8)
        cv.poly(ellipse(0.75 * r, 0.75 * r, 32), box.x, box.y, 0, fill=jitter(rng, look.dip))


def _sprinkle(cv: Canvas, box: Container, look: Look) -> None:
    """Small garnish bits (scallion, chili, black beans) scattered over the food."""
    if look.garnish is None:
        return
    rng = cv.rng
    for _ in range(int(rng.integers(8, 20))):
        gx, gy = box.to_world(rng.uniform(-0.6, 0.6) * box.a, rng.uniform(-0.6, 0.6) * box.b)
        bit = rounded_rect(rng.uniform(1.2, 2.6) * cv.px, rng.uniform(1.0, 1.8) * cv.px,
                            0.3 * cv.px)
        cv.poly(bit, gx, gy, rng.uniform(0, math.pi), fill=jitter(rng, look.garnish))


# ----------------------------------------------------------------------------- arrangement


@dataclass
class Piece:
    """Where one piece goes: centre, its own width/height and angle (canvas units)."""

    x: float
    y: float
    w: float
    h: float
    angle: float


def _stripes(box: Container, n: int, size: float, rng) -> list[Piece]:
    """Long pieces (rolls, skewers) lying side by side along the container."""
    gap = min(2 * box.b * 0.82 / n, size * 1.3)  # sauce shows between the pieces
    length = 2 * box.a * 0.9 - (0 if box.a > box.b else 0.3 * box.b)
    pieces = []
    for i in range(n):
        u, v = rng.uniform(-0.03, 0.03) * box.a, (i - (n - 1) / 2) * gap
        flip = math.pi if rng.random() < 0.5 else 0.0
        pieces.append(Piece(*box.to_world(u, v), length, size,
                            box.angle + rng.uniform(-0.06, 0.06) + flip))
    return pieces


def _line(box: Container, n: int, size: float, rng) -> list[Piece]:
    """Whole round pieces in a row along the container."""
    d = min(size, 2 * box.a * 0.9 / n, 2 * box.b * 0.9)
    return [Piece(*box.to_world((i - (n - 1) / 2) * d * 1.08, rng.uniform(-0.08, 0.08) * box.b),
                  d, d, rng.uniform(0, 2 * math.pi)) for i in range(n)]


def _fan(box: Container, n: int, size: float, rng) -> list[Piece]:
    """Overlapping slices shingled along the container, slightly fanned out.

    A long plate gets more slices, so that every tile of a long picture shows some.
    """
    n = round(n * min(3.0, max(1.0, box.a / (1.4 * box.b))))
    thick = size * 0.42
    step = min(max(2 * box.a * 0.75 / n, thick * 0.6), thick * 1.1)
    return [Piece(*box.to_world((i - (n - 1) / 2) * step, 0), thick, 2 * box.b * 0.72,
                  box.angle + (i - (n - 1) / 2) * 0.06 + rng.uniform(-0.05, 0.05))
            for i in range(n)]


def _ring(box: Container, n: int, size: float, rng) -> list[Piece]:
    """Pieces around the centre, each turned to follow the circle."""
    short = min(box.a, box.b)
    radius = (0.38 if n <= 4 else 0.58) * short
    d = min(size, 2 * math.pi * radius / n * (1.15 if n > 4 else 1.3))
    phase = rng.uniform(0, 2 * math.pi)
    pieces = []
    for i in range(n):
        t = phase + 2 * math.pi * i / n
        u, v = radius * math.cos(t) * box.a / short, radius * math.sin(t) * box.b / short
        pieces.append(Piece(*box.to_world(u, v), d, d * 0.7, box.angle + t - math.pi / 2))
    return pieces


def _grid(box: Container, n: int, size: float, rng) -> list[Piece]:
    """Rows and columns filling the container (the piece count adapts to its shape)."""
    round_box = box.a == box.b
    inner_a, inner_b = (0.66 * box.a, 0.66 * box.b) if round_box else (0.9 * box.a, 0.86 * box.b)
    rows = max(1, round(math.sqrt(n * inner_b / inner_a)))
    cols = max(1, round(n / rows))
    cell = min(2 * inner_a / cols, 2 * inner_b / rows)
    d = min(size, cell * 0.95)
    pieces = []
    for i in range(rows * cols):
        u = (i % cols - (cols - 1) / 2 + rng.uniform(-0.04, 0.04)) * cell
        v = (i // cols - (rows - 1) / 2 + rng.uniform(-0.04, 0.04)) * cell
        pieces.append(Piece(*box.to_world(u, v), d, d, rng.uniform(0, 2 * math.pi)))
    return pieces


def _hex(box: Container, n: int, size: float, rng) -> list[Piece]:
    """One piece in the middle and up to six packed around it."""
    d = min(size, 2 * min(box.a, box.b) * 0.85 / 3)
    turn = rng.uniform(0, math.pi / 3)
    spots = [(0.0, 0.0)] + [(1.05 * d * math.cos(turn + k * math.pi / 3),
                             1.05 * d * math.sin(turn + k * math.pi / 3)) for k in range(6)]
    return [Piece(*box.to_world(u, v), d, d, rng.uniform(0, 2 * math.pi)) for u, v in spots[:n]]


def _scatter(box: Container, n: int, size: float, rng) -> list[Piece]:
    """Pieces dropped at random spots that do not overlap much (up to n of them)."""
    placed: list[tuple[float, float]] = []
    for _ in range(400):
        if len(placed) == n:
            break
        u, v = rng.uniform(-1, 1) * 0.62 * box.a, rng.uniform(-1, 1) * 0.62 * box.b
        inside = (u / box.a) ** 2 + (v / box.b) ** 2 <= 0.62 ** 2
        if inside and all((u - pu) ** 2 + (v - pv) ** 2 > (0.85 * size) ** 2 for pu, pv in placed):
            placed.append((u, v))
    return [Piece(*box.to_world(u, v), size, size * 1.1, rng.uniform(0, 2 * math.pi))
            for u, v in placed]


ARRANGERS = {"stripes": _stripes, "line": _line, "fan": _fan, "ring": _ring, "grid": _grid,
             "hex": _hex, "scatter": _scatter}


def _arrange(look: Look, box: Container, rng: np.random.Generator) -> list[Piece]:
    """Lay out a random number of pieces inside one container, following `look.arrangement`."""
    n = int(rng.integers(look.count[0], look.count[1] + 1))
    size = look.size * 2 * box.b * rng.uniform(0.9, 1.1)
    return ARRANGERS[look.arrangement](box, n, size, rng)


def _containers(look: Look, width: float, height: float, rng: np.random.Generator) -> list[Container]:
    """Place the containers: round ones repeat along a long canvas, long ones stretch to fit it."""
    long_side, short_side = max(width, height), min(width, height)
    along = 0.0 if width >= height else math.pi / 2
    scale = rng.uniform(0.8, 0.97)
    cx = width / 2 + rng.uniform(-0.05, 0.05) * width
    cy = height / 2 + rng.uniform(-0.05, 0.05) * height
    if look.container in ROUND_CONTAINERS:
        n = max(1, round(long_side / short_side))
        r = min(short_side * scale, long_side / n * 0.98) / 2
        boxes = []
        for i in range(n):
            u = (i - (n - 1) / 2) * long_side / n
            x = cx + u * math.cos(along) + rng.uniform(-0.03, 0.03) * r
            y = cy + u * math.sin(along) + rng.uniform(-0.03, 0.03) * r
            boxes.append(Container(x, y, r, r, rng.uniform(0, 2 * math.pi)))
        return boxes
    a = long_side / 2 * scale
    b = short_side / 2 * scale
    if a < b * 1.15:  # near-square canvas: keep an elongated plate, turned at any angle
        b, tilt = b * 0.75, rng.uniform(-0.8, 0.8)
    else:
        tilt = rng.uniform(-0.12, 0.12)
    return [Container(cx, cy, a, b, along + tilt)]


# ----------------------------------------------------------------------------- the picture


def stable_seed(*parts) -> int:
    """A 64-bit seed from any parts (e.g. dish key, seed); identical on every machine and run."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def pick_size(rng: np.random.Generator) -> tuple[int, int]:
    """Pick (width, height): an aspect ratio from ASPECTS, shorter side 64..160, longer <= 400."""
    w_ratio, h_ratio = ASPECTS[rng.integers(len(ASPECTS))]
    ratio = (w_ratio / h_ratio) * rng.uniform(0.94, 1.06)
    short = int(rng.integers(SHORT_SIDE[0], SHORT_SIDE[1] + 1))
    long = min(LONG_SIDE_MAX, round(short * max(ratio, 1 / ratio)))
    short = max(SHORT_SIDE[0], min(short, round(long / max(ratio, 1 / ratio))))
    return (long, short) if ratio >= 1 else (short, long)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A table top: a base colour with wood grain, speckled stone or a linen weave."""
    base = np.array(jitter(rng, TABLE_COLORS[rng.integers(len(TABLE_COLORS))], 0.08), float)
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    kind = rng.integers(3)
    if kind == 0:  # wood grain
        freq = rng.uniform(0.02, 0.06) / SUPERSAMPLE
        grain = np.sin(yy * freq * 6 + 3 * np.sin(xx * freq * 0.7 + rng.uniform(0, 6)))
        texture = 0.07 * grain
    elif kind == 1:  # stone speckle
        texture = rng.normal(0, 0.05, size=(height // 6 + 1, width // 6 + 1))
        texture = np.kron(texture, np.ones((6, 6)))[:height, :width]
    else:  # linen weave
        period = rng.integers(4, 9) * SUPERSAMPLE
        texture = 0.04 * ((xx // period + yy // period) % 2 - 0.5)
    return np.clip(base[None, None, :] * (1 + texture[..., None]), 0, 255)


def _light_and_lens(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply lighting (a directional gradient, brightness, a warm/cool tint), then sensor noise."""
    height, width = image.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    theta = rng.uniform(0, 2 * math.pi)
    ramp = ((xx / width - 0.5) * math.cos(theta) + (yy / height - 0.5) * math.sin(theta))
    light = rng.uniform(0.88, 1.1) * (1 + rng.uniform(0.0, 0.3) * ramp)
    tint = rng.uniform(-0.05, 0.06)
    gains = np.array([1 + tint, 1.0, 1 - tint])
    out = image * light[..., None] * gains[None, None, :]
    out = out + rng.normal(0, rng.uniform(0.0, 5.0), size=out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def render_dish(dish: Dish | str, seed: int, size: tuple[int, int] | None = None) -> Image.Image:
    """Draw one picture of `dish` (a Dish, name or key); the same arguments give the same pixels.

    `size` is (width, height) in pixels; by default it is drawn from `pick_size`.
    """
    dish = get_dish(dish) if isinstance(dish, str) else dish
    look = dish.look
    rng = np.random.default_rng(stable_seed(dish.key, seed))
    width, height = size if size is not None else pick_size(rng)
    big_w, big_h = width * SUPERSAMPLE, height * SUPERSAMPLE
    image = Image.fromarray(_background(rng, big_w, big_h).astype(np.uint8))
    cv = Canvas(image, ImageDraw.Draw(image, "RGBA"), rng, float(SUPERSAMPLE))
    paint = PIECE_PAINTERS[look.piece]
    for box in _containers(look, big_w, big_h, rng):
        CONTAINER_PAINTERS[look.container](cv, box, look)
        _draw_extras(cv, box, look)
        for piece in _arrange(look, box, rng):
            paint(cv, look, piece.x, piece.y, piece.w, piece.h, piece.angle)
        _sprinkle(cv, box, look)
    small = image.reduce(SUPERSAMPLE)
    blur = rng.uniform(0.0, 0.8) if rng.random() < 0.6 else 0.0
    if blur > 0.05:
        small = small.filter(ImageFilter.GaussianBlur(blur))
    return Image.fromarray(_light_and_lens(np.asarray(small, dtype=float), rng))


def save_jpeg(image: Image.Image, path: str | os.PathLike, quality: int = JPEG_QUALITY) -> Path:
    """Write `image` as a JPEG atomically (labkit.fileio); return the path."""
    path = Path(path)
    with fileio.atomic_path(path) as tmp:
        image.save(tmp, format="JPEG", quality=quality)
    return path


def render_to_file(dish: Dish | str, seed: int, path: str | os.PathLike) -> tuple[int, int]:
    """Render `dish` with `seed` into a JPEG at `path`; return the picture's (width, height)."""
    image = render_dish(dish, seed)
    save_jpeg(image, path)
    return image.size


def contact_sheet(path: str | os.PathLike, seeds=range(6), cell: int = 150,
                  thumb: int = 64) -> Path:
    """Save a PNG showing every dish: one row per dish, one column per seed.

    Each row ends with the 64 x 64 thumbnails the tiny model sees for the first seeds, so you
    can judge whether a dish is still recognisable at that size.
    """
    seeds = list(seeds)
    label_w, pad = 110, 4
    n_thumbs = min(3, len(seeds))
    width = label_w + len(seeds) * (cell + pad) + n_thumbs * (thumb + pad) + pad
    height = len(DISHES) * (cell + pad) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    pen = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for row, dish in enumerate(DISHES):
        top = pad + row * (cell + pad)
        tag = f"{dish.key}\n({'held back' if dish.held_back else 'known'})"
        pen.multiline_text((pad, top + cell // 2 - 12), tag, fill=(0, 0, 0), font=font)
        for col, seed in enumerate(seeds):
            picture = render_dish(dish, seed)
            picture.thumbnail((cell, cell))
            left = label_w + col * (cell + pad)
            sheet.paste(picture, (left + (cell - picture.width) // 2,
                                  top + (cell - picture.height) // 2))
        for k in range(n_thumbs):
            small = render_dish(dish, seeds[k]).resize((thumb, thumb), Image.BICUBIC)
            left = label_w + len(seeds) * (cell + pad) + k * (thumb + pad)
            sheet.paste(small, (left, top + (cell - thumb) // 2))
    path = Path(path)
    with fileio.atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
