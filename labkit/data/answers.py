"""The course's one answer form, and reading a model's answer back.

Every reference answer in the data sets is one sentence: "图中的菜是肠粉。", or, for a
multiple-choice question, the option letter first: "B，图中的菜是肠粉。". `answer_sentence` writes
it (labkit.data.build); the other functions read any text a model produced:

* `answer_dish` - which dish it names (how evaluation scores an answer);
* `answer_choice` - which option letter it starts with;
* `expected_form` - whether it is exactly the course's sentence (what fine-tuning teaches).
"""

from __future__ import annotations

import re

from labkit.data.dishes import ANSWER_PREFIX, dish_names

OPTION_LETTERS = "ABCD"  # the options of a multiple-choice question


def answer_sentence(name: str, letter: str | None = None) -> str:
    """The one answer form: "图中的菜是肠粉。", or "B，图中的菜是肠粉。" for a multiple choice."""
    sentence = f"{ANSWER_PREFIX}{name}。"
    return sentence if letter is None else f"{letter}，{sentence}"


def _name_pattern() -> re.Pattern:
    """Dish names, longest first, so that 叉烧包 is found before 叉烧."""
    names = sorted(dish_names(), key=len, reverse=True)
    return re.compile("|".join(re.escape(name) for name in names))


_NAMES = _name_pattern()
_FORM = re.compile(rf"^(?:[{OPTION_LETTERS}]，)?{ANSWER_PREFIX}([^，。,.\s]+)。$")
_CHOICE = re.compile(r"^\s*[（(]?([A-H])(?:[）)]|[，,.。:：\s]|$)")


def answer_dish(text: str) -> str | None:
    """The dish a model's answer names, or None when it names none or several different ones.

    "B，图中的菜是肠粉。" -> "肠粉"; "这是叉烧包" -> "叉烧包" (not 叉烧); "我不知道" -> None.
    When the answer uses the sentence form, the name right after "图中的菜是" wins.
    """
    if not isinstance(text, str):
        return None
    at = text.find(ANSWER_PREFIX)
    if at >= 0:
        found = _NAMES.match(text, at + len(ANSWER_PREFIX))
        if found:
            return found.group(0)
    named = set(_NAMES.findall(text))
    return named.pop() if len(named) == 1 else None


def answer_choice(text: str) -> str | None:
    """The option letter a multiple-choice answer starts with ("B，图中的菜是肠粉。" -> "B")."""
    if not isinstance(text, str):
        return None
    found = _CHOICE.match(text)
    return found.group(1) if found else None


def expected_form(text: str) -> bool:
    """True when `text` is exactly "图中的菜是<名>。", optionally led by "A，" ... "D，"."""
    return isinstance(text, str) and _FORM.match(text.strip()) is not None
