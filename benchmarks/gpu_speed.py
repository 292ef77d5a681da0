"""Where a LoRA training step of InternVL2-2B spends its time on a GPU, and what each fix gains.

One process, one model (InternVL2-2B's real architecture, random bf16 weights, labkit's official
format), one real XTuner batch (InternVL_V1_5_Dataset + default_collate_fn) of phone-photo-shaped
pictures: 13 tiles, about 3,370 tokens per sample. The model is XTuner's InternVL_V1_5 through
labkit.train.lean.LeanInternVL with the course's LoRA (r 128, alpha 256, dropout 0.05 on every LLM
Linear, frozen ViT and LLM, mlp1 trained). A step is what XTuner's AmpOptimWrapper does: bf16
autocast forward, backward, gradient clipping at 1.0, AdamW.

Variants, each adding one change to the one before (the ablation):
    stock       XTuner as it is: full-vocabulary logits, explicit attention mask (SDPA cannot use
                FlashAttention), the frozen LLM in float32 (PEFT's prepare step casts it), gradient
                checkpointing
    +lean       logits and loss only at supervised positions (labkit.train.lean)
    +flash      no explicit mask for right-padded batches: plain causal SDPA -> FlashAttention
    +bf16       frozen weights back to bfloat16 (LeanInternVL's default)
    +no-cast    LoRA inputs stay bfloat16 under autocast (PEFT casts them to float32 and autocast
                casts them straight back; LeanInternVL skips that)
    +fused      AdamW's fused CUDA kernel (the rendered GPU configs ask for it)
    +no-ckpt    no gradient checkpointing (the recompute pass goes; memory goes up)
and, for information only (it changes the recipe, so the kit does not do it):
    +no-dropout LoRA dropout removed

Every variant first computes the loss and gradient norm at the same starting weights with LoRA
dropout off, so "same loss" is checked, not assumed. Then a batch sweep of the kit's
configurations gives step time, tokens/s and peak memory (allocated and reserved) beside the
planner's estimate, and torch.profiler shows the top kernels of the first and last variant.

    python benchmarks/gpu_speed.py --batch 4 --steps 4 --sweep 1 2 4 8 --out results.json
    python benchmarks/gpu_speed.py --tiny --batch 2 --steps 2 --sweep 1 2    # same code on a CPU
"""
import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_train import write_data  # noqa: E402

from labkit.train import plan  # noqa: E402
from labkit.checkpoints.folder import INTERNVL2_2B_CONFIG, build_model, load_config, write_checkpoint  # noqa: E402
from labkit.train.launch import free_port  # noqa: E402

ANCHOR_TOKENS_PER_S = 9600  # transformers' InternVL + PEFT, same LoRA, batch 4, H200 (the issue's figure)

# name: lean logits, flash shortcut, frozen weights bf16, LoRA input cast skipped, fused AdamW,
# gradient checkpointing, LoRA dropout
VARIANTS = [
    ("stock", dict(lean=False, flash=False, bf16=False, no_cast=False, fused=False, ckpt=True, dropout=True)),
    ("+lean", dict(lean=True, flash=False, bf16=False, no_cast=False, fused=False, ckpt=True, dropout=True)),
    ("+flash", dict(lean=True, flash=True, bf16=False, no_cast=False, fused=False, ckpt=True, dropout=True)),
    ("+bf16", dict(lean=True, flash=True, bf16=True, no_cast=False, fused=False, ckpt=True, dropout=True)),
    ("+no-cast", dict(lean=True, flash=True, bf16=True, no_cast=True, fused=False, ckpt=True, dropout=True)),
    ("+fused", dict(lean=True, flash=True, bf16=True, no_cast=True, fused=True, ckpt=True, dropout=True)),
    ("+no-ckpt", dict(lean=True, flash=True, bf16=True, no_cast=True, fused=True, ckpt=False, dropout=True)),
    ("+no-dropout (info)", dict(lean=True, flash=True, bf16=True, no_cast=True, fused=True, ckpt=False,
                                dropout=False)),
]
KIT = dict(flash=True, bf16=True, no_cast=True, fused=True, dropout=True)
# the kit's configurations for the sweep: name, lean, gradient checkpointing
SWEEP = [("full-logits", False, True), ("lean", True, True), ("lean+no-ckpt", True, False)]


class Bench:
    def __init__(self, model_dir, batch, device, dtype):
        import torch
        from peft import LoraConfig

        from labkit.train.lean import LeanInternVL

        self.torch, self.device, self.dtype = torch, device, dtype
        lora = dict(type=LoraConfig, r=128, lora_alpha=256, lora_dropout=0.05, target_modules=None,
                    task_type="CAUSAL_LM")
        self.model = LeanInternVL(str(model_dir), freeze_llm=True, freeze_visual_encoder=True,
                                  llm_lora=lora, lean_logits=False).to(device)
        self.model.train()
        self.batch = batch
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.start = [p.detach().clone() for p in self.trainable]
        self.lm_module = sys.modules[type(self.model.causal_lm()).__module__]
        self.dropouts = {name: module for name, module in self.model.named_modules()
                         if name.endswith("lora_dropout.default")}

    # -- switches -------------------------------------------------------------------------
    def configure(self, lean, flash, bf16, no_cast, fused, ckpt, dropout):
        torch = self.torch
        self.fused = fused and self.device == "cuda"
        self.model.match_lora_input_dtype = lambda: None  # the benchmark decides, not autocast
        self.model.set_lora_input_cast(not no_cast)
        self.model.lean_logits = lean
        self.lm_module.CAUSAL_SHORTCUT = flash
        # stock XTuner leaves the frozen LLM in float32 (PEFT's prepare step); the vision tower stays bf16
        self.model.cast_frozen(torch.bfloat16 if bf16 else torch.float32, self.model.model.language_model)
        if ckpt:
            self.model.gradient_checkpointing_enable()
        else:
            self.model.gradient_checkpointing_disable()
        self.set_dropout(dropout)

    def set_dropout(self, on):
        parents = dict(self.model.named_modules())
        for name, module in self.dropouts.items():
            parent_name, child = name.rsplit(".", 1)
            parents[parent_name][child] = module if on else self.torch.nn.Identity()

    def reset(self):
        with self.torch.no_grad():
            for param, value in zip(self.trainable, self.start):
                param.copy_(value)
                param.grad = None

    # -- measuring ------------------------------------------------------------------------
    def data(self, size):
        return {k: v[:size] for k, v in self.batch.items()}

    @property
    def tiles_per_sample(self):
        return self.batch["pixel_values"].shape[1]  # (batch, tiles, 3, H, W)

    def autocast(self):
        return self.torch.autocast(self.device, dtype=self.torch.bfloat16)

    def loss_and_grad(self, size):
        """Loss and trainable-gradient norm at the starting weights, LoRA dropout off."""
        torch = self.torch
        self.reset()
        self.set_dropout(False)
        with self.autocast():
            loss = self.model(self.data(size), mode="loss")["loss"]
        loss.backward()
        norm = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in self.trainable if p.grad is not None))
        self.reset()
        return float(loss), float(norm)

    def steps(self, size, count, warmup=2):
        """Median step time (s) and peak memory (GiB allocated, reserved) over ``count`` steps."""
        torch = self.torch
        self.reset()
        optimizer = torch.optim.AdamW(self.trainable, lr=3e-5, betas=(0.9, 0.999), weight_decay=0.05,
                                      fused=self.fused or None)
        data = self.data(size)
        times = []
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        for i in range(warmup + count):
            started = time.perf_counter()
            with self.autocast():
                loss = self.model(data, mode="loss")["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if self.device == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - started)
        memory = (None, None)
        if self.device == "cuda":
            memory = (torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30)
        del optimizer
        self.reset()
        return statistics.median(times), memory

    def vision_forward(self, size, count=5):
        """Median seconds of the frozen vision tower + mlp1 forward for ``size`` samples."""
        torch = self.torch
        pixels = self.data(size)["pixel_values"].flatten(0, 1).to(self.torch.bfloat16)
        times = []
        for i in range(count + 2):
            if self.device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            with torch.no_grad(), self.autocast():
                self.model.model.extract_feature(pixels)
            if self.device == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - started)
        return statistics.median(times)

    def tokens(self, size):
        return int(self.batch["attention_mask"][:size].sum())

    def profile(self, size, rows=15):
        torch = self.torch
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
        self.steps(size, 1, warmup=1)
        with profile(activities=activities) as prof:
            self.steps(size, 1, warmup=0)
        key = "cuda_time_total" if self.device == "cuda" else "cpu_time_total"
        with contextlib.suppress(Exception):
            key = "device_time_total" if self.device == "cuda" else key
            return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=70)
        return prof.key_averages().table(sort_by="cpu_time_total", row_limit=rows)


def make_batch(model_dir, data_root, batch, size, device):
    from mmengine.config import ConfigDict

    from xtuner.dataset import InternVL_V1_5_Dataset
    from xtuner.dataset.collate_fns import default_collate_fn
    from xtuner.utils import PROMPT_TEMPLATE

    data, images = write_data(data_root, batch, size)
    dataset = InternVL_V1_5_Dataset(str(model_dir), ConfigDict(PROMPT_TEMPLATE.internlm2_chat), str(data),
                                    str(images), max_length=8192)
    collated = default_collate_fn([dataset[i] for i in range(batch)])["data"]
    out = {}
    for key, value in collated.items():
        if key == "pixel_values" and isinstance(value, list):  # every picture has the same size here
            value = __import__("torch").stack(value)
        out[key] = value.to(device) if hasattr(value, "to") else value
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="batch size of the ablation")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement (after 2 warm-up)")
    parser.add_argument("--sweep", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--vision-only", action="store_true", help="only time the frozen vision tower's forward")
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (checks the code)")
    parser.add_argument("--size", type=int, nargs=2, default=[896, 672])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)  # XTuner's model asks for its rank
    work = Path(tempfile.mkdtemp(prefix="gpu-speed-"))
    device = "cpu" if args.tiny else "cuda"
    started = time.perf_counter()
    if args.tiny:
        model_dir = write_checkpoint(work / "model")
        config = load_config(model_dir / "config.json")
        config["max_dynamic_patch"] = 12  # the same 4x3 grid + thumbnail at 64 px tiles
        (model_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        size = (256, 192)
    else:
        config = load_config(INTERNVL2_2B_CONFIG)
        model_dir = write_checkpoint(work / "model", config=config, max_shard_size="5GB",
                                     model=build_model(config, dtype=torch.bfloat16, device="cuda"))
        torch.cuda.empty_cache()
        size = tuple(args.size)
    largest = max([args.batch] + list(args.sweep))
    batch = make_batch(model_dir, work / "data", largest, size, device)
    bench = Bench(model_dir, batch, device, torch.bfloat16)
    print(f"setup {time.perf_counter() - started:.0f} s; {bench.tiles_per_sample} tiles and "
          f"{bench.tokens(1)} tokens per sample; {len(bench.dropouts)} LoRA dropouts", flush=True)

    report = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
              "torch": torch.__version__, "tiles_per_sample": bench.tiles_per_sample,
              "tokens_per_sample": bench.tokens(1), "batch": args.batch, "ablation": [], "sweep": []}
    vision = bench.vision_forward(args.batch)
    report["vision_forward_s"] = round(vision, 4)
    print(f"frozen vision tower + mlp1 forward, batch {args.batch}: {vision * 1000:.1f} ms", flush=True)
    if args.vision_only:
        print(json.dumps(report, indent=2))
        return
    tokens = bench.tokens(args.batch)
    reference = None
    for name, knobs in VARIANTS:
        bench.configure(**knobs)
        loss, norm = bench.loss_and_grad(args.batch)
        bench.configure(**knobs)
        step, (allocated, reserved) = bench.steps(args.batch, args.steps)
        reference = reference or (loss, norm, step)
        row = {"variant": name, "step_s": round(step, 4), "tokens_per_s": round(tokens / step),
               "speedup_vs_stock": round(reference[2] / step, 2),
               "vs_anchor": round(tokens / step / ANCHOR_TOKENS_PER_S, 2),
               "peak_allocated_gib": allocated and round(allocated, 2),
               "peak_reserved_gib": reserved and round(reserved, 2),
               "loss": round(loss, 5), "loss_rel_diff": round(abs(loss - reference[0]) / reference[0], 5),
               "grad_norm": round(norm, 5), "grad_norm_rel_diff": round(abs(norm - reference[1]) / reference[1], 4)}
        report["ablation"].append(row)
        print(row, flush=True)

    for name, lean, ckpt in SWEEP:
        bench.configure(lean=lean, ckpt=ckpt, **KIT)
        for size_ in args.sweep:
            try:
                step, (allocated, reserved) = bench.steps(size_, args.steps)
            except torch.OutOfMemoryError:
                row = {"config": name, "batch": size_, "error": "out of memory"}
            else:
                planned = None if args.tiny else plan.estimate(
                    INTERNVL2_2B_CONFIG, method="lora", lora_r=128, batch_size=size_,
                    tiles=bench.tiles_per_sample, lean_logits=lean, gradient_checkpointing=ckpt).total
                row = {"config": name, "batch": size_, "step_s": round(step, 4),
                       "tokens_per_s": round(bench.tokens(size_) / step),
                       "peak_allocated_gib": allocated and round(allocated, 2),
                       "peak_reserved_gib": reserved and round(reserved, 2),
                       "planned_gib": planned and round(planned, 2),
                       "plan_over_allocated": planned and allocated and round(planned / allocated, 3)}
            report["sweep"].append(row)
            print(row, flush=True)
            if device == "cuda":
                torch.cuda.empty_cache()

    if not args.no_profile:
        for name, knobs in (VARIANTS[0], VARIANTS[-2]):
            bench.configure(**knobs)
            table = bench.profile(args.batch)
            report.setdefault("profiles", {})[name] = table
            print(f"== profile: {name}, batch {args.batch}\n{table}", flush=True)

    report["wall_s"] = round(time.perf_counter() - started, 1)
    summary = copy.deepcopy(report)
    summary.pop("profiles", None)
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
