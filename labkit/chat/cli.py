"""Ask an InternVL2 checkpoint one question from the command line::

    labkit chat models/tiny "这是什么菜？" --image dish.jpg --show-prompt
    labkit chat MODEL_DIR --lmdeploy-template t.json   # the template, for lmdeploy serve

The cheap checks (settings, question, picture) run before the model loads; bad input ends
with exit status 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from labkit.chat.inputs import ChatInputError, Sampling, check_question, read_image
from labkit.chat.prompt import lmdeploy_chat_template, resolve_template
from labkit.checkpoints.remote_code import FolderTemplates


def main(argv=None):
    parser = argparse.ArgumentParser(prog="labkit chat", description="Ask an InternVL2 checkpoint one question.")
    parser.add_argument("model_dir", help="an official-format checkpoint folder")
    parser.add_argument("question", nargs="?", default="请描述这张图片。")
    parser.add_argument("--image", help="a picture to ask about")
    parser.add_argument("--backend", default="auto", choices=["auto", "transformers", "lmdeploy"])
    parser.add_argument("--template", help="chat template of the model folder's own conversation.py (default: the one its config.json names)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=0.8)
    parser.add_argument("--show-prompt", action="store_true", help="print the exact prompt first")
    parser.add_argument("--lmdeploy-template", metavar="JSON",
                        help="only write the model's template as a JSON file for `lmdeploy serve api_server --chat-template`")
    args = parser.parse_args(argv)
    from labkit.chat.engine import make_engine
    from labkit.checkpoints.folder import CheckpointError, load_config

    try:
        if args.lmdeploy_template:
            folder = Path(args.model_dir)
            if not folder.is_dir():
                raise ChatInputError(f"{folder}: no such model folder (or not a folder); pass the checkpoint "
                                     "folder whose config.json names the template.")
            config = load_config(folder / "config.json")
            fields = lmdeploy_chat_template(args.template or config.get("template"), None, FolderTemplates(folder))
            _write_text(args.lmdeploy_template, json.dumps(fields, ensure_ascii=False, indent=2) + "\n")
            print(f"wrote {args.lmdeploy_template}")
            return 0
        # The cheap checks first: settings, question and picture, before the model loads (seconds).
        settings = Sampling(args.max_new_tokens, args.temperature, args.top_p)
        check_question(args.question)
        picture = read_image(args.image) if args.image else None
        kwargs = {"template": args.template} if args.template else {}
        if args.template:
            resolve_template(args.template)
        engine = make_engine(args.model_dir, args.backend, **kwargs)
        if args.show_prompt:
            print(engine.prompt(args.question, picture), "\n" + "-" * 40)
        for piece in engine.stream(args.question, picture, settings=settings):
            print(piece, end="", flush=True)
        print()
    except (ChatInputError, CheckpointError, ImportError) as err:  # ImportError: LMDeploy missing or broken
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _write_text(path, text):
    """Write atomically (labkit.fileio); refuse to replace an existing file."""
    from labkit import fileio
    path = Path(path)
    if path.exists():
        raise ChatInputError(f"{path} already exists; choose another name or delete it first.")
    try:
        fileio.write_text(path, text)
    except (IsADirectoryError, NotADirectoryError) as err:
        raise ChatInputError(str(err)) from None

