"""Does a plan fit a card, and which batch size would: ``fits`` and ``recommend``."""

from __future__ import annotations

from dataclasses import dataclass

from labkit.train.plan.budget import Budget, parse_budget
from labkit.train.plan.estimate import Plan, _whole, estimate, settings_knobs
from labkit.train.plan.shape import read_model_shape
from labkit.train.settings import Settings

SAFETY_MARGIN = 0.10  # fits() keeps 10 % of the budget free for fragmentation and other processes


@dataclass(frozen=True)
class Verdict:
    """Whether a plan fits a budget after keeping ``margin`` of it free."""

    fits: bool
    need_gib: float
    budget: Budget
    margin: float

    @property
    def usable_gib(self) -> float:
        return self.budget.gib * (1 - self.margin)

    def __bool__(self) -> bool:
        return self.fits

    @property
    def detail(self) -> str:
        return (
            f"needs {self.need_gib:.1f} GiB of {self.usable_gib:.1f} GiB usable "
            f"({self.budget}, {self.margin:.0%} kept free)"
        )

    def __str__(self) -> str:
        return f"{'fits' if self.fits else 'does not fit'}: {self.detail}"


def fits(plan: Plan, budget, margin: float = SAFETY_MARGIN) -> Verdict:
    """Does ``plan`` fit ``budget`` (text, GiB or ``Budget``) with ``margin`` kept free?"""
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be between 0 and 1 (e.g. 0.1 for 10 %), got {margin!r}.")
    b = parse_budget(budget)
    return Verdict(plan.total <= b.gib * (1 - margin), plan.total, b, margin)


@dataclass(frozen=True)
class Recommendation:
    """The largest per-GPU batch that fits and the accumulation that keeps the effective batch."""

    fits: bool
    batch_size: int | None
    grad_accum: int | None  # Settings' accumulative_counts
    gpus: int
    effective_batch: int
    plan: Plan  # at the recommended batch, or at batch 1 when nothing fits
    verdict: Verdict
    suggestions: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.fits:
            return (
                f"batch_size {self.batch_size} x grad_accum {self.grad_accum} x "
                f"{self.gpus} GPU(s) = effective batch {self.effective_batch}; {self.verdict}"
            )
        lines = [f"even batch 1 does not fit: {self.verdict.detail}", "try:"]
        return "\n".join(lines + [f"  - {s}" for s in self.suggestions])


def _suggestions(config, budget: Budget, margin: float, knobs: dict) -> list[str]:
    """Changes that shrink a batch-1 plan, each with its predicted peak."""
    base = dict(knobs, batch_size=1)
    tries = []
    if not base.get("lean_logits", False):
        tries.append(("lean_logits=True (logits only at answer tokens)", dict(lean_logits=True)))
    if not base.get("gradient_checkpointing", True):
        tries.append(("gradient_checkpointing=True", dict(gradient_checkpointing=True)))
    if base.get("method", "lora") != "qlora":
        tries.append(("method='qlora' (4-bit language model)", dict(method="qlora")))
    gpus = max(2, base.get("gpus", 1))
    tries.append((f"zero_stage=3 on {gpus} GPUs", dict(zero_stage=3, gpus=gpus)))
    tries.append(("all of the above", {k: v for _, kv in tries for k, v in kv.items()}))
    out = []
    for text, change in tries:
        v = fits(estimate(config, **{**base, **change}), budget, margin)
        out.append(f"{text}: {v.need_gib:.1f} GiB, {'fits' if v else 'still too big'}")
    shape = read_model_shape(config)
    current = base.get("tiles") or shape.max_tiles
    for tiles in range(current - 1, 0, -1):
        if shape.use_thumbnail and tiles == 2:
            continue  # with a thumbnail, an image is 1 tile or n >= 2 tiles + 1 thumbnail
        if fits(estimate(config, **{**base, "tiles": tiles}), budget, margin):
            patches = tiles - 1 if shape.use_thumbnail and tiles > 1 else tiles
            out.append(f"tiles={tiles} (max_dynamic_patch {patches}): fits")
            break
    else:
        out.append("fewer tiles alone does not make it fit")
    return out


def recommend(config, budget, settings: Settings | None = None, *, effective_batch: int | None = None,
              margin: float = SAFETY_MARGIN, **knobs) -> Recommendation:
    """Pick the largest per-GPU batch that fits and the gradient accumulation for the rest.

    ``settings`` and ``knobs`` are read as in ``estimate``, except ``batch_size``, which is what
    this chooses. The effective batch is batch_size * grad_accum * gpus (default: that of
    ``settings``, or 8); the batch is chosen among the divisors of effective_batch / gpus so the
    product is exact. When even batch 1 does not fit, the answer lists changes that would make it fit.
    """
    if "batch_size" in knobs:
        raise ValueError("recommend() chooses batch_size itself: leave it out.")
    if settings is not None:
        if effective_batch is None:
            effective_batch = settings.batch_size * settings.accumulative_counts * settings.gpus
        knobs = {k: v for k, v in {**settings_knobs(settings), **knobs}.items() if k != "batch_size"}
    effective_batch = 8 if effective_batch is None else effective_batch
    _whole("effective_batch", effective_batch, 1)
    gpus = knobs.get("gpus", 1)
    _whole("gpus", gpus, 1)
    if effective_batch % gpus:
        raise ValueError(
            f"effective_batch {effective_batch} cannot be split evenly over {gpus} GPUs: "
            "pick a multiple of gpus."
        )
    b = parse_budget(budget)
    per_gpu = effective_batch // gpus
    for batch in sorted((d for d in range(1, per_gpu + 1) if per_gpu % d == 0), reverse=True):
        p = estimate(config, batch_size=batch, **knobs)
        v = fits(p, b, margin)
        if v:
            return Recommendation(True, batch, per_gpu // batch, gpus, effective_batch, p, v)
    return Recommendation(False, None, None, gpus, effective_batch, p, v,
                          tuple(_suggestions(config, b, margin, knobs)))
