"""Ask a model about every picture of a test split and score the answers.

    from labkit.eval.evaluate import evaluate
    report = evaluate("runs/food-merged", "data/food/test.json", "data/images")
    print(report.table())
    report.accuracy("held_back")      # share of held-back dishes (肠粉 ...) named correctly

Every sample's question is asked with `InternVLChatModel.chat` and greedy decoding, exactly as a
student would ask it; the expected dish is read from the sample's reference answer. An answer
counts as correct when `labkit.data.answers.answer_dish` finds the right dish in it, and as being in
sentence form when it reads exactly "图中的菜是X。" (after "B，" for a multiple-choice question),
as `labkit.data.answers.expected_form` decides.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

@dataclass
class Answer:
    image: str
    question: str
    expected: str  # the dish the picture shows
    answer: str  # what the model said
    named: str | None  # the dish named in the answer, if any

    @property
    def correct(self) -> bool:
        return self.named == self.expected

    @property
    def sentence_form(self) -> bool:
        from labkit.data.answers import expected_form

        return expected_form(self.answer)


@dataclass
class Report:
    """Answers of one model on one annotation file, with per-dish and per-group figures."""

    model_dir: str
    annotation: str
    answers: list = field(default_factory=list)
    seconds: float = 0.0

    def group(self, name: str) -> list:
        """Answers for ``"all"``, ``"known"`` (in the base model's data) or ``"held_back"`` dishes."""
        from labkit.data.dishes import is_held_back

        if name == "all":
            return list(self.answers)
        want = name == "held_back"
        if name not in ("known", "held_back"):
            raise ValueError(f"group {name!r}: use 'all', 'known' or 'held_back'.")
        return [a for a in self.answers if is_held_back(a.expected) == want]

    def accuracy(self, group: str = "all") -> float:
        answers = self.group(group)
        return sum(a.correct for a in answers) / len(answers) if answers else float("nan")

    def sentence_rate(self, group: str = "all") -> float:
        answers = self.group(group)
        return sum(a.sentence_form for a in answers) / len(answers) if answers else float("nan")

    def per_dish(self) -> dict:
        """``{dish: (correct, total)}`` in the order of the dish table."""
        from labkit.data.dishes import dish_names

        total = Counter(a.expected for a in self.answers)
        right = Counter(a.expected for a in self.answers if a.correct)
        return {name: (right[name], total[name]) for name in dish_names() if total[name]}

    def confusions(self, dish: str) -> Counter:
        """What the model named when the picture showed ``dish``."""
        return Counter(a.named or f"(no dish: {a.answer[:20]})" for a in self.answers if a.expected == dish)

    def table(self) -> str:
        from labkit.data.dishes import is_held_back

        lines = [f"{'dish':<8} {'held back':>9} {'correct':>8} {'share':>6}"]
        for name, (right, total) in self.per_dish().items():
            lines.append(f"{name:<8} {'yes' if is_held_back(name) else '':>9} {right:>4}/{total:<3} {right / total:>6.0%}")
        lines.append(f"known dishes {self.accuracy('known'):.0%}, held-back dishes {self.accuracy('held_back'):.0%}, "
                     f"sentence form {self.sentence_rate():.0%} ({len(self.answers)} answers, {self.seconds:.0f} s)")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "model_dir": self.model_dir, "annotation": self.annotation, "seconds": self.seconds,
            "accuracy": {g: self.accuracy(g) for g in ("all", "known", "held_back")},
            "sentence_rate": self.sentence_rate(),
            "per_dish": {k: list(v) for k, v in self.per_dish().items()},
            "answers": [dict(image=a.image, question=a.question, expected=a.expected, answer=a.answer, named=a.named)
                        for a in self.answers],
        }

    @classmethod
    def from_json(cls, data: dict, reread: bool = True) -> "Report":
        """The `Report` that `to_json` saved, rebuilt from its raw answers (the summaries are ignored).

        ``reread``: find the named dish in each saved answer text again (``answer_dish``) instead of
        trusting the saved ``named``, so every figure follows from what the model said.
        """
        from labkit.data.answers import answer_dish

        answers = [Answer(a["image"], a["question"], a["expected"], a["answer"],
                          answer_dish(a["answer"]) if reread else a.get("named")) for a in data["answers"]]
        return cls(model_dir=data.get("model_dir", ""), annotation=data.get("annotation", ""), answers=answers,
                   seconds=data.get("seconds", 0.0))


def paired(first: Report, second: Report, dish: str | None = None) -> list:
    """``(answer of first, answer of second)`` for the same picture and question, in order.

    ``dish`` keeps only pictures of that dish. Used to show what a fine-tune changed.
    """
    by_key = {(a.image, a.question): a for a in second.answers}
    return [(a, by_key[(a.image, a.question)]) for a in first.answers
            if (a.image, a.question) in by_key and (dish is None or a.expected == dish)]


def inside(folder, relative) -> Path:
    """``folder / relative``, refusing a path that climbs out of ``folder`` (``../``, absolute)."""
    root = Path(folder).resolve()
    path = (root / relative).resolve()
    if root != path and root not in path.parents:
        raise ValueError(f"image path {relative!r} points outside the image folder {root}; fix the annotation.")
    return path


def ask(model, tokenizer, image_path, question, max_new_tokens=16):
    """One greedy answer about one picture, tiled the way the model's config says."""
    from labkit.tiling import tiling_from_config

    tiling = tiling_from_config(model.config.to_dict())
    pixels = tiling.load(image_path).to(model.dtype)
    config = dict(max_new_tokens=max_new_tokens, do_sample=False)
    with torch.inference_mode():
        return model.chat(tokenizer, pixels, question, config)


def evaluate(model_dir, annotation, image_folder, max_new_tokens=16, limit=None, model=None, server="") -> Report:
    """Answer every question of ``annotation`` with the model in ``model_dir``; return a `Report`.

    ``model`` may be an already loaded ``(model, tokenizer)`` pair to skip loading. ``server``, the
    address of ``labkit deploy`` or ``labkit serve``, has the model served there answer instead
    (greedy, the same prompt). The annotation file is validated (``labkit.data.validate``) before
    the model is loaded.
    """
    import time

    from labkit.checkpoints.folder import load_checkpoint
    from labkit.data.answers import answer_dish
    from labkit.data.build import load_samples
    from labkit.data.validate import validate

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit={limit!r}: give a whole number of samples >= 1, or None for all of them "
                         "(a negative limit would silently leave out the last samples).")
    # The cheap checks first: the file and its pictures, then every reference answer, then the model.
    validate(annotation, image_folder).raise_if_bad()
    samples = load_samples(annotation)[:limit]
    for sample in samples:
        if sample.dish is None:
            raise ValueError(f"{annotation}: sample {sample.id}: the reference answer {sample.answer!r} names no dish "
                             "of the dish table (labkit/data/dishes.py); fix the answer or leave the sample out.")
    if server:
        from labkit.chat import Sampling, make_engine

        engine, greedy = make_engine(model_dir, server=server), Sampling(max_new_tokens=max_new_tokens)

        def answer_of(image, question):
            return engine.ask(question, image=image, settings=greedy)
    else:
        model, tokenizer = model if model is not None else load_checkpoint(model_dir)

        def answer_of(image, question):
            return ask(model, tokenizer, image, question, max_new_tokens)
    started = time.monotonic()
    report = Report(model_dir=str(model_dir), annotation=str(annotation))
    for sample in samples:
        answer = answer_of(inside(image_folder, sample.image), sample.question)
        report.answers.append(Answer(sample.image, sample.question, sample.dish, answer, answer_dish(answer)))
    report.seconds = round(time.monotonic() - started, 1)
    return report
