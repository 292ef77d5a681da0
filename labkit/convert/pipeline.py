"""Turn an XTuner fine-tune checkpoint into a merged InternVL2 folder in the official format.

XTuner saves only what it trained: the LoRA matrices (``lora_A``, ``lora_B``) of every wrapped
Linear, the projector ``mlp1``, and the whole language model or vision tower when they were
not frozen. A ``.pth`` alone therefore cannot answer a question. Conversion rebuilds the model
exactly as XTuner held it during training, puts the trained weights back, folds each adapter
into its Linear and writes a folder that ``AutoModel.from_pretrained(..., trust_remote_code=True)``
and LMDeploy load like the original InternVL2-2B::

    labkit convert configs/food_lora.py work_dirs/food_lora/iter_500.pth models/food-merged

    from labkit.convert.pipeline import convert
    convert("configs/food_lora.py", "work_dirs/food_lora/iter_500.pth", "models/food-merged")

The steps, each a function in the module named:

1. ``trained.read_train_setup`` - from the XTuner config: the base model folder, the LoRA
   settings and the freeze flags (what XTuner trained, hence what the ``.pth`` must hold).
2. ``trained.read_trained_weights`` - the ``.pth`` (mmengine's ``{'meta', 'state_dict', ...}``
   dict, keys prefixed ``model.``) or a DeepSpeed checkpoint folder, read without running pickled code.
3. ``merge.wrap_like_xtuner`` + ``trained.load_trained_weights`` - the base model with PEFT LoRA
   on the same modules XTuner chose (every Linear of the LLM, its output head ``output``
   included), then the trained weights, refusing a checkpoint that does not fit.
4. ``merge.merge_lora`` - ``W <- W + (alpha / r) * B @ A`` for every wrapped Linear
   (PEFT's ``merge_and_unload``), done in fp32 and then rounded once to bf16.
5. Save safetensors (sharded above ``max_shard_size``); the folder keeps the base folder's own
   remote code, ``auto_map``, template, tokenizer files and generation config, whether labkit or
   OpenGVLab wrote them (``labkit.checkpoints.folder.finish_folder``).
6. Prove it (``merge.probe_inputs``, ``merge.run_fresh_process_check``): the merged model must
   give the LoRA model's logits on a prompt with image tokens (fp32, max abs diff <= 1e-4), and
   the folder must load in a fresh Python process through labkit's loader and answer a chat with
   the logits the merged model gives; a folder with labkit's own code must do the same with
   transformers alone and labkit not importable. The figures land in ``conversion.json``
   (`ConversionReport`, `read_report`).
7. The model card: ``README.md`` with the hub's metadata, the training settings and how to load
   the folder, and a ``.gitattributes`` for git-lfs (`labkit.convert.publish.write_card`).

This module runs the steps in order (`convert`, and ``main`` for the command line).
The folder is built under a temporary name beside ``out_dir`` and renamed only when every
check has passed, so a failed or interrupted conversion leaves nothing half-written.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from labkit import fileio
from labkit.checkpoints.folder import (
    CheckpointError,
    _prepare_out_dir,
    _publish,
    check_model_folder,
    check_out_dir,
    check_shard_size,
    finish_folder,
    has_labkit_code,
    load_checkpoint,
)
from labkit.convert import publish
from labkit.convert.merge import (
    FRESH_TOLERANCE,
    MERGE_TOLERANCE,
    count_lora_layers,
    logits_of,
    max_diff,
    merge_lora,
    probe_inputs,
    run_fresh_process_check,
    scaled_tolerance,
    wrap_like_xtuner,
)
from labkit.convert.trained import (
    ConversionError,
    load_trained_weights,
    load_trained_weights_loosely,
    read_train_setup,
    read_trained_weights,
)

REPORT_NAME = "conversion.json"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def folder_figures(folder):
    """File sizes, shard count and total weight bytes of a written model folder."""
    folder = Path(folder)
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    shards = [n for n in files if n.endswith(".safetensors")]
    return {"files": files, "shards": len(shards), "weight_bytes": sum(files[n] for n in shards)}


@dataclass
class ConversionReport:
    """What a conversion did and measured; saved as ``conversion.json`` in the folder."""

    out_dir: str
    config: str
    checkpoint: str
    base_model: str
    kind: str  # "lora" (adapters merged) or "full" (whole weights replaced)
    lora_targets: dict = field(default_factory=dict)
    tensors_loaded: int = 0
    lora_layers_merged: int = 0
    dtype: str = "bfloat16"
    parameters: int = 0
    logit_change_vs_base: float | None = None  # how much training moved the probe's logits
    max_logit_diff_merge: float | None = None  # LoRA model vs merged model, fp32
    merge_tolerance: float | None = None
    max_logit_diff_fresh: float | None = None  # merged model (rounded to dtype) vs the folder, fresh process
    fresh_answer: str | None = None
    fresh_loaders: list = field(default_factory=list)  # "labkit"; also "transformers" (labkit not importable)
    shards: int = 0
    weight_bytes: int = 0
    files: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self):
        lines = [
            f"converted {self.checkpoint} ({self.kind}) -> {self.out_dir}",
            f"  base {self.base_model}; {self.tensors_loaded} trained tensors loaded; "
            f"{self.lora_layers_merged} LoRA layers merged; {self.parameters:,} parameters in {self.dtype}",
            f"  {self.shards} safetensors file(s), {self.weight_bytes / 2**20:.2f} MiB of weights",
        ]
        if self.max_logit_diff_merge is not None:
            merged = "merged vs LoRA model" if self.kind == "lora" else "no LoRA to merge; merge step vs loaded model"
            lines.append(
                f"  training moved the probe logits by up to {self.logit_change_vs_base:.4g}; {merged}: "
                f"max |diff| {self.max_logit_diff_merge:.3g} (tolerance {self.merge_tolerance:.3g})"
            )
        if self.max_logit_diff_fresh is not None:
            lines.append(
                f"  fresh process ({' and '.join(self.fresh_loaders)} loader): logits max |diff| "
                f"{self.max_logit_diff_fresh:.3g}, "
                f"chat answered {self.fresh_answer!r}"
            )
        lines.append(f"  {self.seconds:.1f} s")
        return "\n".join(lines)


def _check_paths(setup, pth_path, out_dir):
    """Refuse an output folder that would swallow its own inputs (``--overwrite`` deletes it)."""
    out = out_dir.resolve()
    inputs = (("the base model", setup.model_path), ("the checkpoint", pth_path), ("the config", setup.config_path))
    for name, path in inputs:
        path = Path(path).resolve()
        if path == out or out in path.parents:
            raise ConversionError(f"{out_dir}: is (or contains) {name} {path}; write the merged model somewhere else.")


def _dtype(value):
    if isinstance(value, torch.dtype):
        return value
    if value not in DTYPES:
        raise ConversionError(f"dtype {value!r}: choose one of {', '.join(DTYPES)}.")
    return DTYPES[value]


def convert(config_path, pth_path, out_dir, overwrite=False, max_shard_size="2GB", verify=True,
            dtype="bfloat16", quiet=False, model_card=True):
    """Convert an XTuner checkpoint into a merged official InternVL2 folder; return its path.

    ``config_path``: the XTuner config that trained it; ``pth_path``: its ``iter_*.pth`` file (or
    DeepSpeed folder); ``out_dir``: a new (or empty) folder - pass ``overwrite=True`` to replace one.
    ``verify`` runs the logit and fresh-process checks (figures in ``out_dir/conversion.json``).
    ``model_card`` writes the folder's README.md and .gitattributes (`labkit.convert.publish.write_card`).
    """
    started = time.time()
    setup = read_train_setup(config_path)
    pth_path, out_dir, dtype = Path(pth_path), Path(out_dir), _dtype(dtype)
    _check_paths(setup, pth_path, out_dir)
    check_out_dir(out_dir, overwrite)  # before any weights are read: new, empty, or a model folder to replace
    check_shard_size(max_shard_size)
    weights = read_trained_weights(pth_path)
    pretrained = read_trained_weights(setup.pretrained_pth) if setup.pretrained_pth else None
    check_model_folder(setup.model_path)
    out_dir, tmp_dir = _prepare_out_dir(out_dir, overwrite)
    try:
        report = _convert_into(setup, weights, pretrained, pth_path, tmp_dir, max_shard_size, verify, dtype)
        report.out_dir, report.seconds = str(out_dir), round(time.time() - started, 2)
        fileio.write_json(tmp_dir / REPORT_NAME, asdict(report))
        if model_card:
            publish.write_card(tmp_dir, repo_id=publish.suggest_repo_name(
                out_dir, publish.hub_base_model(setup.model_path), report.kind, report.parameters))
        _publish(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    if not quiet:
        print(report.summary())
    return out_dir


def _convert_into(setup, weights, pretrained, pth_path, folder, max_shard_size, verify, dtype):
    model, tokenizer = load_checkpoint(setup.model_path, dtype=torch.float32)
    report = ConversionReport(
        out_dir=str(folder), config=str(setup.config_path), checkpoint=str(pth_path),
        base_model=str(setup.model_path), kind="lora" if (setup.llm_lora or setup.visual_encoder_lora) else "full",
        dtype=str(dtype).replace("torch.", ""),
    )
    inputs = probe_inputs(model, tokenizer) if verify else None
    base_logits = logits_of(model, inputs) if verify else None
    report.lora_targets = wrap_like_xtuner(model, setup)
    if pretrained is not None:
        load_trained_weights_loosely(model, pretrained, setup)
    report.tensors_loaded = load_trained_weights(model, weights, setup, pth_path)
    report.lora_layers_merged = count_lora_layers(model)
    trained_logits = logits_of(model, inputs) if verify else None
    merge_lora(model)
    if verify:
        merged_logits = logits_of(model, inputs)
        report.logit_change_vs_base = max_diff(trained_logits, base_logits)
        report.max_logit_diff_merge = max_diff(merged_logits, trained_logits)
        report.merge_tolerance = scaled_tolerance(MERGE_TOLERANCE, trained_logits)
        if report.max_logit_diff_merge > report.merge_tolerance:
            raise ConversionError(
                f"The merged model does not reproduce the LoRA model: logits differ by up to "
                f"{report.max_logit_diff_merge:.3g} (> {report.merge_tolerance:.3g}); nothing was written."
            )
    # Round the weights, not the model: model.to(bf16) would also round buffers that are never
    # saved (OpenGVLab's rotary inv_freq / cos / sin tables), which a fresh load recomputes in
    # fp32, so the reference below would differ from the folder by rounding that is not in it.
    rounded = {name: tensor.to(dtype) for name, tensor in model.state_dict().items()}
    _record_dtype(model, dtype)
    report.parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, state_dict=rounded, safe_serialization=True, max_shard_size=max_shard_size)
    finish_folder(folder, tokenizer, dtype, base=setup.model_path)
    check_model_folder(folder)
    if verify:
        model.load_state_dict({name: tensor.float() for name, tensor in rounded.items()})
        reference = logits_of(model, inputs)  # the written weights, computed here
        del model, rounded
        report.fresh_loaders = ["labkit"] + (["transformers"] if has_labkit_code(folder) else [])
        for loader in report.fresh_loaders:
            fresh = run_fresh_process_check(folder, inputs, loader=loader)
            diff = max_diff(fresh["logits"], reference)
            report.max_logit_diff_fresh = max(diff, report.max_logit_diff_fresh or 0.0)
            report.fresh_answer = report.fresh_answer or fresh["answer"]
            if diff > scaled_tolerance(FRESH_TOLERANCE, reference):
                raise ConversionError(
                    f"The written folder gives other logits in a fresh process ({loader} loader, max |diff| "
                    f"{diff:.3g}); the saved weights do not match the merged model."
                )
    figures = folder_figures(folder)
    report.files, report.shards, report.weight_bytes = figures["files"], figures["shards"], figures["weight_bytes"]
    return report


def _record_dtype(model, dtype):
    """Write the weights' dtype into config.json, in the nested llm/vision configs too (as InternVL2-2B)."""
    configs = [model.config, getattr(model.config, "llm_config", None), getattr(model.config, "vision_config", None),
               getattr(model.language_model, "config", None), getattr(model.vision_model, "config", None)]
    for config in filter(None, configs):
        config.torch_dtype = dtype


def read_report(folder):
    """The ``conversion.json`` a conversion left in ``folder``, as a dict."""
    path = Path(folder) / REPORT_NAME
    if not path.is_file():
        raise ConversionError(f"{path}: missing; was {folder} written by labkit.convert.pipeline?")
    return json.loads(path.read_text(encoding="utf-8"))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="labkit convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the XTuner config (.py) the fine-tune ran with")
    parser.add_argument("pth", help="its checkpoint: work_dirs/<config>/iter_N.pth (file, or DeepSpeed folder)")
    parser.add_argument("out_dir", help="the folder to write the merged model to")
    parser.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")
    parser.add_argument("--max-shard-size", default="2GB", help="split safetensors above this size (e.g. 200MB)")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--no-verify", action="store_true", help="skip the logit and fresh-process checks")
    parser.add_argument("--no-card", action="store_true", help="write no model card (README.md) or .gitattributes")
    args = parser.parse_args(argv)
    try:
        convert(args.config, args.pth, args.out_dir, overwrite=args.overwrite, max_shard_size=args.max_shard_size,
                verify=not args.no_verify, dtype=args.dtype, model_card=not args.no_card)
    except (ConversionError, CheckpointError, FileExistsError, NotADirectoryError, publish.PublishError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
