"""The canvas and the piece painters: one function per dish shape (labkit.data.dishes `Look.piece`).

`labkit.data.paint` lays out the table, the containers and where each piece goes; it then calls
`PIECE_PAINTERS[look.piece]` once per piece. A painter draws one piece centred at (x, y) on a
`Canvas`, using the dish's colours and the canvas's random generator, so that the same seed gives
the same strokes. The small shape helpers here (ellipse, capsule, rounded_rect) and the colour
helpers (shade, jitter) are shared with the container painters in `labkit.data.paint`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from labkit.data.dishes import Look


# ----------------------------------------------------------------------------- geometry


def rotate(points: np.ndarray, cx: float, cy: float, angle: float) -> list[tuple[float, float]]:
    """Rotate local (x, y) points by `angle` radians and move them to (cx, cy)."""
    c, s = math.cos(angle), math.sin(angle)
    x, y = points[:, 0], points[:, 1]
    return list(zip((cx + c * x - s * y).tolist(), (cy + s * x + c * y).tolist()))


def ellipse(rx: float, ry: float, n: int = 48, wobble=None) -> np.ndarray:
    """Points of an ellipse; `wobble(t)` (optional) scales the radius at angle t."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    r = 1.0 if wobble is None else wobble(t)
    return np.stack([rx * r * np.cos(t), ry * r * np.sin(t)], axis=1)


def capsule(length: float, width: float, n: int = 16) -> np.ndarray:
    """A rectangle with round ends, centred, long along x."""
    r = width / 2
    half = max(length / 2 - r, 0)
    right = np.linspace(-math.pi / 2, math.pi / 2, n)
    left = right + math.pi
    pts = [(half + r * math.cos(t), r * math.sin(t)) for t in right]
    pts += [(-half + r * math.cos(t), r * math.sin(t)) for t in left]
    return np.array(pts)


def rounded_rect(w: float, h: float, radius: float, n: int = 6) -> np.ndarray:
    """A w x h rectangle with rounded corners, centred."""
    radius = min(radius, w / 2, h / 2)
    pts = []
    corners = ((w / 2 - radius, h / 2 - radius, 0), (-w / 2 + radius, h / 2 - radius, 90),
               (-w / 2 + radius, -h / 2 + radius, 180), (w / 2 - radius, -h / 2 + radius, 270))
    for cx, cy, start in corners:
        for k in range(n + 1):
            t = math.radians(start + 90 * k / n)
            pts.append((cx + radius * math.cos(t), cy + radius * math.sin(t)))
    return np.array(pts)


# ----------------------------------------------------------------------------- colour


def shade(color, factor: float, alpha: int | None = None) -> tuple[int, ...]:
    """Scale a colour's brightness (factor < 1 darker); optionally add an alpha value."""
    rgb = tuple(int(max(0, min(255, round(c * factor)))) for c in color[:3])
    return rgb if alpha is None else rgb + (alpha,)


def jitter(rng: np.random.Generator, color, amount: float = 0.06) -> tuple[int, int, int]:
    """A colour nudged by a small random brightness and per-channel change."""
    scale = 1 + rng.uniform(-amount, amount)
    return tuple(int(max(0, min(255, c * scale + rng.uniform(-8, 8)))) for c in color[:3])


# ----------------------------------------------------------------------------- the canvas


@dataclass
class Canvas:
    """What every painter draws on: the supersampled image, its RGBA-blending pen and the rng."""

    image: Image.Image
    draw: ImageDraw.ImageDraw
    rng: np.random.Generator
    px: float  # one final-image pixel, in supersampled units (line widths scale with it)

    def poly(self, local: np.ndarray, cx: float, cy: float, angle: float, fill, outline=None,
             width: float = 1.0) -> None:
        """Fill a polygon given in local coordinates."""
        pts = rotate(local, cx, cy, angle)
        self.draw.polygon(pts, fill=fill)
        if outline is not None:
            self.draw.line(pts + pts[:1], fill=outline, width=max(1, round(width * self.px)),
                           joint="curve")

    def line(self, local: np.ndarray, cx: float, cy: float, angle: float, fill,
             width: float = 1.0) -> None:
        """Draw a polyline given in local coordinates; `width` is in final pixels."""
        self.draw.line(rotate(local, cx, cy, angle), fill=fill,
                       width=max(1, round(width * self.px)), joint="curve")

    def dot(self, x: float, y: float, r: float, fill) -> None:
        """A small filled circle."""
        self.draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)


# ----------------------------------------------------------------------------- pieces
# Every painter draws one piece centred at (x, y), w wide along its own axis, h tall across it,
# turned by `angle` radians. Colours come from the dish's Look: c1 main, c2 second, c3 accent.


def _paint_roll(cv: Canvas, look: Look, x, y, w, h, angle) -> None:
    """肠粉-style rice-noodle roll: a long glossy white capsule with a faint pink filling."""
    c1, c2, c3 = (jitter(cv.rng, c, 0.03) for c in look.colors)
    cv.poly(capsule(w, h), x, y + 0.1 * h, angle, fill=(60, 30, 10, 70))  # shadow
    cv.poly(capsule(w, h), x, y, angle, fill=c1, outline=shade(c1, 0.8), width=1.0)
    cv.poly(capsule(w * 0.9, h * 0.4) + [0, 0.08 * h], x, y, angle, fill=c2 + (150,))
    cv.line(np.array([[-0.42 * w, -0.18 * h], [0.42 * w, -0.18 * h]]), x, y, angle,
            fill=shade(c1, 0.86), width=1.0)
    for k in np.linspace(-0.4, 0.4, 5) + cv.rng.uniform(-0.04, 0.04):  # soft folds
        cv.line(np.array([[k * w, -0.45 * h], [k * w + 0.03 * w, 0.45 * h]]), x, y, angle,
                fill=shade(c1, 0.9, 120), width=0.8)
    cv.poly(capsule(w * 0.8, h * 0.1) + [0, -0.3 * h], x, y, angle, fill=c3 + (200,))
    if look.sauce is not None:  # soy sauce poured over the roll in a few glossy streaks
        for _ in range(int(cv.rng.integers(3, 7))):
            sx = cv.rng.uniform(-0.42, 0.42) * w
            streak = ellipse(cv.rng.uniform(0.02, 0.045) * w, 0.5 * h, 16) + [sx, 0.05 * h]
            cv.poly(streak, x, y, angle + cv.rng.uniform(-0.2, 0.2),
                    fill=look.sauce + (int(cv.rng.integers(90, 150)),))


def _paint_slice(cv: Canvas, look: Look, x, y, w, h, angle) -> None:
    """叉烧-style slice: a red-rimmed rectangle with a pink-brown inside and charred spots."""
    c1, c2, c3 = (jitter(cv.rng, c, 0.05) for c in look.colors)
    body = rounded_rect(w, h, 0.2 * w) * cv.rng.uniform(0.95, 1.05, size=(1, 2))
    cv.poly(body + [0.08 * w, 0.05 * w], x, y, angle, fill=(40, 10, 5, 90))  # shadow
    cv.poly(body, x, y, angle, fill=c1, outline=c3, width=1.0)
    cv.poly(rounded_rect(w * 0.55, h * 0.8, 0.15 * w), x, y, angle, fill=c2)
    for _ in range(3):
        sx, sy = cv.rng.uniform(-0.4, 0.4) * w, cv.rng.uniform(-0.45, 0.45) * h
        cv.poly(ellipse(0.1 * w, 0.06 * h, 10) + [sx, sy], x, y, angle, fill=c3 + (170,))
    cv.poly(ellipse(0.08 * w, 0.3 * h, 12) + [-0.25 * w, 0], x, y, angle, fill=(255, 200, 190, 90))


def _paint_crescent(cv: Canvas, look: Look, x, y, w, h, angle) -> None:
    """虾饺-style dumpling: a translucent half-moon with a pink shrimp inside and a pleated top."""
    c1, c2, c3 = (jitter(cv.rng, c, 0.04) for c in look.colors)
    t = np.linspace(math.pi, 2 * math.pi, 40)
    bump = 1 + 0.05 * np.abs(np.sin(9 * t))
    dome = np.stack([0.5 * w * bump * np.cos(t), 0.9 * h * bump * np.sin(t) + 0.35 * h], axis=1)
    base = np.array([[0.5 * w, 0.35 * h], [0.3 * w, 0.45 * h], [-0.3 * w, 0.45 * h]])
    shape = np.concatenate([dome, base])
    cv.poly(shape + [0, 0.08 * h], x, y, angle, fill=(50, 35, 20, 90))
    cv.poly(shape, x, y, angle, fill=c1 + (235,), outline=shade(c1, 0.78), width=1.0)
    cv.poly(ellipse(0.28 * w, 0.25 * h, 20) + [0, 0.0], x, y, angle, fill=c2 + (170,))
    cv.poly(ellipse(0.12 * w, 0.12 * h, 12) + [0.08 * w, -0.05 * h], x, y, angle,
            fill=shade(c2, 0.85, 150))
    for k in range(-3, 4):
        tt = math.pi * 1.5 + k * 0.28
        p0 = [0.5 * w * math.cos(tt), 0.9 * h * math.sin(tt) + 0.35 * h]
        cv.line(np.array([p0, [p0[0] * 0.8, p0[1] * 0.7 + 0.1 * h]]), x, y, angle,
                fill=shade(c1, 0.8), width=0.8)
    cv.poly(ellipse(0.12 * w, 0.06 * h, 10) + [-0.15 * w, -0.35 * h], x, y, angle,
            fill=c3 + (200,))


def _paint_open_cup(cv: Canvas, look: Look, x, y, w, h, angle) -> None:
    """烧卖-style: seen from above, a frilly yellow ring around pink meat and an orange dot."""
    c1, c2, c3 = (jitter(cv.rng, c, 0.05) for c in look.colors)
    r = w / 2
    phase = cv.rng.uniform(0, 6.3)
    frill = ellipse(r, r, 60, lambda t: 1 + 0.08 * np.sin(12 * t + phase))
    cv.poly(frill + [0.08 * r, 0.12 * r], x, y, angle, fill=(50, 35, 20, 100))
    cv.poly(frill, x, y, angle, fill=c1, outline=c3, width=1.0)
    cv.poly(ellipse(0.66 * r, 0.66 * r, 30), x, y, angle, fill=(222, 160, 125),
            outline=shade(c1, 0.8), width=0.8)
    cv.poly(ellipse(0.3 * r, 0.3 * r, 20, lambda t: 1 + 0.12 * np.sin(5 * t)), x, y, angle,
            fill=c2)
    cv.poly(ellipse(0.12 * r, 0.1 * r, 10) + [-0.45 * r, -0.45 * r], x, y, angle,
            fill=(255, 240, 180, 160))


def _paint_tart(cv: Canvas, look: Look, x, y, w, h, angle) -> None:
    """蛋挞-style tart: a fluted golden crust ring around bright yellow custard with caramel spots."""
    c1, c2, c3 = (jitter(cv.rng, c, 0.05) for c in look.colors)
    r = w / 2
    crust = ellipse(r, r, 72, lambda t: 1 + 0.06 * np.abs(np.cos(9 * t)))
    cv.poly(crust + [0.1 * r, 0.12 * r], x, y, angle, fill=(30, 20, 10, 110))
    cv.poly(crust, x, y, angle, fill=c2, outline=shade(c2, 0.7), width=1.0)
    cv.poly(ellipse(0.76 * r, 0.76 * r, 40), x, y, angle, fill=c1, outline=shade(c2, 0.8),
            width=0.8)
    for _ in range(int(cv.rng.integers(2, 6))):
        sx, sy = cv.rng.uniform(-0.45, 0.45, size=2) * r
        rr = cv.rng.uniform(0.06, 0.14) * r
        cv.poly(ellipse(rr, rr * 0.8, 12) + [sx, sy], x, y, angle, fill=c3 + (150,))
    cv.poly(ellipse(0.25 * r, 0.12 * r, 14) + [-0.25 * r, -0.35 * r], x, y, angle,
            fill=(255, 250, 220, 150))


def _paint_bun(cv: Canvas, look: Look, x, y, w, h, angle) -> None:
    """叉烧包-style bun: a big fluffy white dome split open on top to show red filling."""
    c1, c2, c3 = (jitter(cv.rng, c, 0.03) for c in look.colors)
    r = w / 2
    body = ellipse(r, r * 0.95, 48, lambda t: 1 + 0.03 * np.sin(5 * t))
    cv.poly(body + [0.08 * r, 0.12 * r], x, y, angle, fill=(40, 30, 20, 110))
    cv.poly(body, x, y, angle, fill=c3, outline=shade(c3, 0.85), width=0.8)
    cv.poly(body * 0.82 + [-0.05 * r, -0.05 * r], x, y, angle, fill=c1)
    splits = int(cv.rng.integers(3, 5))
    for k in range(splits):
        a = 2 * math.pi * k / splits + cv.rng.uniform(-0.2, 0.2)
        tip = 0.62 * r
        wedge = np.array([[0, 0], [tip * math.cos(a - 0.28), tip * math.sin(a - 0.28)],
                          [1.05 * tip * math.cos(a), 1.05 * tip * math.sin(a)],
                          [tip * math.cos(a + 0.28), tip * math.sin(a + 0.28)]])
        cv.poly(wedge, x, y, angle, fill=c2, outline=shade(c2, 0.6), width=0.6)


def _paint_pleated_bun(cv: Canvas, look: Look, x, y, w, h, angle) -> None:
    """小笼包-style: a small ivory bun with many thin pleats twisting into a knot on top."""
    c1, c2, c3 = (jitter(cv.rng, c, 0.03) for c in look.colors)
    r = w / 2
    cv.poly(ellipse(r, r, 40) + [0.08 * r, 0.12 * r], x, y, angle, fill=(40, 30, 20, 110))
    cv.poly(ellipse(r, r, 40), x, y, angle, fill=c1, outline=shade(c2, 0.9), width=0.8)
    pleats = 12
    rho = np.linspace(0.92, 0.15, 8)
    for k in range(pleats):
        theta = 2 * math.pi * k / pleats + 1.1 * (1 - rho)
        curve = np.stack([r * rho * np.cos(theta), r * rho * np.sin(theta)], axis=1)
        cv.line(curve, x, y, angle, fill=c2 + (200,), width=0.9)
    cv.poly(ellipse(0.14 * r, 0.14 * r, 12), x, y, angle, fill=c3, outline=c2, width=0.6)


def _paint_claw(cv: Canvas, look: Look, x, y, w, h, angle) -> None:
    """凤爪-style chicken foot: an orange-red palm with three long wrinkled toes."""
    c1, c2, c3 = (jitter(cv.rng, c, 0.06) for c in look.colors)
    shapes = []
    for spread in (-0.45, 0.0, 0.45):
        toe = capsule(0.55 * h, 0.17 * w, 10)
        a = -math.pi / 2 + spread + cv.rng.uniform(-0.1, 0.1)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        shapes.append(toe @ rot.T + [0.3 * h * math.cos(a), 0.3 * h * math.sin(a) + 0.1 * h])
    shapes.append(capsule(0.4 * h, 0.2 * w, 10) @ np.array([[0, 1], [-1, 0]]) + [0, 0.32 * h])
    shapes.append(ellipse(0.26 * w, 0.2 * h, 20) + [0, 0.1 * h])
    for shape in shapes:
        cv.poly(shape + [0.05 * w, 0.06 * h], x, y, angle, fill=(40, 15, 5, 80))
    for shape in shapes:
        cv.poly(shape, x, y, angle, fill=c1, outline=c2, width=0.8)
    for _ in range(5):
        sx, sy = cv.rng.uniform(-0.25, 0.25) * w, cv.rng.uniform(-0.3, 0.2) * h
        cv.line(np.array([[sx - 0.06 * w, sy], [sx + 0.06 * w, sy + 0.02 * h]]), x, y, angle,
                fill=c2, width=0.7)
    cv.poly(ellipse(0.08 * w, 0.05 * h, 10) + [-0.05 * w, 0.05 * h], x, y, angle,
            fill=c3 + (170,))


def _paint_skewer(cv: Canvas, look: Look, x, y, w, h, angle) -> None:
    """糖葫芦: a wooden stick threaded with glossy red haws, each with a bright sugar glint."""
    c1, c2, c3 = (jitter(cv.rng, c, 0.04) for c in look.colors)
    cv.poly(capsule(w, 0.13 * h), x, y + 0.1 * h, angle, fill=(40, 20, 10, 70))
    cv.poly(capsule(w, 0.13 * h), x, y, angle, fill=c2, outline=shade(c2, 0.7), width=0.6)
    r = h / 2
    start, stop = -0.5 * w + 0.3 * w, 0.5 * w - r * 1.05
    n = max(2, int((stop - start) / (1.9 * r)) + 1)
    for bx in np.linspace(start, stop, n):
        rr = r * cv.rng.uniform(0.9, 1.05)
        cv.poly(ellipse(rr, rr, 28) + [bx + 0.08 * rr, 0.14 * rr], x, y, angle,
                fill=(40, 10, 10, 90))
        cv.poly(ellipse(rr, rr, 28) + [bx, 0], x, y, angle, fill=c1, outline=shade(c1, 0.6),
                width=0.8)
        cv.poly(ellipse(0.35 * rr, 0.22 * rr, 12) + [bx - 0.3 * rr, -0.4 * rr], x, y, 0.0 + angle,
                fill=c3 + (230,))
        cv.poly(ellipse(1.08 * rr, 1.08 * rr, 28) + [bx, 0], x, y, angle, fill=(255, 220, 220, 35))


def _paint_mooncake(cv: Canvas, look: Look, x, y, w, h, angle) -> None:
    """月饼: a golden-brown scalloped disc with an embossed flower pattern; sometimes cut open."""
    c1, c2, c3 = (jitter(cv.rng, c, 0.05) for c in look.colors)
    r = w / 2
    body = ellipse(r, r, 72, lambda t: 1 + 0.05 * np.abs(np.cos(6 * t)))
    cv.poly(body + [0.06 * r, 0.09 * r], x, y, angle, fill=(30, 15, 5, 120))
    cv.poly(body, x, y, angle, fill=c1, outline=c2, width=1.2)
    cv.poly(ellipse(0.72 * r, 0.72 * r, 48), x, y, angle, fill=shade(c1, 1.08),
            outline=c2, width=1.0)
    for k in range(8):
        a = math.pi * k / 4
        petal = ellipse(0.16 * r, 0.07 * r, 12)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        cv.poly(petal @ rot.T + [0.45 * r * math.cos(a), 0.45 * r * math.sin(a)], x, y, angle,
                fill=shade(c1, 0.8), outline=c2, width=0.6)
    cv.poly(rounded_rect(0.34 * r, 0.34 * r, 0.05 * r), x, y, angle, fill=shade(c1, 0.85),
            outline=c2, width=0.8)
    if cv.rng.random() < 0.4:  # cut open: a wedge of lotus paste with a salted yolk
        a0 = cv.rng.uniform(0, 2 * math.pi)
        t = np.linspace(a0, a0 + 1.3, 16)
        wedge = np.concatenate([[[0, 0]], np.stack([r * np.cos(t), r * np.sin(t)], axis=1)])
        cv.poly(wedge, x, y, angle, fill=(226, 186, 118), outline=c2, width=0.8)
        mid = a0 + 0.65
        cv.poly(ellipse(0.22 * r, 0.22 * r, 20) + [0.5 * r * math.cos(mid),
                0.5 * r * math.sin(mid)], x, y, angle, fill=c3)


def _paint_dumpling(cv: Canvas, look: Look, x, y, w, h, angle) -> None:
    """饺子: an opaque white half-moon with a pleated ridge along its curved edge."""
    c1, c2, c3 = (jitter(cv.rng, c, 0.03) for c in look.colors)
    t = np.linspace(math.pi, 2 * math.pi, 36)
    top = np.stack([0.5 * w * np.cos(t), 0.75 * h * np.sin(t) + 0.25 * h], axis=1)
    t2 = np.linspace(0, math.pi, 20)
    bottom = np.stack([0.5 * w * np.cos(t2), 0.18 * h * np.sin(t2) + 0.25 * h], axis=1)
    shape = np.concatenate([top, bottom])
    cv.poly(shape + [0.04 * w, 0.14 * h], x, y, angle, fill=(40, 30, 20, 130))
    cv.poly(shape, x, y, angle, fill=c3, outline=c2, width=1.2)
    cv.poly(shape * 0.8 + [0, -0.02 * h], x, y, angle, fill=c1)
    for k in range(1, 9):
        tt = math.pi + math.pi * k / 9
        p0 = [0.5 * w * math.cos(tt), 0.75 * h * math.sin(tt) + 0.25 * h]
        cv.line(np.array([p0, [p0[0] * 0.85, p0[1] * 0.75 + 0.06 * h]]), x, y, angle,
                fill=c2, width=0.9)
    cv.poly(ellipse(0.2 * w, 0.08 * h, 12) + [-0.1 * w, -0.15 * h], x, y, angle,
            fill=(255, 255, 255, 180))


def _paint_tofu(cv: Canvas, look: Look, x, y, w, h, angle) -> None:
    """麻婆豆腐 tofu cube: a soft white square with a lit face, half sunk in red sauce."""
    c1, c2, c3 = (jitter(cv.rng, c, 0.03) for c in look.colors)
    cube = rounded_rect(w, w, 0.12 * w)
    cv.poly(cube + [0.1 * w, 0.1 * w], x, y, angle, fill=shade(c3, 0.8, 150))
    cv.poly(cube, x, y, angle, fill=c1, outline=shade(c2, 0.9), width=0.8)
    cv.poly(np.array([[-0.42, -0.42], [0.3, -0.42], [-0.42, 0.3]]) * w, x, y, angle,
            fill=(255, 255, 250, 140))
    for _ in range(2):
        sx, sy = cv.rng.uniform(-0.5, 0.5, size=2) * w
        cv.poly(ellipse(0.22 * w, 0.14 * w, 12) + [sx, sy], x, y, angle, fill=c2 + (150,))


def _paint_pyramid(cv: Canvas, look: Look, x, y, w, h, angle) -> None:
    """粽子: a green leaf-wrapped triangle with leaf veins and a tied string."""
    c1, c2, c3 = (jitter(cv.rng, c, 0.06) for c in look.colors)
    tri = np.array([[0, -0.55 * w], [0.5 * w, 0.35 * w], [-0.5 * w, 0.35 * w]])
    cv.poly(tri + [0.06 * w, 0.08 * w], x, y, angle, fill=(20, 30, 10, 110))
    cv.poly(tri, x, y, angle, fill=c1, outline=c2, width=1.2)
    for k in range(1, 5):
        f = k / 5
        a, b = tri[0] * (1 - f) + tri[2] * f, tri[1] * (1 - f) + tri[2] * f
        cv.line(np.array([a, (a + b) / 2]), x, y, angle, fill=c2, width=0.8)
    cv.poly(np.array([[0, -0.55 * w], [0.5 * w, 0.35 * w], [0.05 * w, 0.35 * w]]), x, y, angle,
            fill=shade(c1, 1.25, 110))
    cv.line(np.array([[-0.3 * w, -0.1 * w], [0.32 * w, 0.05 * w]]), x, y, angle, fill=c3,
            width=1.4)
    cv.line(np.array([[-0.12 * w, 0.35 * w], [0.15 * w, -0.3 * w]]), x, y, angle, fill=c3,
            width=1.4)


PIECE_PAINTERS = {
    "roll": _paint_roll, "slice": _paint_slice, "crescent": _paint_crescent,
    "open_cup": _paint_open_cup, "tart": _paint_tart, "bun": _paint_bun,
    "pleated_bun": _paint_pleated_bun, "claw": _paint_claw, "skewer": _paint_skewer,
    "mooncake": _paint_mooncake, "dumpling": _paint_dumpling, "tofu": _paint_tofu,
    "pyramid": _paint_pyramid,
}
