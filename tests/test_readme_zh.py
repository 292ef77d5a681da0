"""README.zh-CN.md says what README.md says: the same commands and the same figures.

The Chinese README is the course's first language and the English one its twin. They are kept in
step by this test, not by memory: every fenced code block is the same in both, in the same order,
and every measured figure (a number with its unit) appears as often in one as in the other.
"""
import re
from collections import Counter

from labkit.fileio import REPO_ROOT

ENGLISH = REPO_ROOT / "README.md"
CHINESE = REPO_ROOT / "README.zh-CN.md"

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
# A figure: a number and its unit, e.g. "167 s", "0 %", "20,743 tokens/s", "9.9 GiB", "2.16x".
FIGURE = re.compile(r"(?<![\w.])(\d[\d,]*(?:\.\d+)?)\s?(%|ms|s|GiB|GB|MB|tokens/s|tok/s|x)(?![\w/])")


def code_blocks(path):
    return FENCE.findall(path.read_text(encoding="utf-8"))


def figures(path):
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return Counter(f"{number.replace(',', '')} {unit}" for number, unit in FIGURE.findall(text))


def test_the_chinese_readme_exists_and_is_chinese():
    text = CHINESE.read_text(encoding="utf-8")
    han = sum("\u4e00" <= ch <= "\u9fff" for ch in text)
    assert han > 500, "README.zh-CN.md should be written in Chinese"


def test_both_readmes_show_the_same_commands():
    english, chinese = code_blocks(ENGLISH), code_blocks(CHINESE)
    assert len(english) == len(chinese), f"README.md has {len(english)} code blocks, README.zh-CN.md {len(chinese)}"
    for i, (a, b) in enumerate(zip(english, chinese), 1):
        commands_a = [line.split("#")[0].rstrip() for line in a.splitlines()]
        commands_b = [line.split("#")[0].rstrip() for line in b.splitlines()]
        assert commands_a == commands_b, f"code block {i} differs (comments may differ, commands may not)"


def test_both_readmes_give_the_same_figures():
    english, chinese = figures(ENGLISH), figures(CHINESE)
    only_english, only_chinese = english - chinese, chinese - english
    assert not only_english and not only_chinese, (
        f"figures only in README.md: {sorted(only_english)}; only in README.zh-CN.md: {sorted(only_chinese)}")


def test_the_figure_pattern_sees_figures():
    sample = "167 s, 0 % → 100 %, 20,743 tokens/s in 9.9 GiB (2.16x), 25 ms"
    found = Counter(f"{n.replace(',', '')} {u}" for n, u in FIGURE.findall(sample))
    assert found == Counter(["167 s", "0 %", "100 %", "20743 tokens/s", "9.9 GiB", "2.16 x", "25 ms"])
