"""The `labkit` command: one entry point, a subcommand per course step.

    labkit                         # list the commands
    labkit validate --help         # one command's own options
    labkit data build data/        # run it

`python -m labkit` is the same command. Each subcommand is a module's `main(argv)`, named in
`COMMANDS` by its dotted path and imported only when that subcommand runs, so listing the
commands loads no torch, and a module that moves needs only its line here changed.
"""
from __future__ import annotations

import difflib
import importlib
import sys
from typing import NamedTuple

from labkit import __version__


class Command(NamedTuple):
    target: str  # "package.module:function"; the function takes argv and returns an exit code
    summary: str


# The main job first, then the course's steps in order: data, model, fine-tune, conversion, chat.
COMMANDS = {
    "run": Command("labkit.course.main:main",
                   "the main job: run the five notebooks headless and write the write-up (RUN/writeup/)"),
    "writeup": Command("labkit.course.report:main",
                       "write (again) a run folder's write-up: Chinese + English Markdown and HTML, figures, a zip"),
    "grade": Command("labkit.course.grade:main",
                     "the teacher's class table (CSV + HTML) from students' run folders or zipped write-ups"),
    "data": Command("labkit.data.build:main",
                    "build the food data sets (data build OUT) or a contact sheet of the dishes (data sheet PNG)"),
    "validate": Command("labkit.data.validate:main",
                        "check an annotation file and its pictures before training"),
    "foodieqa": Command("labkit.data.foodieqa:main",
                        "convert FoodieQA questions into an annotation file (evaluation only)"),
    "checkpoint": Command("labkit.checkpoints.folder:main",
                          "write a random-weight checkpoint folder (--tiny, --config) or check one (--check)"),
    "base-model": Command("labkit.course.base_model:main",
                          "build, check or refresh-code the tiny pretrained base model"),
    "configs": Command("labkit.train.xtuner_config:main",
                       "render, check or show the XTuner configs made from the presets"),
    "convert": Command("labkit.convert.pipeline:main",
                       "merge an XTuner .pth checkpoint into a safetensors model folder, with checks"),
    "publish": Command("labkit.convert.publish:main",
                       "a converted folder's model card, its check before an upload, the upload commands"),
    "chat": Command("labkit.chat.cli:main",
                    "ask a checkpoint one question, optionally about a picture"),
    "serve": Command("labkit.chat.server:main",
                     "serve a checkpoint through an OpenAI-compatible HTTP API"),
    "deploy": Command("labkit.chat.deploy:main",
                      "serve model folders with LMDeploy on a CUDA GPU (sets up its environment once)"),
    "demo": Command("labkit.chat.demo:main",
                    "chat with a checkpoint in the browser (gradio)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: labkit <command> [args]      (labkit {__version__}; python -m labkit is the same)",
             "",
             "commands:"]
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    lines += ["", "`labkit <command> --help` shows the options of one command."]
    return "\n".join(lines)


def resolve(name: str):
    """The `main` function behind a subcommand, imported now."""
    module_name, function_name = COMMANDS[name].target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        print(f"labkit {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" Did you mean `labkit {close[0]}`?" if close else ""
        print(f"labkit: unknown command '{name}'.{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    code = resolve(name)(rest)
    return 0 if code is None else code
