"""What XTuner trained and what its checkpoint holds: the first half of a conversion.

* ``read_train_setup``     - from the XTuner config: the base model folder, the LoRA settings
  and the freeze flags (what XTuner trained, hence what the ``.pth`` must hold).
* ``read_trained_weights`` - the ``.pth`` (mmengine's ``{'meta', 'state_dict', ...}`` dict, keys
  prefixed ``model.``) or a DeepSpeed checkpoint folder, read without running pickled code.
* ``load_trained_weights`` - those weights into the model wrapped as XTuner wrapped it
  (`labkit.convert.merge.wrap_like_xtuner`), refusing a checkpoint that does not fit.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from labkit.fileio import REPO_ROOT


class ConversionError(ValueError):
    """A config, checkpoint or output folder that conversion cannot use; the message says why."""


# == 1. What XTuner trained: the config ======================================================
@dataclass
class TrainSetup:
    """The parts of an XTuner config that decide what the ``.pth`` holds."""

    config_path: Path
    model_path: Path
    llm_lora: dict | None = None  # LoraConfig keyword arguments, or None (no LoRA on the LLM)
    visual_encoder_lora: dict | None = None
    freeze_llm: bool = False
    freeze_visual_encoder: bool = False
    pretrained_pth: Path | None = None  # weights XTuner loaded on top of model_path before training


def _lora_settings(value, key, config_path):
    """A config's ``dict(type=LoraConfig, r=..., ...)`` as plain kwargs (a LoraConfig object as is)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        if type(value).__name__ != "LoraConfig":
            raise ConversionError(f"{config_path}: model.{key} is a {type(value).__name__}, not a LoRA config.")
        return value
    settings = dict(value)
    kind = settings.pop("type", "LoraConfig")
    kind_name = getattr(kind, "__name__", str(kind)).rsplit(".", 1)[-1]
    if kind_name != "LoraConfig":
        raise ConversionError(f"{config_path}: model.{key} has type {kind_name}; labkit converts LoRA adapters only.")
    if isinstance(settings.get("target_modules"), tuple):
        settings["target_modules"] = list(settings["target_modules"])
    return settings


def _is_xtuner_internvl(kind):
    """XTuner's InternVL_V1_5, or a class built on it (the ``.pth`` layout is the same)."""
    if isinstance(kind, type):
        return any(cls.__name__ == "InternVL_V1_5" for cls in kind.__mro__)
    return str(kind).rsplit(".", 1)[-1] in ("InternVL_V1_5", "LeanInternVL")


def _find_model_folder(model_path, config_path):
    """``model_path`` as XTuner read it (from the current folder); if absent there, from the repo root.

    Rendered course configs name folders relative to the repo root (``runs/cache/base-tiny``),
    while a notebook may run in a subfolder.
    """
    given = Path(model_path).expanduser()
    candidates = [given] if given.is_absolute() else [given, REPO_ROOT / given]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    raise ConversionError(
        f"{config_path}: model_path {model_path!r} is not a folder on this machine (looked in "
        f"{', '.join(str(c) for c in candidates)}). labkit never downloads models: point model_path at the "
        "local base checkpoint the fine-tune started from."
    )


def read_train_setup(config_path):
    """Read an XTuner config (a python file) with mmengine and return its ``TrainSetup``."""
    from mmengine.config import Config

    config_path = Path(config_path)
    if not config_path.is_file():
        raise ConversionError(f"{config_path}: no such XTuner config; pass the .py config you trained with.")
    try:
        cfg = Config.fromfile(str(config_path))
    except Exception as err:  # a syntax error or a failing import inside the config
        raise ConversionError(
            f"{config_path}: mmengine could not read this config ({type(err).__name__}: {err})."
        ) from err
    model_cfg = cfg.get("model")
    if not model_cfg or "model_path" not in model_cfg:
        raise ConversionError(f"{config_path}: has no model = dict(type=InternVL_V1_5, model_path=...) section.")
    if not _is_xtuner_internvl(model_cfg.get("type")):
        raise ConversionError(
            f"{config_path}: model type is {model_cfg.get('type')!r}; labkit converts XTuner's InternVL_V1_5 "
            "(and subclasses such as labkit.train.lean.LeanInternVL) only."
        )
    model_path = _find_model_folder(str(model_cfg["model_path"]), config_path)
    pretrained = model_cfg.get("pretrained_pth")
    return TrainSetup(
        config_path=config_path,
        model_path=model_path,
        llm_lora=_lora_settings(model_cfg.get("llm_lora"), "llm_lora", config_path),
        visual_encoder_lora=_lora_settings(model_cfg.get("visual_encoder_lora"), "visual_encoder_lora", config_path),
        freeze_llm=bool(model_cfg.get("freeze_llm", False)),
        freeze_visual_encoder=bool(model_cfg.get("freeze_visual_encoder", False)),
        pretrained_pth=Path(pretrained) if pretrained else None,
    )


# == 2. The trained weights: the .pth ========================================================
class _DiscardedLogObject:
    """Stands in for a piece of mmengine's training log while a ``.pth`` is unpickled.

    Accepts whatever the pickle hands it and keeps nothing (see ``_allowed_stand_ins``).
    """

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _is_training_log_global(name):
    """Python objects a mmengine checkpoint holds outside ``state_dict``, in its training log.

    ``message_hub`` keeps mmengine ``HistoryBuffer`` objects (numpy arrays inside); their pickle
    also names HistoryBuffer's statistics methods through ``builtins.getattr``.
    """
    return (
        name.startswith("numpy.")
        or name.startswith("mmengine.logging.")
        or name in ("builtins.getattr", "__builtin__.getattr")
    )


def _allowed_stand_ins(names):
    """The allow-list for ``torch.load(weights_only=True)``.

    ``weights_only=True`` unpickles tensors, numbers, strings and containers only, so nothing in
    a file can run code while it is read. mmengine's ``.pth`` also holds the training log
    (``message_hub``), which that refuses. Instead of falling back to ``weights_only=False`` (which
    would execute any code a foreign file carries), each log class the file names is mapped to
    the inert ``_DiscardedLogObject``: the log is never read, so nothing of it needs to be real,
    and the general-purpose ``getattr`` the log's pickle asks for is never handed out.
    """
    return [(_DiscardedLogObject, name) for name in names]


def _state_dict_of(data, path):
    """The weights inside a loaded checkpoint: its ``state_dict``, or a bare dict of tensors."""
    if isinstance(data, dict) and "state_dict" in data:
        data = data["state_dict"]
    elif not (isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values())):
        data = None
    if not isinstance(data, dict) or not data:
        raise ConversionError(
            f"{path}: holds no weights (expected a dict with a 'state_dict' of tensors, as XTuner/mmengine "
            "save). Use an iter_*.pth from the fine-tune's work_dirs folder."
        )
    not_tensors = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(
            f"{path}: its state_dict holds non-tensor entries ({', '.join(map(str, not_tensors[:3]))}); "
            "this is not an XTuner model checkpoint."
        )
    return dict(data)


def _read_pth_file(path):
    size = path.stat().st_size
    if size == 0:
        raise ConversionError(
            f"{path}: is empty (0 bytes): saving it was interrupted (job stopped, disk full?). Use an earlier "
            "iter_*.pth from the same work_dirs folder, or run the fine-tune again."
        )
    if not zipfile.is_zipfile(path):
        raise ConversionError(
            f"{path}: is truncated or not a PyTorch checkpoint ({size} bytes, no zip directory at its end). An "
            "interrupted save or copy leaves files like this: copy it again or use an earlier iter_*.pth."
        )
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        refused = sorted(n for n in names if not _is_training_log_global(n))
        if refused:
            raise ConversionError(
                f"{path}: holds Python objects that an XTuner checkpoint never contains ({', '.join(refused[:5])}); "
                "labkit will not unpickle them, because unpickling can run code. Convert only checkpoints "
                "your own fine-tune wrote."
            )
        with torch.serialization.safe_globals(_allowed_stand_ins(names)):
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except ConversionError:
        raise
    except Exception as err:  # the zip reader's RuntimeError, EOFError, UnpicklingError...
        raise ConversionError(
            f"{path}: cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:200]}); the file is "
            "truncated or corrupt. Copy it again or use an earlier iter_*.pth."
        ) from err
    return _state_dict_of(data, path)


def _read_deepspeed_folder(path):
    """XTuner on GPUs with DeepSpeed saves ``iter_N.pth`` as a folder of ZeRO shards."""
    if not any(path.glob("*model_states.pt")):
        raise ConversionError(
            f"{path}: is a folder but not a DeepSpeed checkpoint (no *model_states.pt inside). Pass an "
            "iter_*.pth file or folder from the fine-tune's work_dirs."
        )
    try:
        from xtuner.utils.zero_to_any_dtype import get_state_dict_from_zero_checkpoint
    except ImportError as err:
        raise ConversionError(
            f"{path}: is a DeepSpeed checkpoint (XTuner's GPU training writes these); reading it needs the "
            f"deepspeed package, which is not installed here ({err}). Install it (pip install deepspeed) or run "
            "the conversion on the training machine."
        ) from err
    # XTuner's own reader (the same call as xtuner.model.utils.guess_load_checkpoint). It merges
    # the ZeRO partitions with DeepSpeed's loader, which is outside labkit's weights_only rule:
    # use it only on checkpoints your own training wrote.
    return _state_dict_of(get_state_dict_from_zero_checkpoint(str(path.parent), path.name), path)


def read_trained_weights(path):
    """Read a ``.pth`` file or DeepSpeed folder and return its state dict (keys as saved)."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: no such checkpoint. XTuner writes them as work_dirs/<config>/iter_*.pth.")
    if path.is_dir():
        return _read_deepspeed_folder(path)
    return _read_pth_file(path)


# == 3. The trained weights in the model ===================================================
def keys_xtuner_saves(model, setup):
    """The state-dict keys (without ``model.``) a checkpoint of this setup must contain.

    XTuner's ``InternVL_V1_5.state_dict`` keeps: for each of the vision tower and the LLM, its
    LoRA matrices when it has LoRA, else all its weights when it was not frozen; and ``mlp1``.
    """
    keys = set()
    for part, lora, frozen in (
        ("vision_model", setup.visual_encoder_lora, setup.freeze_visual_encoder),
        ("language_model", setup.llm_lora, setup.freeze_llm),
    ):
        own = [k for k in model.state_dict() if k.startswith(part + ".")]
        if lora is not None:
            keys.update(k for k in own if "lora_" in k)
        elif not frozen:
            keys.update(own)
    keys.update(k for k in model.state_dict() if k.startswith("mlp1."))
    return keys


def _few(keys, n=3):
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_trained_weights(model, weights, setup, pth_path):
    """Load XTuner's weights into the wrapped model; refuse any that do not fit.

    Returns how many tensors were loaded.
    """
    where = f"{pth_path} (for {setup.config_path})"
    stripped = {k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")}
    if not stripped:
        raise ConversionError(
            f"{where}: none of its {len(weights)} keys starts with 'model.' (e.g. {_few(weights)}); this is not "
            "an XTuner InternVL checkpoint. Pass the iter_*.pth that training with this config wrote."
        )
    own = model.state_dict()
    foreign = set(weights) - {"model." + k for k in stripped} | (set(stripped) - set(own))
    if foreign:
        hint = ""
        if any("lora_" in k for k in foreign):
            hint = (" It holds LoRA weights this config does not create: is it from another config "
                    "(llm_lora / visual_encoder_lora)?")
        raise ConversionError(
            f"{where}: {len(foreign)} of its {len(weights)} keys are not in the model: {_few(foreign)}.{hint} "
            "Convert with the config that trained this checkpoint."
        )
    missing = keys_xtuner_saves(model, setup) - set(stripped)
    if missing:
        raise ConversionError(
            f"{where}: lacks {len(missing)} weights this config trains: {_few(missing)}. Was it trained with "
            "another config (other LoRA targets, freeze flags)? Convert with the matching config."
        )
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in stripped.items() if v.shape != own[k].shape]
    if wrong:
        raise ConversionError(
            f"{where}: {len(wrong)} tensors have the wrong shape (checkpoint vs model): {'; '.join(wrong[:3])}. "
            "A different LoRA rank r or another base model? Convert with the config that trained it."
        )
    model.load_state_dict(stripped, strict=False)
    return len(stripped)


def load_trained_weights_loosely(model, weights, setup):
    """``pretrained_pth`` weights XTuner loaded before training (strict=False there too)."""
    stripped = {k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")}
    unknown = set(stripped) - set(model.state_dict())
    if unknown or not stripped:
        raise ConversionError(
            f"{setup.pretrained_pth} (pretrained_pth in {setup.config_path}): keys do not fit the model: "
            f"{_few(unknown or weights)}."
        )
    model.load_state_dict(stripped, strict=False)
