"""How much memory a card, or the slice of one you were given, leaves for training.

``parse_budget`` reads "24GB", "12 GiB", "H200", "RTX 4090", "A100-40GB" and a share of a card
after ``x`` ("A100 80GB x 30%" = 24 GiB) and refuses anything that is not a positive, finite size.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

#: Total memory each card reports (nvidia-smi, MiB / 1024, rounded), in GiB. Cards sold in
#: several sizes map size -> GiB; GPU makers' "80GB" means 80 GiB.
KNOWN_GPUS: dict[str, float | dict[int, float]] = {
    "H200": 140.0,
    "H100": {80: 79.6},
    "A100": {40: 40.0, 80: 80.0},
    "A800": {40: 40.0, 80: 80.0},
    "L40S": 45.0,
    "A6000": 48.0,
    "A10G": 22.5,
    "A10": 22.5,
    "L4": 22.5,
    "T4": 15.0,
    "V100": {16: 16.0, 32: 32.0},
    "RTX4090": 24.0,
    "RTX3090": 24.0,
}

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(GIB|GB|G|MIB|MB|M)(?![A-Z])", re.IGNORECASE)
_NOT_FINITE = re.compile(r"(?<![A-Z])(?:NAN|INFINITY|INF)(?=\s*(?:GIB|GB|G|MIB|MB|M|%)?(?:\s|$|[x×*]))",
                         re.IGNORECASE)
_NEGATIVE = re.compile(r"(?:^|[\sx×*(])-\s*\.?\d", re.IGNORECASE)  # not the hyphen of "A100-40GB"
_FRACTION = re.compile(r"(?:^|\s|(?<=[bB]))[x×*]\s*(\d+(?:\.\d+)?)\s*(%?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    """Usable memory of one GPU (or of the slice of it you were given)."""

    gib: float
    text: str

    def __str__(self) -> str:
        return f"{self.gib:.1f} GiB ({self.text})"


def _known_names() -> str:
    names = []
    for name, size in KNOWN_GPUS.items():
        names += [f"{name}-{gb}GB" for gb in size] if isinstance(size, dict) else [name]
    return ", ".join(names)


def parse_budget(budget) -> Budget:
    """Turn "A100 80GB x 30%", "24GB", "H200", "RTX 4090" or "A100-40GB" into GiB.

    A number is taken as GiB. ``x 30%`` (or ``x 0.3``) means you were given that share of
    the card, as on a sliced (vGPU / MIG) course machine.
    """
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        if not math.isfinite(budget) or budget <= 0:
            raise ValueError(f"budget must be a positive, finite number of GiB (e.g. 24), got {budget!r}.")
        return Budget(float(budget), f"{budget} GiB")
    if not isinstance(budget, str) or not budget.strip():
        raise ValueError(f"budget must be text such as '24GB' or 'A100 80GB x 30%', got {budget!r}.")
    text = budget.strip()
    if _NOT_FINITE.search(text):
        raise ValueError(f"budget {text!r} is not a finite size: write a positive memory size such as '24GB', "
                         "a card name, or a share such as 'A100 80GB x 30%'.")
    if _NEGATIVE.search(text):
        raise ValueError(f"budget {text!r} holds a negative number: memory sizes and shares are positive, "
                         "e.g. '24GB' or 'A100 80GB x 30%'.")
    rest, share = text, 1.0
    m = _FRACTION.search(rest)
    if m:
        value = float(m.group(1))
        share = value / 100 if m.group(2) else value
        if not 0 < share <= 1:
            raise ValueError(
                f"the share after 'x' in {text!r} must be a part of one card, in (0, 100] % (such as 30% or 0.3), "
                f"got {m.group(1)}{m.group(2)}. Give the number of GPUs as gpus instead."
            )
        rest = rest[: m.start()].strip()
    size = None
    m = _SIZE.search(rest)
    if m:
        size = float(m.group(1)) / (1024 if m.group(2).upper().startswith("M") else 1)
        rest = (rest[: m.start()] + rest[m.end():]).strip()
    name = re.sub(r"[^A-Z0-9]", "", rest.upper())
    name = name.removeprefix("NVIDIA").removeprefix("GEFORCE")
    name = {"RTXA6000": "A6000"}.get(name, name)
    if not name:
        if size is None:
            raise ValueError(f"no memory size in {text!r}: write e.g. '24GB' or a card name.")
        gib = size
    elif name not in KNOWN_GPUS:
        raise ValueError(
            f"unknown GPU {rest!r} in {text!r}. Known cards: {_known_names()}; "
            "or give the memory itself, e.g. '24GB'."
        )
    else:
        known = KNOWN_GPUS[name]
        if isinstance(known, dict):
            if size is None or int(size) not in known:
                sizes = " or ".join(f"'{name} {gb}GB'" for gb in known)
                raise ValueError(f"{name} comes in several sizes: write {sizes}.")
            gib = known[int(size)]
        else:
            gib = known if size is None else size
    if not math.isfinite(gib * share) or gib * share <= 0:
        raise ValueError(f"budget {text!r} comes to {gib * share:g} GiB; give a positive memory size such as "
                         "'24GB' or 'A100 80GB x 30%'.")
    return Budget(gib * share, text)
