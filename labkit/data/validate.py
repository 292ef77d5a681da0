"""Check an annotation file and its images before training: nothing is silently skipped.

XTuner's InternVL dataset replaces a record whose image cannot be opened with a random other
record, printing one line in a long log. A broken picture therefore does not stop training - it
quietly changes the data. labkit runs this validator before every training run, and you can run
it yourself:

    labkit validate data/food/train.json --image-folder data/images

What is checked, for every record (reported with its number and the file involved):

* the annotation file parses: a JSON list (`.json`) or one JSON object per line (`.jsonl`);
  a syntax error is reported with its line and column;
* the record has an `image` and `conversations`; the turns alternate human, gpt, human, gpt ...,
  starting with human and ending with gpt; every `from` is "human" or "gpt";
* exactly one `<image>` tag, in a human turn;
* the image path is relative, has no `..`, and (after following symlinks) stays inside the
  image folder;
* the image exists, is a non-empty file, decodes fully (PIL verify, then load) and has at most
  `max_pixels` pixels.

`validate(...)` returns a `ValidationReport`; `report.raise_if_bad()` raises `DataValidationError`
listing the problems. The command line exits with status 1 when there is any problem.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from PIL import Image, ImageFile

IMAGE_TAG = "<image>"
ROLES = ("human", "gpt")
DEFAULT_MAX_PIXELS = 40_000_000  # a 40-megapixel photo is already far more than any tile needs
SHOWN_PROBLEMS = 20


class AnnotationFormatError(ValueError):
    """The annotation file itself cannot be read (bad JSON, wrong top-level type, bad suffix)."""


class DataValidationError(ValueError):
    """Raised by `ValidationReport.raise_if_bad()` when the data has problems."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong: which record (0-based index, None for the whole file), which file, what."""

    record: int | None
    file: str
    message: str

    def __str__(self) -> str:
        where = "whole file" if self.record is None else f"record {self.record + 1} (data[{self.record}])"
        return f"{where}: {self.file}: {self.message}"


@dataclass
class ValidationReport:
    """The outcome of `validate`: how many records were read and every problem found."""

    annotation: Path
    image_folder: Path
    records: int = 0
    images_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def summary(self, limit: int = SHOWN_PROBLEMS) -> str:
        """A readable text: counts first, then up to `limit` problems."""
        head = (f"{self.annotation}: {self.records} records, {self.images_checked} images checked "
                f"under {self.image_folder}")
        if self.ok:
            return head + ": OK"
        lines = [head + f": {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        lines.append("Fix the records or images above (or rebuild the data with "
                     "`labkit data build`), then validate again.")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def raise_if_bad(self) -> "ValidationReport":
        """Raise DataValidationError describing the problems; return self when all is well."""
        if not self.ok:
            raise DataValidationError(self.summary())
        return self


# ----------------------------------------------------------------------------- reading


def read_annotations(path: str | os.PathLike) -> list:
    """Read a `.json` list or a `.jsonl` file of records, as XTuner does.

    Raises AnnotationFormatError naming the file, line and column when the JSON is broken.
    """
    path = Path(path)
    if path.suffix not in (".json", ".jsonl"):
        raise AnnotationFormatError(
            f"{path}: XTuner reads only .json (a list) or .jsonl (one record per line) files; "
            "rename the file or convert it.")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AnnotationFormatError(f"{path}: no such annotation file; check the path.") from None
    except UnicodeDecodeError as err:
        raise AnnotationFormatError(f"{path}: not UTF-8 text ({err}); save it as UTF-8.") from None
    if text.startswith("\ufeff"):
        raise AnnotationFormatError(
            f"{path}: starts with a byte-order mark (BOM, as Windows editors save 'UTF-8 with BOM'), which "
            "XTuner's JSON reader refuses; save the file as plain UTF-8 (without BOM).")
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise AnnotationFormatError(
                        f"{path}: line {number}, column {err.colno}: {err.msg}. Each line of a "
                        ".jsonl file must be one complete JSON object.") from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise AnnotationFormatError(
            f"{path}: line {err.lineno}, column {err.colno}: {err.msg}. Open the file at that "
            "spot and fix the JSON (a missing comma or quote is the usual cause).") from None
    if not isinstance(data, list):
        raise AnnotationFormatError(
            f"{path}: the top level must be a JSON list of records, found {type(data).__name__}.")
    return data


# ----------------------------------------------------------------------------- checks


def check_conversation(record) -> list[str]:
    """Problems with a record's structure and turns (an empty list when it is fine)."""
    if not isinstance(record, dict):
        return [f"a record must be a JSON object, found {type(record).__name__}"]
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        return ["missing or empty 'conversations' list"]
    problems = []
    tags = 0
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            problems.append(f"turn {k} must be an object with a string 'value'")
            continue
        role, expected = turn.get("from"), ROLES[k % 2]
        if role not in ROLES:
            problems.append(f"turn {k} has from={role!r}; it must be 'human' or 'gpt'")
        elif role != expected:
            problems.append(f"turn {k} is from {role!r} but {expected!r} was expected "
                            "(turns alternate human, gpt, ... starting with human)")
        count = turn["value"].count(IMAGE_TAG)
        if count and role != "human":
            problems.append(f"turn {k} (from {role!r}) contains {IMAGE_TAG}; only a human turn may")
        tags += count
    if turns and isinstance(turns[-1], dict) and turns[-1].get("from") == "human":
        problems.append("the last turn is from 'human': it has no answer to learn from")
    if tags != 1:
        problems.append(f"found {tags} {IMAGE_TAG} tags; each record needs exactly one")
    return problems


def image_path_of(record) -> tuple[str | None, str | None]:
    """The record's image path, or (None, problem). XTuner also accepts a one-item list."""
    if not isinstance(record, dict) or "image" not in record:
        return None, "missing 'image' (each record needs one picture)"
    image = record["image"]
    if isinstance(image, (list, tuple)):
        if len(image) != 1:
            return None, f"'image' lists {len(image)} files; labkit records carry exactly one"
        image = image[0]
    if not isinstance(image, str) or not image.strip():
        return None, f"'image' must be a non-empty path string, found {image!r}"
    return image, None


def check_image_path(rel: str, root: Path) -> tuple[Path | None, str | None]:
    """Resolve `rel` under `root`; refuse absolute paths, `..` and symlinks leading outside."""
    bad = sorted({f"U+{ord(c):04X}" for c in rel if ord(c) < 32 or ord(c) == 127})
    if bad:
        nul = " (a NUL byte)" if "\0" in rel else ""
        return None, (f"image path {rel!r} contains the control character(s) {', '.join(bad)}{nul}; no file can "
                      "be named so: fix the path in the annotation")
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or \
            PureWindowsPath(rel).drive:
        return None, f"image path {rel!r} is absolute; write it relative to the image folder"
    parts = PureWindowsPath(rel).parts  # splits on both / and \
    if ".." in parts:
        return None, f"image path {rel!r} contains '..'; it must stay inside the image folder"
    full = root / rel
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(full))
    if real != real_root and real_root not in real.parents:
        return None, (f"image path {rel!r} leads outside the image folder (to {real}) through a "
                      "symbolic link; copy the file into the folder instead")
    return full, None


def check_image_file(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """None when `path` is a readable picture within the pixel limit, else the problem."""
    if not path.exists():
        return "image file not found"
    if not path.is_file():
        return "image path is not a regular file"
    if path.stat().st_size == 0:
        return "image file is empty (0 bytes)"
    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # some libraries switch this on; a cut file must fail
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    return (f"image is {width}x{height} = {width * height} pixels, above the "
                            f"limit of {max_pixels}; shrink it (or raise --max-pixels)")
                img.verify()  # checks the file's structure without decoding all pixels
            with Image.open(path) as img:
                img.load()  # decodes every pixel: catches truncated or corrupt data
                img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return f"image is absurdly large (more than PIL's safety limit); above {max_pixels} pixels"
    except Exception as err:  # PIL raises many types for broken files; all mean "unreadable"
        return f"image cannot be decoded ({type(err).__name__}: {err})"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient
    return None


def validate(annotation: str | os.PathLike, image_folder: str | os.PathLike,
             max_pixels: int = DEFAULT_MAX_PIXELS, check_images: bool = True,
             records: list | None = None) -> ValidationReport:
    """Check an annotation file and the images it points to; return a ValidationReport.

    Nothing is raised for bad data - call `.raise_if_bad()` on the result for that. A missing
    image folder or unreadable annotation file is reported as a whole-file problem.
    ``records`` checks records not yet written (reported under the name ``annotation``), so a
    writer can validate before it publishes anything.
    """
    annotation, root = Path(annotation), Path(image_folder)
    report = ValidationReport(annotation, root)
    if not root.is_dir():
        report.problems.append(Problem(None, str(root), "image folder not found; pass the folder "
                                       "that the 'image' paths are relative to"))
        return report
    try:
        records = read_annotations(annotation) if records is None else records
    except AnnotationFormatError as err:
        report.problems.append(Problem(None, str(annotation), str(err)))
        return report
    report.records = len(records)
    if not records:
        report.problems.append(Problem(None, str(annotation), "the file holds no records"))
    verdicts: dict[Path, str | None] = {}
    for index, record in enumerate(records):
        for message in check_conversation(record):
            report.problems.append(Problem(index, str(annotation), message))
        rel, message = image_path_of(record)
        if message:
            report.problems.append(Problem(index, str(annotation), message))
            continue
        full, message = check_image_path(rel, root)
        if message:
            shown = rel if rel.isprintable() else ascii(rel)[1:-1]  # a NUL byte would garble the terminal
            report.problems.append(Problem(index, shown, message))
            continue
        if check_images:
            if full not in verdicts:
                verdicts[full] = check_image_file(full, max_pixels)
            if verdicts[full]:
                report.problems.append(Problem(index, str(full), verdicts[full]))
    report.images_checked = len(verdicts)
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: validate one or more annotation files; exit 1 if anything is wrong."""
    parser = argparse.ArgumentParser(
        prog="labkit validate",
        description="Check an XTuner/InternVL annotation file and its images before training.")
    parser.add_argument("annotations", nargs="+", help="annotation .json or .jsonl file(s)")
    parser.add_argument("--image-folder", required=True,
                        help="folder the records' 'image' paths are relative to")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"largest allowed width*height (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--all", action="store_true", help="list every problem, not the first 20")
    args = parser.parse_args(argv)
    bad = False
    for annotation in args.annotations:
        report = validate(annotation, args.image_folder, max_pixels=args.max_pixels)
        print(report.summary(limit=len(report.problems) if args.all else SHOWN_PROBLEMS))
        bad = bad or not report.ok
    return 1 if bad else 0
