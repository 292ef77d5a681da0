"""The model card of a converted folder: the hub's YAML metadata, then the training, the
evaluation and how to load it, in Chinese first with a short English section; and the folder's
``.gitattributes`` for git-lfs. `labkit.convert.publish` checks the folder and prints the upload
commands; `labkit.convert.pipeline.convert` writes the card into every converted folder.
"""
from __future__ import annotations

import fnmatch
import json
import re
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
