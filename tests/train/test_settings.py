"""labkit.train.settings and labkit.train.xtuner_config: one typed source of every knob, and the
XTuner configs rendered from it."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from labkit.fileio import REPO_ROOT
from labkit.train import settings as S
from labkit.train import xtuner_config as X
from labkit.train.settings import Settings, SettingsError  # noqa: F401


def test_course_gpu_holds_the_course_values():
    s = S.course_gpu()
    assert (s.method, s.lora_r, s.lora_alpha, s.lora_dropout, s.lora_target_modules) == ("lora", 128, 256, 0.05, None)
    assert s.freeze_llm and s.freeze_visual_encoder
    assert (s.lr, s.betas, s.weight_decay, s.warmup_ratio) == (3e-5, (0.9, 0.999), 0.05, 0.03)
    assert (s.max_epochs, s.batch_size, s.accumulative_counts, s.max_length) == (10, 4, 2, 8192)
    assert (s.save_steps, s.device, s.amp) == (64, "cuda", "bfloat16")


def test_tiny_lora_uses_the_same_method_as_the_course():
    tiny, course = S.tiny_lora_cpu(), S.course_gpu()
    for name in ("method", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "freeze_llm",
                 "freeze_visual_encoder"):
        assert getattr(tiny, name) == getattr(course, name), name
    assert tiny.device == "cpu" and tiny.amp == "off"


def test_unknown_setting_is_refused_with_a_suggestion():
    with pytest.raises(SettingsError, match=r"unknown setting 'learning_rate'") as err:
        S.tiny_lora_cpu().replace(learning_rate=1e-4)
    assert "lr" in str(err.value)
    with pytest.raises(SettingsError, match="Did you mean 'batch_size'"):
        S.tiny_lora_cpu().replace(batchsize=2)


@pytest.mark.parametrize("name, value, words", [
    ("batch_size", 0, "batch_size=0.*at least 1"),
    ("max_epochs", -1, "max_epochs=-1"),
    ("lr", 0.0, "lr=0.0.*positive"),
    ("warmup_ratio", 1.5, "warmup_ratio=1.5"),
    ("method", "prefix", "method='prefix'.*lora, qlora, full"),
    ("save_total_limit", 0, "save_total_limit=0"),
    ("betas", (0.9, 1.2), "betas"),
])
def test_impossible_values_name_the_setting(name, value, words):
    with pytest.raises(SettingsError, match=words):
        S.tiny_lora_cpu().replace(**{name: value})


@pytest.mark.parametrize("name, value", [
    ("batch_size", 2.0), ("batch_size", "8"), ("freeze_llm", 1), ("lr", "fast"), ("betas", (0.9,)),
    ("data_paths", (1, 2)), ("lora_target_modules", "wqkv"),
])
def test_wrong_types_are_refused(name, value):
    with pytest.raises(SettingsError, match=f"{name}=.*must be"):
        S.tiny_lora_cpu().replace(**{name: value})


def test_lists_and_single_paths_are_accepted():
    s = S.tiny_lora_cpu().replace(betas=[0.8, 0.95], data_paths="a.json", lora_target_modules=["wqkv", "wo"])
    assert s.betas == (0.8, 0.95) and s.data_paths == ("a.json",) and s.lora_target_modules == ("wqkv", "wo")
    assert S.tiny_lora_cpu().replace(lr=1) .lr == 1  # an int where a float is expected is fine


@pytest.mark.parametrize("overrides, words", [
    (dict(amp="float16"), "needs a GPU"),
    (dict(device="cuda", amp="float16", weights_dtype="bfloat16"), "cannot unscale"),
    (dict(method="qlora"), "bitsandbytes"),
    (dict(gpus=2), "CPU path is one process"),
    (dict(method="lora", freeze_llm=False), "freeze_llm"),
])
def test_combinations_that_cannot_run(overrides, words):
    with pytest.raises(SettingsError, match=words):
        S.tiny_lora_cpu().replace(**overrides)
    with pytest.raises(SettingsError, match="zero_stage"):
        S.course_gpu().replace(gpus=4)
    assert S.course_gpu().replace(gpus=4, zero_stage=2).gpus == 4


def test_a_failed_replace_leaves_the_original_untouched():
    s = S.tiny_lora_cpu()
    with pytest.raises(SettingsError):
        s.replace(batch_size=0)
    assert s.batch_size == S.tiny_lora_cpu().batch_size


# -- rendering ----------------------------------------------------------------------------
def test_committed_configs_equal_their_render():
    assert X.stale_configs() == [], f"run `{X.RENDER_COMMAND}` and commit configs/"


def test_committed_configs_say_they_are_generated():
    for name, preset in X.CONFIG_FILES.items():
        head = (REPO_ROOT / "configs" / name).read_text(encoding="utf-8").split("from mmengine")[0]
        assert f"Generated from labkit.train.settings' preset {preset}()" in head and X.RENDER_COMMAND in head
        assert "not this\n# file" in head and f"labkit.train.launch configs/{name}" in head
        assert "edit PART 1" not in head
    with pytest.raises(SettingsError, match="preset='mine'"):
        X.render_config(S.tiny_lora_cpu(), preset="mine")


def test_settings_check_command():
    done = subprocess.run([sys.executable, "-m", "labkit", "configs", "check"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_render_puts_part1_first_with_every_knob(tmp_path):
    text = X.render_config(S.course_gpu())
    part1 = text.index("PART 1  Settings")
    assert part1 < text.index("PART 2") < text.index("PART 3") < text.index("PART 4") < text.index("PART 5")
    block = text[part1:text.index("PART 2")]
    for name in ("model_path", "lora_r", "lr", "betas", "batch_size", "accumulative_counts", "warmup_ratio",
                 "save_steps", "max_length", "seed", "prompt_template"):
        assert f"\n{name} = " in block, name


def _load(settings, tmp_path, num_samples=None):
    from mmengine.config import Config

    path = X.write_config(settings, tmp_path / "cfg.py", num_samples=num_samples)
    return Config.fromfile(str(path))


def test_rendered_values_reach_xtuner_config(tmp_path):
    cfg = _load(S.course_gpu().replace(seed=7, lr=1e-4), tmp_path)
    assert cfg.model.type.__name__ == "LeanInternVL" and cfg.model.lean_logits is True
    assert cfg.model.weights_dtype == "bfloat16" and cfg.model.gradient_checkpointing is True
    assert cfg.optim_wrapper.optimizer.fused is True  # one kernel for the AdamW update on the GPU
    assert cfg.model.llm_lora.r == 128 and cfg.model.llm_lora.lora_alpha == 256
    assert cfg.model.llm_lora.target_modules is None
    assert cfg.optim_wrapper.type.__name__ == "AmpOptimWrapper" and cfg.optim_wrapper.dtype == "bfloat16"
    assert cfg.optim_wrapper.loss_scale == dict(enabled=False)  # a GradScaler cannot unscale bf16 grads
    assert cfg.optim_wrapper.optimizer.lr == 1e-4 and cfg.optim_wrapper.accumulative_counts == 2
    assert cfg.env_cfg.dist_cfg.backend == "nccl"
    assert cfg.randomness.seed == 7 and cfg.train_dataloader.sampler.seed == 7
    assert cfg.train_dataloader.dataset.template.SUFFIX == "<|im_end|>"


def test_cpu_config_uses_gloo_optimwrapper_and_the_lean_model(tmp_path):
    cfg = _load(S.tiny_lora_cpu(), tmp_path)
    assert cfg.optim_wrapper.type.__name__ == "OptimWrapper"
    assert cfg.env_cfg.dist_cfg.backend == "gloo"
    assert cfg.model.type.__name__ == "LeanInternVL" and cfg.model.lean_logits is True
    stock = _load(S.tiny_lora_cpu().replace(lean_logits=False, weights_dtype="bfloat16"), tmp_path)
    assert stock.model.type.__name__ == "InternVL_V1_5" and "lean_logits" not in stock.model
    assert "fused" not in cfg.optim_wrapper.optimizer  # the fused kernel is CUDA only
    fast = _load(S.course_gpu().replace(gradient_checkpointing=False), tmp_path)
    assert fast.model.gradient_checkpointing is False


def test_full_method_has_no_lora(tmp_path):
    cfg = _load(S.tiny_pretrain_cpu(), tmp_path)
    assert "llm_lora" not in cfg.model and cfg.model.freeze_llm is False


def _learning_rates(param_scheduler, steps):
    """Step mmengine's real schedulers, built from a rendered config, and record the rate."""
    from mmengine.optim.scheduler import CosineAnnealingLR, LinearLR

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    kinds = {"LinearLR": LinearLR, "CosineAnnealingLR": CosineAnnealingLR}
    schedulers = []
    for spec in param_scheduler:
        spec = dict(spec)
        kind = spec.pop("type")
        schedulers.append(kinds[kind.__name__](opt, **spec))
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        for sched in schedulers:
            sched.step()
    return rates


@pytest.mark.parametrize("samples", [1, 5, 30, 234, 5000])
def test_warmup_never_rounds_to_a_dead_schedule(tmp_path, samples):
    s = S.tiny_lora_cpu()
    cfg = _load(s, tmp_path, num_samples=samples)
    total = s.planned_iterations(samples)
    rates = _learning_rates(cfg.param_scheduler, total)
    assert max(rates) == pytest.approx(1.0, rel=1e-3)  # the peak rate is reached
    if total >= 3:
        assert 2 <= s.warmup_iterations(samples) < total
        assert rates[0] < 1e-3  # the warm-up starts low


def test_xtuner_style_epoch_warmup_is_what_the_guard_avoids():
    """Why the guard exists: 3% of a 3-iteration epoch x 3 epochs converts to int(0.09 * 3) = 0."""
    from mmengine.optim.scheduler import LinearLR

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError):
        LinearLR.build_iter_from_epoch(opt, start_factor=1e-5, by_epoch=True, begin=0, end=0.03 * 3,
                                       epoch_length=3)


def test_planned_iterations_match_xtuners_sampler_and_dataloader():
    """Count the batches XTuner's LengthGroupedSampler really yields through a DataLoader."""
    from torch.utils.data import DataLoader

    from xtuner.dataset.samplers import LengthGroupedSampler

    class Lengths(torch.utils.data.Dataset):
        def __init__(self, n):
            self.modality_length = [100 + i % 7 for i in range(n)]

        def __len__(self):
            return len(self.modality_length)

        def __getitem__(self, i):
            return i

    for samples, batch, accum in [(234, 8, 1), (37, 4, 2), (5, 8, 1), (100, 4, 2), (9, 2, 3)]:
        s = S.tiny_lora_cpu().replace(batch_size=batch, accumulative_counts=accum, max_epochs=1)
        sampler = LengthGroupedSampler(Lengths(samples), per_device_batch_size=batch * accum,
                                       length_property="modality_length", seed=0)
        assert len(DataLoader(Lengths(samples), batch_size=batch, sampler=sampler)) == s.planned_iterations(samples)


def test_several_annotation_files_build_one_xtuner_dataset(tmp_path, tiny_checkpoint):
    """XTuner wants as many image folders and repeat counts as annotation files."""
    from mmengine.config import Config

    from labkit.data.build import build_datasets
    from xtuner.registry import BUILDER

    sizes = {"general": {"train": 1, "val": 0, "test": 0}, "food": {"train": 1, "val": 0, "test": 0}}
    data = build_datasets(tmp_path / "data", sizes=sizes, held_back_factor=1)
    s = S.tiny_lora_cpu().replace(model_path=str(tiny_checkpoint), image_folder=str(data["image_folder"]), replay=0,
                                  data_paths=[str(data["food"]["train"]), str(data["general"]["train"])])
    cfg = Config.fromfile(str(X.write_config(s, tmp_path / "cfg.py", num_samples=23)))
    dataset = BUILDER.build(cfg.train_dataset)
    assert len(dataset) == 13 + 10
