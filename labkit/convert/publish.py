"""A converted folder ready to publish: its model card, the check before an upload, the upload commands.

The camp's best students upload their tuned model to a model hub, with "InternVL" in its name.
Three steps, none of which needs the network (the upload itself is the student's):

* ``write_card(folder, run_dir=None)`` - the folder's ``README.md``: the Hugging Face hub's YAML
  metadata (``huggingface_hub.ModelCardData``), then in Chinese (English terms beside) the
  training settings read from the XTuner config, the evaluation table when the run folder holds
  ``comparison.json``, how to load the model, and a short English section. Also a ``.gitattributes``
  with git-lfs patterns when the folder has none. `labkit.convert.pipeline.convert` calls it, so
  every converted folder has a card; run it again with the run folder to add the evaluation.
* ``check_folder(folder, repo_id=None)`` - is everything an upload needs there: weights (every
  shard the index names), the remote code ``auto_map`` names, the tokenizer, ``config.json``,
  ``generation_config.json``, the card and its metadata, lfs patterns for the large files, no file
  over the hub's single-file limit, a repo name with "InternVL" in it. Each finding names the file
  and what to do.
* ``upload_commands(folder, repo_id)`` - the exact commands for the Hugging Face hub (``hf upload``,
  huggingface_hub 0.36.0 as pinned) and ModelScope (``modelscope upload``, or git + git-lfs).

    labkit publish card runs/2025-01-01/tuned-model --run runs/2025-01-01
    labkit publish check runs/2025-01-01/tuned-model --name alice/InternVL2-2B-food-lora
    labkit publish commands runs/2025-01-01/tuned-model --name alice/InternVL2-2B-food-lora
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from labkit import fileio
from labkit.convert.card import (  # noqa: F401  (write_card and its helpers are reachable here too)
    ATTRIBUTES_NAME, CARD_NAME, HF_USER, HUB_FILE_LIMIT, LFS_PATTERNS, LFS_THRESHOLD, LICENSE, MS_USER,
    NAME_RULE, PIPELINE_TAG, REQUIRED_METADATA, PublishError, _lfs_covered, _read_json, hub_base_model,
    suggest_repo_name, write_card, write_gitattributes,
)

# == 2. The check before an upload ==============================================================
@dataclass
class Finding:
    level: str  # "error" (the upload would be broken) or "warning"
    path: str  # the file (or folder) it is about
    message: str  # what is wrong and what to do


@dataclass
class PublishCheck:
    folder: Path
    repo_id: str
    findings: list = field(default_factory=list)

    @property
    def ok(self):
        return not any(f.level == "error" for f in self.findings)

    def add(self, level, path, message):
        self.findings.append(Finding(level, str(path), message))

    def summary(self):
        lines = [f"{f.level:<7} {f.path}: {f.message}" for f in self.findings]
        errors = sum(f.level == "error" for f in self.findings)
        verdict = (f"{self.folder}: ready to upload as {self.repo_id}" if self.ok
                   else f"{self.folder}: not ready to upload ({errors} error(s))")
        return "\n".join(lines + [verdict])




def _lfs_patterns(path):
    """The patterns a .gitattributes file sends through git-lfs (``filter=lfs``)."""
    patterns = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if parts and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def _check_json(check, path, what, fix):
    if not path.is_file():
        check.add("error", path, f"missing; the folder needs its {what}. {fix}")
        return None
    try:
        return fileio.read_config(path)
    except fileio.ConfigError as err:
        check.add("error", path, f"{err}")
        return None


def _check_weights(check, folder):
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = _check_json(check, index, "weight index", "Convert again.")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            if data is not None:
                check.add("error", index, "has no 'weight_map' (tensor name -> shard); convert again.")
            return False
        named = set(map(str, weight_map.values()))
        for shard in sorted(named):
            if not (folder / shard).is_file():
                check.add("error", folder / shard, "missing, but model.safetensors.index.json names it; copy it "
                                                   "from where the folder was converted, or convert again.")
        for stray in sorted(p.name for p in folder.glob("*.safetensors") if p.name not in named):
            check.add("warning", folder / stray, "not named by model.safetensors.index.json, so nothing loads it; "
                                                 "delete it before uploading.")
        ok = all((folder / shard).is_file() for shard in named)
    elif (folder / "model.safetensors").is_file():
        ok = True
    else:
        bins = sorted(p.name for p in folder.glob("*.bin"))
        hint = (f" It holds {', '.join(bins)}: convert to safetensors (labkit convert writes them)." if bins
                else " Convert the checkpoint (labkit convert CONFIG PTH OUT).")
        check.add("error", folder / "model.safetensors", "missing (and no model.safetensors.index.json)." + hint)
        return False
    return ok


def _code_files(config):
    """The python files an ``auto_map`` names (``module.Class`` or ``[module.Class, None]`` values)."""
    names = set()
    for value in (config.get("auto_map") or {}).values():
        for entry in value if isinstance(value, list) else [value]:
            if isinstance(entry, str) and "." in entry:
                names.add(entry.split("--")[-1].split(".")[0] + ".py")
    return names


def _check_card(check, folder):
    from huggingface_hub import ModelCard
    import yaml

    path = folder / CARD_NAME
    if not path.is_file():
        check.add("error", path, f"missing: the model card. Write it with `labkit publish card {folder}` "
                                 "(add --run RUN_DIR for the evaluation table).")
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        check.add("error", path, "has no YAML metadata block (a '---' line first, the metadata, another '---'); "
                                 f"write the card again with `labkit publish card {folder}`.")
        return
    try:
        data = ModelCard(text, ignore_metadata_errors=False).data.to_dict()
    except (yaml.YAMLError, ValueError) as err:
        check.add("error", path, f"its YAML metadata cannot be read ({str(err).splitlines()[0]}); fix it or write "
                                 f"the card again with `labkit publish card {folder} --overwrite`.")
        return
    missing = [key for key in REQUIRED_METADATA if not data.get(key)]
    if missing:
        check.add("error", path, f"its YAML metadata lacks {', '.join(missing)}; add them or write the card again "
                                 f"with `labkit publish card {folder} --overwrite`.")
    tags = [str(t).lower() for t in data.get("tags") or []]
    if data.get("tags") and NAME_RULE not in tags:
        check.add("error", path, "its tags lack 'internvl'; add it so the hub lists the model with InternVL's.")
    if data.get("pipeline_tag") and data["pipeline_tag"] != PIPELINE_TAG:
        check.add("warning", path, f"pipeline_tag is {data['pipeline_tag']!r}; InternVL2 models use {PIPELINE_TAG!r}.")
    if not data.get("base_model"):
        check.add("warning", path, "names no base_model (the base is a local folder, e.g. labkit's tiny model). "
                                   "For a fine-tune of InternVL2-2B: labkit publish card DIR --base-model "
                                   "OpenGVLab/InternVL2-2B.")


def _check_attributes(check, folder, files):
    path = folder / ATTRIBUTES_NAME
    if not path.is_file():
        check.add("error", path, f"missing: git-lfs patterns for the weights. `labkit publish card {folder}` "
                                 "writes one (*.safetensors, *.bin, *.model, ... filter=lfs).")
        return
    patterns = _lfs_patterns(path)
    for file in files:
        relative = file.relative_to(folder)
        large = file.stat().st_size > LFS_THRESHOLD or _lfs_covered(relative, LFS_PATTERNS)
        if large and not _lfs_covered(relative, patterns):
            pattern = f"*{file.suffix}" if _lfs_covered(relative, LFS_PATTERNS) else relative.as_posix()
            check.add("error", path, f"does not send {relative.as_posix()} through git-lfs; add the line "
                                     f"'{pattern} filter=lfs diff=lfs merge=lfs -text'.")


def check_repo_name(check, repo_id, given):
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        check.add("error", "--name", f"{repo_id!r} is not a valid hub name ({err}); use OWNER/NAME with letters, "
                                     "digits, '-', '_' or '.'.")
    name = repo_id.split("/")[-1]
    if NAME_RULE not in name.lower():
        check.add("error" if given else "warning", "--name",
                  f"{name!r} lacks 'InternVL'; the camp's rule is that a published model's name contains it "
                  f"(e.g. {suggest_repo_name(check.folder)}).")
    elif not given:
        check.add("warning", "--name", f"no name given: the commands use {repo_id}; pass --name OWNER/NAME.")


def check_folder(folder, repo_id=None, max_file_bytes=HUB_FILE_LIMIT):
    """Check a model folder is complete for an upload; return a `PublishCheck` (``.ok``, ``.findings``).

    ``repo_id``: the name it will have on the hub (``OWNER/NAME`` or ``NAME``); None checks the
    name `suggest_repo_name` proposes, with a warning. ``max_file_bytes``: the hub's single-file limit.
    Reads the folder only; nothing is written and nothing goes over the network.
    """
    folder = Path(folder)
    given = repo_id is not None
    check = PublishCheck(folder, repo_id or "")
    if not folder.is_dir():
        check.add("error", folder, "no such folder; pass the converted model folder (notebook 04's tuned-model).")
        return check
    config = _check_json(check, folder / "config.json", "config", "Convert again (labkit convert).")
    if not given:
        conversion = _read_json(folder / "conversion.json", "conversion report") or {}
        card = folder / CARD_NAME
        title = re.search(r"^# (\S+)$", card.read_text(encoding="utf-8", errors="replace"), re.MULTILINE) \
            if card.is_file() else None
        check.repo_id = (title.group(1) if title and NAME_RULE in title.group(1).lower() else
                         suggest_repo_name(folder, None, conversion.get("kind"), conversion.get("parameters")))
    weights_ok = _check_weights(check, folder)
    tokenizer_config = _check_json(check, folder / "tokenizer_config.json", "tokenizer",
                                   "Copy it from the base model folder, or convert again.")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        check.add("error", folder / "tokenizer.json", "missing (nor tokenizer.model, vocab.json): the tokenizer's "
                  "vocabulary. Copy it from the base model folder, or convert again.")
    for source, data in (("config.json", config), ("tokenizer_config.json", tokenizer_config)):
        parts = [data or {}] + [(data or {}).get(key) or {} for key in ("llm_config", "vision_config")]
        for name in sorted(set().union(*(_code_files(part) for part in parts if isinstance(part, dict)))):
            if not (folder / name).is_file():
                check.add("error", folder / name, f"missing, but {source}'s auto_map names it: the model's own code. "
                                                  "Copy it from the base model folder, or convert again.")
    _check_json(check, folder / "generation_config.json", "generation config", "Convert again.")
    _check_card(check, folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and ".git" not in p.relative_to(folder).parts)
    _check_attributes(check, folder, files)
    for file in files:
        size = file.stat().st_size
        if size > max_file_bytes:
            fix = ("convert again with a smaller --max-shard-size (e.g. 5GB) so it is split into shards"
                   if file.suffix == ".safetensors" else "split it, or leave it out of the upload")
            check.add("error", file, f"{size / 1e9:.1f} GB, over the hub's single-file limit of "
                                     f"{max_file_bytes / 1e9:g} GB; {fix}.")
    if check.ok and weights_ok:  # every part is there: now every tensor, readable and the shape config.json says
        from labkit.checkpoints.folder import CheckpointError, check_model_folder

        try:
            check_model_folder(folder)
        except CheckpointError as err:
            check.add("error", folder, f"{err}")
    check_repo_name(check, check.repo_id, given)
    return check


# == 3. The upload commands =====================================================================
def upload_commands(folder, repo_id):
    """The exact shell commands that upload ``folder`` as ``repo_id``; nothing runs here."""
    folder = Path(folder).resolve()
    name = repo_id.split("/")[-1]
    hf_id = repo_id if "/" in repo_id else f"{HF_USER}/{repo_id}"
    ms_id = repo_id if "/" in repo_id else f"{MS_USER}/{repo_id}"
    local, clone = shlex.quote(str(folder)), shlex.quote(f"modelscope-{name}")
    message = shlex.quote(f"Upload {name} (converted with labkit)")
    return "\n".join([
        "# Hugging Face hub: the `hf` command of huggingface_hub 0.36.0 (installed with labkit; in .venv/bin).",
        "# `hf upload` creates the repository when it does not exist and sends the weights through LFS.",
        "hf auth login                      # paste a token with write access (huggingface.co/settings/tokens)",
        f"hf upload {hf_id} {local} . --repo-type model --commit-message {message}",
        "# (`huggingface-cli upload` takes the same arguments; it is the older name of the same command)",
        "",
        "# ModelScope: its own client, in its own environment (labkit does not install it): pip install modelscope",
        f"# Create the model once first, on https://www.modelscope.cn/models/create (name: {name}).",
        "modelscope login --token YOUR_MODELSCOPE_TOKEN   # from https://modelscope.cn/my/myaccesstoken",
        f"modelscope upload {ms_id} {local} --commit-message {message}",
        "",
        "# ModelScope with git + git-lfs instead (the model created as above): .gitattributes sends the weights to LFS",
        "git lfs install",
        f"git clone https://www.modelscope.cn/{ms_id}.git {clone}",
        f"cp -r {local}/. {clone}/",
        f"cd {clone} && git add -A && git commit -m {message} && git push",
    ])


# == The command line =============================================================================
def main(argv=None):
    parser = argparse.ArgumentParser(prog="labkit publish", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    card = sub.add_parser("card", help="write the folder's model card (README.md) and .gitattributes")
    check = sub.add_parser("check", help="check the folder is complete for an upload; print the upload commands")
    commands = sub.add_parser("commands", help="print the upload commands (after the check passes)")
    for p in (card, check, commands):
        p.add_argument("folder", help="the converted model folder")
        p.add_argument("--name", help="its name on the hub, OWNER/NAME (must contain InternVL)")
    card.add_argument("--run", help="the run folder: its finetune.json and comparison.json go into the card")
    card.add_argument("--base-model", help="the base model's hub id, e.g. OpenGVLab/InternVL2-2B")
    card.add_argument("--license", default=LICENSE, help=f"the licence's hub id (default {LICENSE}, InternVL2-2B's)")
    card.add_argument("--dataset", action="append", default=[], help="a hub dataset id it was trained on (repeat)")
    card.add_argument("--config", help="the XTuner config, when conversion.json's path no longer holds it")
    card.add_argument("--overwrite", action="store_true", help="replace a README.md that labkit did not write")
    for p in (check, commands):
        p.add_argument("--max-file-gb", type=float, default=HUB_FILE_LIMIT / 1e9,
                       help="the hub's single-file limit in GB (default 50, Hugging Face's)")
    args = parser.parse_args(argv)
    try:
        if args.action == "card":
            path = write_card(args.folder, args.run, args.name, args.base_model, args.license, args.dataset,
                              args.config, overwrite=args.overwrite)
            print(f"wrote {path} and {Path(args.folder) / ATTRIBUTES_NAME}")
            return 0
        result = check_folder(args.folder, args.name, max_file_bytes=int(args.max_file_gb * 1e9))
    except PublishError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.action == "check" or not result.ok:
        print(result.summary())
    if not result.ok:
        return 1
    print(("\n" if args.action == "check" else "") + upload_commands(args.folder, result.repo_id))
    return 0
