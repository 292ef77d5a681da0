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
import fnmatch
import json
import re
import shlex
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from labkit import fileio

CARD_NAME = "README.md"
CARD_MARK = "<!-- labkit model card: `labkit publish card` rewrites this file -->"
ATTRIBUTES_NAME = ".gitattributes"
# Hugging Face hub, "Storage limits": per file 50GB max, 20GB recommended
# (https://huggingface.co/docs/hub/storage-limits). Read as 50 * 10**9 bytes, the stricter reading.
HUB_FILE_LIMIT = 50 * 10**9
# A git push to the hub refuses files above 10 MiB that are not in git-lfs; `hf upload` decides by
# itself, so this matters for the git route (both hubs).
LFS_THRESHOLD = 10 * 2**20
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.model", "*.onnx", "*.msgpack", "*.h5",
                "*.npy", "*.npz", "*.pkl", "*.zip", "*.tar.gz", "*.tgz", "*.gguf")
LICENSE = "mit"  # InternVL2-2B's licence (OpenGVLab/InternVL2-2B); pass another one when yours differs
PIPELINE_TAG = "image-text-to-text"
REQUIRED_METADATA = ("license", "language", "tags", "pipeline_tag", "library_name")
NAME_RULE = "internvl"  # the camp's rule: a published model's name contains "InternVL"
INTERNVL2_RELEASE = re.compile(r"^(?:models--OpenGVLab--)?InternVL2-(1|2|4|8|26|40|76)B$", re.IGNORECASE)
HF_USER, MS_USER = "YOUR_HF_USERNAME", "YOUR_MODELSCOPE_USERNAME"
# Settings (labkit.train.settings) shown in the card, with their Chinese names; the rest is in the config.
CARD_KNOBS = {
    "method": "微调方法 method", "lora_r": "LoRA 秩 rank r", "lora_alpha": "LoRA 缩放 lora_alpha",
    "lora_dropout": "LoRA dropout", "freeze_llm": "冻结语言模型 freeze_llm",
    "freeze_visual_encoder": "冻结视觉编码器 freeze_visual_encoder", "max_length": "最长序列 max_length",
    "batch_size": "每卡批大小 batch_size", "accumulative_counts": "梯度累积 accumulative_counts",
    "max_epochs": "训练轮数 max_epochs", "lr": "学习率 lr", "weight_decay": "权重衰减 weight_decay",
    "warmup_ratio": "预热比例 warmup_ratio", "weights_dtype": "训练时权重精度 weights_dtype",
    "amp": "混合精度 amp", "device": "设备 device", "gpus": "GPU 数 gpus", "seed": "随机种子 seed",
}


class PublishError(ValueError):
    """A folder or a piece of run evidence the card cannot be written from; the message says why."""


# == 1. The model card ==========================================================================
def hub_base_model(base_folder):
    """The hub id of the base model a folder was converted from, when its path names one; else None.

    A download of OpenGVLab's release keeps its name (``models/InternVL2-2B``, or the hub cache's
    ``models--OpenGVLab--InternVL2-2B/snapshots/...``). labkit's tiny course model is on no hub.
    """
    for part in reversed(Path(base_folder).parts):
        match = INTERNVL2_RELEASE.match(part)
        if match:
            return f"OpenGVLab/InternVL2-{match.group(1)}B"
    return None


def suggest_repo_name(folder, base_model=None, kind=None, parameters=None):
    """A hub name with "InternVL" in it: the folder's own name when it has it, else one built from the base."""
    folder = Path(folder)
    if NAME_RULE in folder.name.lower():
        return folder.name
    if base_model:
        stem = base_model.split("/")[-1]
    else:
        stem = "InternVL2-tiny" if parameters and parameters < 10**8 else "InternVL2"
    return f"{stem}-food-{kind or 'tuned'}"


def read_config_settings(config_path):
    """The PART 1 settings of an XTuner config, read with mmengine (as XTuner reads it): ``{knob: value}``.

    The knobs are those of `labkit.train.settings.Settings`; a config written by hand may hold fewer.
    """
    from mmengine.config import Config

    from labkit.train.settings import Settings

    config_path = Path(config_path)
    if not config_path.is_file():
        raise PublishError(f"{config_path}: no such XTuner config (conversion.json names it); pass the config "
                           "the fine-tune ran with (config=..., --config).")
    try:
        cfg = Config.fromfile(str(config_path))
    except Exception as err:  # a syntax error or a failing import inside the config
        raise PublishError(f"{config_path}: mmengine could not read this config "
                           f"({type(err).__name__}: {err}).") from err
    return {f.name: cfg[f.name] for f in fields(Settings) if f.name in cfg}


def _read_json(path, what):
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PublishError(f"{path}: the {what} cannot be read ({err}); restore it or run that step again.") from None
    if not isinstance(data, dict):
        raise PublishError(f"{path}: the {what} holds a JSON {fileio.json_kind(data)}, not an object; "
                           "restore it or run that step again.")
    return data


def _training_figures(run_dir, config_path):
    """Iterations, time, samples and losses: the run folder's finetune.json, else the training folder's result."""
    if run_dir is not None:
        tune = _read_json(Path(run_dir) / "finetune.json", "fine-tune result (notebook 03)")
        if tune is not None:
            return {"iterations": tune.get("iterations"), "wall_s": tune.get("wall_s"),
                    "num_samples": tune.get("num_samples"), "first_loss": tune.get("first_loss"),
                    "final_loss": tune.get("final_loss"), "preset": tune.get("settings")}
    if config_path is not None:  # labkit.train.finetune writes result.json beside the config it rendered
        result = _read_json(Path(config_path).parent / "result.json", "training result")
        if result is not None:
            losses = result.get("losses") or []
            return {"iterations": result.get("iterations"), "wall_s": result.get("wall_time_s"),
                    "num_samples": result.get("num_samples"),
                    "first_loss": losses[0][1] if losses else None, "final_loss": losses[-1][1] if losses else None}
    return {}


@dataclass
class CardFacts:
    """Everything the card says, gathered from the folder and the run's evidence."""

    folder: Path
    repo_id: str
    base_model: str | None  # a hub id, or None (a local base such as labkit's tiny model)
    base_folder: str | None
    license: str = LICENSE
    datasets: list = field(default_factory=list)
    conversion: dict = field(default_factory=dict)  # the folder's conversion.json
    config_path: str | None = None
    settings: dict = field(default_factory=dict)  # PART 1 of the XTuner config
    training: dict = field(default_factory=dict)  # iterations, wall_s, num_samples, losses
    comparison: dict | None = None  # the run folder's comparison.json (notebook 05)
    template: str | None = None  # config.json's chat template name


def gather_facts(folder, run_dir=None, repo_id=None, base_model=None, license=LICENSE, datasets=(),
                 config_path=None):
    """Read what the card will say: the folder's conversion.json and config.json, the XTuner config,
    and (``run_dir``) the run's finetune.json and comparison.json."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise PublishError(f"{folder}: holds no config.json, so it is not a model folder; pass the converted "
                           "folder (notebook 04's tuned-model).")
    try:
        model_config = fileio.read_config(folder)
    except fileio.ConfigError as err:
        raise PublishError(str(err)) from None
    conversion = _read_json(folder / "conversion.json", "conversion report") or {}
    config_path = config_path or conversion.get("config")
    if config_path is None and run_dir is not None:
        config_path = (_read_json(Path(run_dir) / "finetune.json", "fine-tune result (notebook 03)") or {}).get(
            "config_path")
    base_folder = conversion.get("base_model")
    base_model = base_model or (hub_base_model(base_folder) if base_folder else None)
    comparison = _read_json(Path(run_dir) / "comparison.json", "comparison (notebook 05)") if run_dir else None
    repo_id = repo_id or suggest_repo_name(folder, base_model, conversion.get("kind"), conversion.get("parameters"))
    return CardFacts(folder=folder, repo_id=repo_id, base_model=base_model, base_folder=base_folder, license=license,
                     datasets=list(datasets), conversion=conversion,
                     config_path=str(config_path) if config_path else None,
                     settings=read_config_settings(config_path) if config_path else {},
                     training=_training_figures(run_dir, config_path), comparison=comparison,
                     template=model_config.get("template"))


def card_metadata(facts):
    """The hub's YAML metadata, as huggingface_hub's ModelCardData."""
    from huggingface_hub import ModelCardData

    kind = facts.conversion.get("kind") or facts.settings.get("method")
    tags = ["internvl", "internvl2", "xtuner"] + (["lora"] if kind in ("lora", "qlora") else []) + ["food", "labkit"]
    return ModelCardData(base_model=facts.base_model, license=facts.license, language=["zh", "en"], tags=tags,
                         datasets=facts.datasets or None, pipeline_tag=PIPELINE_TAG, library_name="transformers")


def _percent(value):
    return "-" if value is None else f"{value:.0%}"


def _value(value):
    return "-" if value is None else f"`{value}`"


def _settings_rows(facts):
    rows = []
    for knob, label in CARD_KNOBS.items():
        if knob in facts.settings:
            rows.append(f"| {label} | {_value(facts.settings[knob])} |")
    targets = facts.conversion.get("lora_targets") or {}
    for part, names in targets.items():
        rows.append(f"| LoRA 目标层 target modules ({part}) | {', '.join(f'`{n}`' for n in names)} |")
    data = facts.settings.get("data_paths")
    if data:
        rows.append(f"| 训练数据 training data | {', '.join(f'`{Path(p).as_posix()}`' for p in data)} |")
    return rows


def _training_lines(facts):
    t, c = facts.training, facts.conversion
    lines = []
    if t.get("iterations") is not None:
        wall = f"，用时 {t['wall_s']:.0f} 秒 (s)" if t.get("wall_s") is not None else ""
        samples = f"，{t['num_samples']} 个样本 samples" if t.get("num_samples") is not None else ""
        lines.append(f"- 训练 training：{t['iterations']} 次迭代 iterations{samples}{wall}。")
    if t.get("first_loss") is not None and t.get("final_loss") is not None:
        lines.append(f"- 损失 loss：{t['first_loss']:.3f} → {t['final_loss']:.3f}。")
    if c.get("kind"):
        merged = (f"合并了 {c.get('lora_layers_merged')} 个 LoRA 层 (LoRA layers merged)"
                  if c["kind"] == "lora" else "全量微调 full fine-tune，无需合并")
        lines.append(f"- 权重转换 conversion：{merged}；{c.get('parameters', 0):,} 个参数 parameters，"
                     f"{c.get('dtype', '?')}，{c.get('shards', '?')} 个 safetensors 文件。")
    if c.get("max_logit_diff_merge") is not None:
        lines.append(f"- 合并检查 merge check：合并后与 LoRA 模型的 logits 最大差 max |diff| "
                     f"{c['max_logit_diff_merge']:.3g}（容差 tolerance {c.get('merge_tolerance', 0):.3g}）。")
    return lines


def _evaluation_lines(facts):
    comp = facts.comparison
    if not comp:
        return ["还没有评测结果：运行第 05 节后用 `labkit publish card 模型文件夹 --run 运行文件夹` 重写本卡片，"
                "评测表 evaluation table 就会出现在这里。"]
    lines = ["测试集 test split 上，微调前（基座模型 base）与微调后（tuned）的准确率 accuracy：", "",
             "| 菜品 dishes | 微调前 base | 微调后 tuned |", "| --- | --- | --- |"]
    for key, label in (("held_back", "留出菜品 held-back dishes（训练前没见过 unseen before）"),
                       ("known", "已知菜品 known dishes")):
        if isinstance(comp.get(key), dict):
            lines.append(f"| {label} | {_percent(comp[key].get('base'))} | {_percent(comp[key].get('tuned'))} |")
    per_dish = comp.get("per_dish") or []
    if per_dish:
        lines += ["", "| 菜品 dish | 留出 held back | 微调前 base | 微调后 tuned |", "| --- | --- | --- | --- |"]
        lines += [f"| {d.get('dish')} | {'是 yes' if d.get('held_back') else '否 no'} | {_percent(d.get('base'))} "
                  f"| {_percent(d.get('tuned'))} |" for d in per_dish]
    example = comp.get("example") or {}
    if example.get("question"):
        lines += ["", f"例子 example（`{example.get('image')}`）：问 “{example['question']}”，"
                      f"微调前答 “{example.get('base')}”，微调后答 “{example.get('tuned')}”。"]
    return lines


def _loading_lines(facts):
    repo = facts.repo_id if "/" in facts.repo_id else f"{HF_USER}/{facts.repo_id}"
    local = repo.split("/")[-1]
    lines = [
        "### transformers",
        "",
        "模型自带代码 remote code（`config.json` 的 `auto_map`），加载时要 `trust_remote_code=True`：",
        "",
        "```python",
        "import torch",
        "from transformers import AutoModel, AutoTokenizer",
        "from labkit.tiling import load_image  # InternVL2 的动态分块 dynamic tiling + 缩略图 thumbnail",
        "",
        f'path = "{repo}"  # 或本地文件夹 a local folder',
        "model = AutoModel.from_pretrained(path, dtype=torch.bfloat16, trust_remote_code=True).eval()",
        "tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)",
        'pixel_values = load_image("dish.jpg", tile_size=model.config.force_image_size,',
        "                          max_num=model.config.max_dynamic_patch).to(torch.bfloat16)",
        'print(model.chat(tokenizer, pixel_values, "这是什么菜？", dict(max_new_tokens=64, do_sample=False)))',
        "```",
        "",
        "### labkit chat",
        "",
        "```bash",
        f"hf download {repo} --local-dir {local}",
        f'labkit chat {local} "这是什么菜？" --image dish.jpg',
        "```",
        "",
        "### LMDeploy（GPU）",
        "",
    ]
    from labkit.checkpoints.remote_code import LABKIT_TEMPLATE

    if facts.template == LABKIT_TEMPLATE:
        lines += [f"本模型的对话模板 chat template 是 labkit 的 `{LABKIT_TEMPLATE}`，LMDeploy 不认识它："
                  "先用 `labkit chat` 导出模板文件 template file，再交给 LMDeploy。", "",
                  "```bash",
                  f'labkit chat {local} "你好" --lmdeploy-template labkit-template.json',
                  f"lmdeploy serve api_server {local} --trust-remote-code --chat-template labkit-template.json",
                  "```"]
    else:
        lines += ["```python",
                  "from lmdeploy import pipeline",
                  "from lmdeploy.vl import load_image",
                  "",
                  f'pipe = pipeline("{local}")',
                  'print(pipe(("这是什么菜？", load_image("dish.jpg"))).text)',
                  "```"]
    return lines


def card_text(facts):
    """The whole README.md: YAML metadata, then the Chinese card and a short English section."""
    if facts.base_model:
        base = f"[{facts.base_model}](https://huggingface.co/{facts.base_model})"
    elif facts.base_folder:
        base = f"本地文件夹 local folder `{Path(facts.base_folder).name}`，不在任何模型库 on no hub"
        if (facts.conversion.get("parameters") or 0) < 10**8:
            base += "（课程的 tiny 基座模型 the course's tiny base model：结构同 InternVL2-2B，缩小到笔记本电脑能跑）"
    else:
        base = "未知 unknown（文件夹里没有 conversion.json：不是 `labkit convert` 写的 not written by labkit convert）"
    comp = facts.comparison or {}
    held = comp.get("held_back") if isinstance(comp.get("held_back"), dict) else {}
    if facts.config_path:
        preset = facts.training.get("preset")
        source = (f"来自 XTuner 配置 config `{Path(facts.config_path).name}`"
                  + (f"（labkit 预设 preset `{preset}`）" if preset else "") + "：")
    else:
        source = "没有找到 XTuner 配置 config：这个文件夹不是 `labkit convert` 写的。"
    body = [
        CARD_MARK,
        "",
        f"# {facts.repo_id.split('/')[-1]}",
        "",
        f"InternVL2 多模态模型 multimodal model，用 XTuner 在菜品识别数据 food recognition data 上微调 fine-tune，"
        f"再把 LoRA 合并 merge 进权重、存成 safetensors。基座模型 base model：{base}。",
        "",
        "## 训练设置 training settings",
        "",
        source,
        "",
    ]
    rows = _settings_rows(facts)
    if rows:
        body += ["| 设置 setting | 值 value |", "| --- | --- |", *rows, ""]
    body += _training_lines(facts) + ["", "## 评测 evaluation", "", *_evaluation_lines(facts), "",
                                      "## 使用方法 how to use", "", *_loading_lines(facts), ""]
    english = [
        "## English",
        "",
        f"An InternVL2 model fine-tuned with XTuner on a food recognition set, its LoRA merged into the weights "
        f"(safetensors). Base model: {facts.base_model or 'labkit course tiny model (local, on no hub)'}. "
        "Load it with `AutoModel.from_pretrained(path, trust_remote_code=True)`, `labkit chat`, or LMDeploy (above).",
    ]
    if held.get("base") is not None and held.get("tuned") is not None:
        english.append("")
        english.append(f"Accuracy on held-back dishes: {_percent(held['base'])} before, "
                       f"{_percent(held['tuned'])} after fine-tuning.")
    text = "\n".join(body + english) + "\n"
    return "---\n" + card_metadata(facts).to_yaml() + "\n---\n\n" + text


def write_gitattributes(folder):
    """Write a ``.gitattributes`` with git-lfs patterns when the folder has none; return its path.

    The hub's own default patterns for weights and archives, plus any other file in the folder
    above `LFS_THRESHOLD`, by name. An existing file is left as it is (`check_folder` reports gaps).
    """
    folder = Path(folder)
    path = folder / ATTRIBUTES_NAME
    if path.exists():
        return path
    large = [p.relative_to(folder) for p in sorted(folder.rglob("*"))
             if p.is_file() and p.stat().st_size > LFS_THRESHOLD]
    patterns = list(LFS_PATTERNS) + [r.as_posix() for r in large if not _lfs_covered(r, LFS_PATTERNS)]
    lines = ["# git-lfs keeps these files outside git: weights, archives and anything above 10 MiB.",
             "# The Hugging Face hub and ModelScope read this file when you push with git."]
    lines += [f"{pattern} filter=lfs diff=lfs merge=lfs -text" for pattern in patterns]
    return fileio.write_text(path, "\n".join(lines) + "\n")


def write_card(folder, run_dir=None, repo_id=None, base_model=None, license=LICENSE, datasets=(), config_path=None,
               overwrite=False):
    """Write the folder's model card (README.md) and, if missing, its .gitattributes; return the card's path.

    ``run_dir``: the run folder whose finetune.json and comparison.json the card reports (the
    evaluation table needs comparison.json). ``repo_id``: the name the card's examples load (default:
    `suggest_repo_name`). ``base_model``: the base's hub id when its path does not say it (`hub_base_model`).
    A README.md that labkit did not write is kept unless ``overwrite``.
    """
    folder = Path(folder)
    card = folder / CARD_NAME
    if card.is_file() and CARD_MARK not in card.read_text(encoding="utf-8", errors="replace") and not overwrite:
        raise PublishError(f"{card}: exists and was not written by labkit; keep it, or pass overwrite=True "
                           "(--overwrite) to replace it with labkit's card.")
    facts = gather_facts(folder, run_dir, repo_id, base_model, license, datasets, config_path)
    fileio.write_text(card, card_text(facts))
    write_gitattributes(folder)
    return card


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


def _lfs_covered(relative, patterns):
    """Whether a path matches a .gitattributes pattern: by its name, or by its path when the pattern has a '/'."""
    relative = Path(relative).as_posix()
    for pattern in patterns:
        if "/" in pattern.strip("/"):
            if fnmatch.fnmatchcase(relative, pattern.lstrip("/")):
                return True
        elif fnmatch.fnmatchcase(relative.rsplit("/", 1)[-1], pattern.strip("/")):
            return True
    return False


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
