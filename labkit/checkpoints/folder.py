"""Write and check InternVL2 checkpoint folders in the official format.

A folder that ``AutoModel.from_pretrained(path, trust_remote_code=True)`` loads holds:
``config.json`` (with ``auto_map`` pointing at the remote-code files), the remote-code python
files, ``model.safetensors`` (or shards + index), the tokenizer files and
``generation_config.json``. labkit writes its tiny course model this way, and can write
InternVL2-2B's real architecture with random weights (for GPU memory and speed measurements).

CLI::

    labkit checkpoint --tiny OUT_DIR            # the tiny course model, random weights
    labkit checkpoint --config labkit/assets/internvl2-2b/config.json OUT_DIR
    labkit checkpoint --check MODEL_DIR          # check a folder before loading it
"""
import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import torch

from labkit import fileio
from labkit import model as model_code
from labkit.checkpoints.remote_code import (LABKIT_TEMPLATE, RemoteCodeError, adapt_for_generation, check_imports,
                                           quiet_generation_warning)
from labkit.checkpoints.tokenizer import course_texts, missing_tokens, train_tokenizer
from labkit.fileio import PACKAGE_DIR

INTERNVL2_2B_CONFIG = PACKAGE_DIR / "assets" / "internvl2-2b" / "config.json"  # shipped with labkit
AUTO_MAP = {
    "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
    "AutoModel": "modeling_internvl_chat.InternVLChatModel",
    "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
}
TINY_VOCAB = 1200


class CheckpointError(ValueError):
    """A model folder is missing something or holds something broken."""


def tiny_config(vocab_size=TINY_VOCAB):
    """The tiny course model: InternVL2-2B's algorithms at laptop size.

    64 px tiles of 8 px patches give an 8x8 grid; pixel shuffle folds it to 4x4 = 16 image
    tokens per tile (InternVL2-2B: 448/14 = 32x32 -> 256). Up to 6 tiles + a thumbnail.
    """
    config = fileio.read_config(INTERNVL2_2B_CONFIG)
    config.update(force_image_size=64, max_dynamic_patch=6, template=LABKIT_TEMPLATE)
    config["vision_config"].update(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
        image_size=64, patch_size=8, initializer_factor=1.0,
    )
    config["llm_config"].update(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=352, vocab_size=vocab_size, max_position_embeddings=2048,
    )
    return config


def load_config(path):
    """A JSON object (config.json, an index, tokenizer_config.json) read by `labkit.fileio.read_config`;
    CheckpointError naming the file otherwise."""
    try:
        return fileio.read_config(path)
    except fileio.ConfigError as err:
        raise CheckpointError(str(err)) from None


def build_model(config, seed=0, dtype=torch.float32, device="cpu"):
    """An InternVLChatModel with random weights from a config dict (seeded)."""
    torch.manual_seed(seed)
    chat_config = model_code.InternVLChatConfig(**config)
    with torch.device(device):
        model = model_code.InternVLChatModel(chat_config)
    return model.to(dtype)


def generation_config_dict(tokenizer):
    stop = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|im_start|>")]
    return {"eos_token_id": stop, "bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id}


def _prepare_out_dir(out_dir, overwrite):
    """Refuse a non-empty ``out_dir`` (unless ``overwrite``) or a file; return it and a new temp folder beside it."""
    out_dir = check_out_dir(out_dir, overwrite)
    return out_dir, fileio.make_stage(out_dir, "model folder")


def check_out_dir(out_dir, overwrite):
    """A model folder to write: new, empty, or (with ``overwrite``) a model folder; never someone else's folder."""
    out_dir = fileio.check_folder_target(Path(out_dir), "model folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} already exists and is not empty; choose a new folder or pass overwrite=True "
                "(--overwrite) to replace it."
            )
        if not (out_dir / "config.json").is_file():
            raise FileExistsError(
                f"{out_dir} is not empty and holds no config.json, so it is not a model folder; labkit will not "
                "replace it even with overwrite. Choose a new or empty folder."
            )
    return out_dir


def _publish(tmp_dir, out_dir):
    """Swap the finished temp folder into place; the old folder goes only once the new one exists."""
    fileio.publish_folder(tmp_dir, out_dir)


def check_shard_size(value):
    """``max_shard_size`` as transformers takes it: bytes (> 0) or text such as "2GB" / "200MB"; else CheckpointError."""
    if isinstance(value, int) and not isinstance(value, bool):
        ok = value > 0
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB|TB)\s*", value, re.IGNORECASE) if isinstance(value, str) else None
        ok = bool(match) and float(match.group(1)) > 0
    if not ok:
        raise CheckpointError(f"max_shard_size {value!r}: give a positive size such as '2GB' or '200MB' "
                              "(units KB, MB, GB, TB), or a number of bytes.")
    return value


# Tokenizer files a model folder may carry beside its remote code (the *.py files).
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")


def has_labkit_code(folder):
    """True when a folder's remote code is labkit's own (``labkit/model/``), byte for byte."""
    code_dir = Path(model_code.__file__).parent
    return all((Path(folder) / name).is_file() and (Path(folder) / name).read_bytes() == (code_dir / name).read_bytes()
               for name in model_code.REMOTE_CODE_FILES)


def _record_torch_dtype(config, dtype):
    name = str(dtype).replace("torch.", "")
    for part in (config, config.get("vision_config", {}), config.get("llm_config", {})):
        part["torch_dtype"] = name


def finish_folder(folder, tokenizer, dtype=None, base=None):
    """Make a saved model folder official: auto_map, remote code, tokenizer, generation config.

    ``base``, a model folder the weights came from (a conversion's base model): the folder keeps
    that folder's own remote code, ``auto_map`` (top level and ``llm_config``), template,
    tokenizer files and generation config, byte for byte, whoever wrote them (labkit or
    OpenGVLab). Without ``base`` it gets labkit's code and ``tokenizer``.

    ``dtype`` is recorded as ``torch_dtype`` (the key InternVL2 checkpoints and older tools read)
    at the top level and in both nested configs.
    """
    folder = Path(folder)
    config = fileio.read_config(folder)
    config["architectures"] = ["InternVLChatModel"]
    if base is not None:
        base = Path(base)
        base_config = load_config(base / "config.json")
        config["auto_map"] = dict(base_config.get("auto_map") or AUTO_MAP)
        config["template"] = base_config.get("template", config.get("template"))
        if "auto_map" in base_config.get("llm_config", {}):
            config["llm_config"]["auto_map"] = base_config["llm_config"]["auto_map"]
        for stale in folder.glob("*.py"):  # whatever save_pretrained copied; the base's code replaces it
            stale.unlink()
        names = [p.name for p in sorted(base.glob("*.py"))] + [n for n in TOKENIZER_FILES if (base / n).is_file()]
        names += ["generation_config.json"] if (base / "generation_config.json").is_file() else []
        for name in names:
            shutil.copyfile(base / name, folder / name)
    else:
        config["auto_map"] = dict(AUTO_MAP)
        code_dir = Path(model_code.__file__).parent
        for name in model_code.REMOTE_CODE_FILES:
            shutil.copyfile(code_dir / name, folder / name)
        tokenizer.save_pretrained(folder)
    if dtype is not None:
        _record_torch_dtype(config, dtype)
    (folder / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if base is None or not (folder / "generation_config.json").is_file():
        gen = generation_config_dict(tokenizer)
        (folder / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")


def write_checkpoint(out_dir, config=None, tokenizer=None, seed=0, dtype=torch.bfloat16, overwrite=False,
                     max_shard_size="2GB", model=None):
    """Write a complete official-format folder; atomically (temp folder, then rename)."""
    check_shard_size(max_shard_size)
    tokenizer = tokenizer or train_tokenizer(course_texts(), vocab_size=TINY_VOCAB)
    if missing_tokens(tokenizer):
        raise CheckpointError(f"The tokenizer lacks the special tokens {missing_tokens(tokenizer)}.")
    config = config or tiny_config(len(tokenizer))
    vocab = config["llm_config"]["vocab_size"]
    if len(tokenizer) > vocab:
        raise CheckpointError(f"The tokenizer has {len(tokenizer)} tokens but llm_config.vocab_size is {vocab}.")
    out_dir, tmp_dir = _prepare_out_dir(out_dir, overwrite)
    try:
        model = model if model is not None else build_model(config, seed=seed)
        model = model.to(dtype)
        model.save_pretrained(tmp_dir, safe_serialization=True, max_shard_size=max_shard_size)
        finish_folder(tmp_dir, tokenizer, dtype)
        _publish(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return out_dir


# -- checking a folder before anything loads it ---------------------------------------------
def _safetensors_header(path):
    """``{tensor name: shape}`` from a safetensors file's header, read by safetensors itself.

    ``safe_open`` checks the header (its length, its JSON, every tensor's dtype, shape and byte
    range) and that the tensors cover the file exactly, so a truncated or corrupt file is refused
    here without reading a single weight.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            return {name: weights.get_slice(name).get_shape() for name in weights.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({path.stat().st_size} bytes; safetensors says: {err}). "
            "It is truncated or corrupt (an interrupted copy or download?): copy or convert it again."
        ) from None


def expected_tensors(config, config_path="config.json"):
    """``{name: shape}`` of every tensor an InternVL2 (InternLM2) model of ``config`` holds.

    Built on PyTorch's meta device: no memory, no weights, a fraction of a second even for
    InternVL2-2B. None for a language model labkit's code does not implement (Phi-3, Qwen2...).
    """
    arch = (config["llm_config"].get("architectures") or ["InternLM2ForCausalLM"])[0]
    if arch != "InternLM2ForCausalLM":
        return None
    shapes_only = dict(config, template=LABKIT_TEMPLATE)  # the template names no tensor; the folder's may be unknown here
    try:
        with torch.device("meta"):
            model = model_code.InternVLChatModel(model_code.InternVLChatConfig(**shapes_only))
    except (ValueError, TypeError, KeyError, ZeroDivisionError, RuntimeError) as err:
        raise CheckpointError(f"{config_path}: does not describe a model that can be built ({err}); "
                              "restore the file or rebuild the checkpoint.") from None
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _few_names(names, limit=5):
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_tensors(found, expected, config_path):
    """``found``: ``{name: (file, shape)}`` from the safetensors headers; refuse what does not fit ``expected``."""
    missing = set(expected) - set(found)
    if missing:
        files = sorted({str(f) for f, _ in found.values()}) or ["the weights"]
        raise CheckpointError(
            f"{', '.join(files)}: lacks {len(missing)} of the {len(expected)} tensors that {config_path} describes: "
            f"{_few_names(missing)}. Loading would fill them with random numbers; the file is incomplete or "
            "belongs to another model. Convert or copy the checkpoint again."
        )
    unexpected = set(found) - set(expected)
    if unexpected:
        files = sorted({str(found[n][0]) for n in unexpected})
        raise CheckpointError(
            f"{', '.join(files)}: holds {len(unexpected)} tensor(s) that {config_path} has no place for: "
            f"{_few_names(unexpected)}. Loading would silently drop them; is it another model's (or an unmerged "
            "LoRA) checkpoint? Convert it again, or use the config.json that belongs to it."
        )
    wrong = sorted(n for n in found if tuple(found[n][1]) != tuple(expected[n]))
    if wrong:
        detail = "; ".join(f"{found[n][0]}: {n} is {tuple(found[n][1])}, {config_path} needs {tuple(expected[n])}"
                           for n in wrong[:3])
        raise CheckpointError(
            f"{len(wrong)} tensor(s) have the wrong shape: {detail}. The weights and config.json belong to "
            "different models (another size or vocabulary); use the matching pair."
        )


def check_model_folder(path):
    """Check a checkpoint folder; raise CheckpointError naming the file or key that is wrong."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder}: is a file, not a model folder; pass the folder that holds config.json "
                              "and model.safetensors.")
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such model folder. Build one with `labkit checkpoint --tiny {folder}`.")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing; a model folder needs config.json.")
    config = load_config(config_path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: holds a JSON {type(config).__name__}, not an object of settings; "
                              "restore the file or rebuild the checkpoint.")
    for key in ("vision_config", "llm_config"):
        if not isinstance(config.get(key), dict):
            raise CheckpointError(f"{config_path}: key {key!r} is missing or not an object.")
    arch = (config["llm_config"].get("architectures") or [None])[0]
    if arch not in ("InternLM2ForCausalLM", "Phi3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM"):
        raise CheckpointError(
            f"{config_path}: llm_config.architectures[0] is {arch!r}; InternVL2 checkpoints use InternLM2ForCausalLM "
            "(XTuner also accepts Phi3ForCausalLM)."
        )
    for cls_path in (config.get("auto_map") or {}).values():
        module_file = folder / (cls_path.split(".")[0] + ".py")
        if not module_file.is_file():
            raise CheckpointError(f"{module_file}: missing, but config.json's auto_map points at it.")
    try:
        check_imports(folder)
    except RemoteCodeError as err:
        raise CheckpointError(str(err)) from None
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = load_config(index)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not weight_map or not all(
                isinstance(v, str) and v for v in weight_map.values()):
            raise CheckpointError(f"{index}: no 'weight_map' (tensor name -> shard file) in it; save the checkpoint again.")
        shards = sorted(set(weight_map.values()))
    elif (folder / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        raise CheckpointError(f"{folder}: no model.safetensors (or model.safetensors.index.json) found.")
    found = {}
    for shard in shards:
        if not (folder / shard).is_file():
            raise CheckpointError(f"{folder / shard}: missing, but the safetensors index lists it.")
        for name, shape in _safetensors_header(folder / shard).items():
            found[name] = (folder / shard, shape)
    if index.is_file():
        misplaced = sorted(n for n, shard in weight_map.items() if n not in found or found[n][0] != folder / shard)
        if misplaced:
            raise CheckpointError(f"{index}: lists {len(misplaced)} tensor(s) in a shard that does not hold them: "
                                  f"{_few_names(misplaced)}. Save the checkpoint again.")
    expected = expected_tensors(config, config_path)
    if expected is not None:
        check_tensors(found, expected, config_path)
    tok_config = folder / "tokenizer_config.json"
    if not tok_config.is_file():
        raise CheckpointError(f"{tok_config}: missing; the folder needs its tokenizer.")
    load_config(tok_config)
    return config


def check_tokenizer(tokenizer, where="the tokenizer"):
    missing = missing_tokens(tokenizer)
    if missing:
        raise CheckpointError(
            f"{where} lacks the special token(s) {', '.join(missing)}; an InternVL2 tokenizer needs them by name."
        )


def load_checkpoint(path, dtype=torch.float32, device="cpu", code="folder"):
    """Check, then load (model, tokenizer) with transformers' Auto classes and remote code.

    ``code="folder"`` (the default) runs the folder's own remote code, through labkit's
    compatibility layer (:func:`labkit.checkpoints.remote_code.adapt_for_generation`), so OpenGVLab's
    InternVL2 code generates under the pinned transformers too. ``code="labkit"`` runs the
    folder's weights with labkit's own model code (``labkit/model/``) instead: the parameter
    names and shapes are the same, and a test shows both give the same logits. The tokenizer
    always comes from the folder.

    ``trust_remote_code`` runs the python files inside ``path``: only pass folders you built or
    trust (labkit's own, or OpenGVLab's InternVL2 download).
    """
    from transformers import AutoModel, AutoTokenizer

    if code not in ("folder", "labkit"):
        raise ValueError(f"code={code!r}: use 'folder' (the folder's own remote code) or 'labkit'.")
    config = check_model_folder(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=True)
    check_tokenizer(tokenizer, f"{Path(path) / 'tokenizer_config.json'}")
    if code == "labkit":
        model = _load_with_labkit_code(path, config, dtype)
    else:
        with quiet_generation_warning():
            model = AutoModel.from_pretrained(str(path), trust_remote_code=True, dtype=dtype)
        adapt_for_generation(model, where=str(path))
    model = model.to(device).eval()
    model.img_context_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    return model, tokenizer


def _load_with_labkit_code(path, config, dtype):
    """The folder's weights in labkit's own InternVLChatModel; every tensor must match."""
    from labkit.model.conversation import TEMPLATES

    template = config.get("template")
    if template not in TEMPLATES:
        raise CheckpointError(
            f"{Path(path) / 'config.json'}: template {template!r} is not one of labkit's ({', '.join(TEMPLATES)}); "
            "run this folder with its own code (code='folder') instead."
        )
    model, info = model_code.InternVLChatModel.from_pretrained(
        str(path), config=model_code.InternVLChatConfig(**config), dtype=dtype, output_loading_info=True)
    wrong = {key: names for key, names in info.items() if key != "error_msgs" and names}
    if wrong or info.get("error_msgs"):
        raise CheckpointError(f"{path}: its weights do not fit labkit's model code: {wrong or info['error_msgs']}.")
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(prog="labkit checkpoint", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder to write (or to check, with --check)")
    parser.add_argument("--tiny", action="store_true", help="write the tiny course model")
    parser.add_argument("--config", help="write this config.json's architecture (e.g. labkit/assets/internvl2-2b/config.json)")
    parser.add_argument("--check", action="store_true", help="only check an existing folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.tiny == bool(args.config) and not args.check:
        parser.error("give exactly one of --tiny or --config")
    try:
        if args.check:
            check_model_folder(args.out_dir)
            print(f"{args.out_dir}: looks like a complete InternVL2 checkpoint.")
            return 0
        config = load_config(args.config) if args.config else None
        out = write_checkpoint(args.out_dir, config=config, seed=args.seed, overwrite=args.overwrite)
    except (CheckpointError, FileExistsError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
