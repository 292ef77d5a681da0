"""Convert FoodieQA's single-image questions into labkit's annotation format - for evaluation.

FoodieQA (Li et al., 2024; huggingface.co/datasets/lyan62/FoodieQA, a gated data set you request
and download yourself) holds photos of Chinese dishes and multiple-choice questions about them.
Its licence is CC BY-NC-ND 4.0 and its terms say: research only, not commercial, and for
EVALUATION ONLY - not for training models. labkit follows that:

* every run prints the licence notice;
* an evaluation file is written freely;
* a training file is refused unless you pass `acknowledge_terms=True`
  (CLI `--i-have-permission-to-train`), stating that you have permission beyond the card's terms;
* keep converted files private: "ND" means no redistribution of derivatives.

The layout read (what the data set's README describes):

    FOODIE_ROOT/sivqa_tidy.json     a JSON list of questions
    FOODIE_ROOT/images/...          the photos

Each question has `question` (Chinese), `choices` (list of texts), `answer` (the index of the right
choice, sometimes as a string "2"), `question_type`, `question_id`, and `food_meta` with
`food_name` and `food_file` (the photo's path, relative to FOODIE_ROOT or to its images/ folder).

Each becomes one record, image paths relative to FOODIE_ROOT (use it as the image folder):

    human: "<image>\\n<question> A. ... B. ... C. ... D. ..."
    gpt:   "B，图中的菜是<food_name>。"

    labkit foodieqa FOODIE_ROOT OUT.json [--question-type food_name]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path, PurePosixPath

from labkit import fileio
from labkit.data.dishes import ANSWER_PREFIX
from labkit.data.validate import IMAGE_TAG, validate

QUESTIONS_FILE = "sivqa_tidy.json"
LETTERS = "ABCDEFGH"
LICENCE_NOTICE = (
    "FoodieQA licence: CC BY-NC-ND 4.0 (https://creativecommons.org/licenses/by-nc-nd/4.0/). "
    "Its data card allows research use only, no commercial use, and EVALUATION ONLY - do not "
    "train on it. Keep converted files private (no derivatives may be shared). "
    "Source: huggingface.co/datasets/lyan62/FoodieQA."
)


class LicenceError(PermissionError):
    """Raised when a training file is requested without acknowledging FoodieQA's terms."""


def print_licence(stream=None) -> None:
    """Print the FoodieQA licence notice (done on every conversion)."""
    print(LICENCE_NOTICE, file=stream or sys.stdout, flush=True)


def _find_image(root: Path, food_file: str) -> str | None:
    """The photo's path relative to `root`, trying `food_file` as given, then under images/."""
    rel = PurePosixPath(food_file.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts:
        return None
    for candidate in (rel, PurePosixPath("images") / rel):
        if (root / candidate).is_file():
            return candidate.as_posix()
    return None


def convert_record(item: dict, root: Path, index: int = 0) -> tuple[dict | None, str | None]:
    """One FoodieQA question (number `index` in the file) -> (record, None), or (None, why not)."""
    meta = item.get("food_meta") or {}
    name = meta.get("food_name") or item.get("food_name")
    choices = item.get("choices")
    question = item.get("question")
    if not isinstance(question, str) or not question.strip():
        return None, "no question text"
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
        return None, f"choices must be a list of 2..{len(LETTERS)} texts, found {choices!r}"
    try:
        answer = int(str(item.get("answer")).strip())
    except ValueError:
        return None, f"answer {item.get('answer')!r} is not a choice number"
    if not 0 <= answer < len(choices):
        return None, f"answer {answer} is outside the {len(choices)} choices"
    if not isinstance(name, str) or not name.strip():
        return None, "food_meta has no food_name"
    food_file = meta.get("food_file")
    image = _find_image(root, food_file) if isinstance(food_file, str) else None
    if image is None:
        return None, f"photo {food_file!r} not found under {root} or {root / 'images'}"
    options = " ".join(f"{LETTERS[k]}. {str(c).strip()}" for k, c in enumerate(choices))
    qid = item.get("question_id", item.get("qid"))
    qid = qid if qid is not None else index
    record = {
        "id": f"foodieqa-{qid}",
        "image": image,
        "conversations": [
            {"from": "human", "value": f"{IMAGE_TAG}\n{question.strip()} {options}"},
            {"from": "gpt", "value": f"{LETTERS[answer]}，{ANSWER_PREFIX}{name.strip()}。"},
        ],
        "question_type": item.get("question_type"),
    }
    return record, None


def read_questions(source: Path) -> list:
    """The questions file as a list; a ValueError naming the file for bad UTF-8, bad JSON or another type."""
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{source}: not UTF-8 text ({err}); download the data set file again.") from None
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: line {err.lineno}, column {err.colno}: {err.msg}; the file is not valid JSON "
                         "(cut off or edited?). Download the data set file again.") from None
    if not isinstance(items, list):
        raise ValueError(f"{source}: expected a JSON list of questions, found {type(items).__name__}")
    return items


def convert_foodieqa(foodie_root: str | os.PathLike, out_path: str | os.PathLike,
                     purpose: str = "eval", acknowledge_terms: bool = False,
                     question_types: list[str] | None = None, overwrite: bool = False,
                     check: bool = True) -> dict:
    """Convert FOODIE_ROOT/sivqa_tidy.json into an annotation file; return a summary dict.

    purpose: "eval" (allowed) or "train" (refused unless `acknowledge_terms=True`).
    question_types: keep only these `question_type` values (None keeps all).
    check: run labkit.data.validate on the records (images must decode) before anything is written.
    Returns {"out_path", "image_folder", "written", "skipped": [(index, reason), ...]}.
    """
    print_licence()
    if purpose not in ("eval", "train"):
        raise ValueError(f"purpose must be 'eval' or 'train', not {purpose!r}")
    if purpose == "train" and not acknowledge_terms:
        raise LicenceError(
            "refusing to write a TRAINING file from FoodieQA: its card (CC BY-NC-ND 4.0) allows "
            "evaluation only. Use purpose='eval', or pass acknowledge_terms=True "
            "(--i-have-permission-to-train) only if you hold permission beyond those terms.")
    root, out_path = Path(foodie_root), Path(out_path)
    source = root / QUESTIONS_FILE
    if not source.is_file():
        raise FileNotFoundError(
            f"{source} not found. FOODIE_ROOT must be the downloaded data set folder holding "
            f"{QUESTIONS_FILE} and images/.")
    if out_path.is_dir():
        raise IsADirectoryError(f"{out_path}: is a folder; name the annotation .json file to write.")
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} exists; pass overwrite=True (--overwrite) to replace it.")
    if out_path.suffix != ".json":
        raise ValueError(f"{out_path}: write a .json file (a JSON list), the format XTuner reads.")
    items = read_questions(source)
    records, skipped = [], []
    for index, item in enumerate(items):
        if question_types and isinstance(item, dict) and item.get("question_type") not in question_types:
            continue
        record, reason = convert_record(item, root, index) if isinstance(item, dict) else (None, "not an object")
        if record is None:
            skipped.append((index, reason))
        else:
            records.append(record)
    if not records:
        kept = f" of type {', '.join(question_types)}" if question_types else ""
        reasons = "; ".join(f"question {index}: {reason}" for index, reason in skipped[:5]) or "none matched"
        raise ValueError(
            f"{source}: none of its {len(items)} questions{kept} could be converted ({reasons}); nothing was "
            f"written to {out_path}. Check FOODIE_ROOT (the photos must be under it or its images/ folder) "
            "and --question-type.")
    if check:  # validate first, publish last: a failing check leaves the old file as it was
        validate(out_path, root, records=records).raise_if_bad()
    fileio.write_text(out_path, json.dumps(records, ensure_ascii=False, indent=1))
    return {"out_path": out_path, "image_folder": root, "purpose": purpose,
            "written": len(records), "skipped": skipped}


def main(argv: list[str] | None = None) -> int:
    """Command line wrapper around convert_foodieqa."""
    parser = argparse.ArgumentParser(prog="labkit foodieqa",
                                     description="Convert FoodieQA sivqa questions (evaluation only).")
    parser.add_argument("foodie_root", help="folder holding sivqa_tidy.json and images/")
    parser.add_argument("out", help="annotation .json to write")
    parser.add_argument("--purpose", choices=("eval", "train"), default="eval")
    parser.add_argument("--i-have-permission-to-train", dest="acknowledge", action="store_true",
                        help="needed for --purpose train: you hold permission beyond the card's terms")
    parser.add_argument("--question-type", action="append", dest="question_types",
                        help="keep only this question_type (repeatable)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        summary = convert_foodieqa(args.foodie_root, args.out, purpose=args.purpose,
                                   acknowledge_terms=args.acknowledge,
                                   question_types=args.question_types, overwrite=args.overwrite)
    except (LicenceError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
            ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {summary['written']} records to {summary['out_path']} "
          f"(image folder: {summary['image_folder']}); skipped {len(summary['skipped'])}")
    for index, reason in summary["skipped"][:20]:
        print(f"  skipped question {index}: {reason}")
    return 0
