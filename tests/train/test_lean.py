"""labkit.train.lean.LeanInternVL: XTuner's loss, computed from the supervised positions only."""
from __future__ import annotations

import copy
import json
import os

import pytest
import torch
import torch.distributed as dist
from helpers import noise_image

from labkit.train.launch import free_port


@pytest.fixture(scope="module", autouse=True)
def process_group():
    """XTuner's model asks torch.distributed for its rank: a one-member gloo group, as on the CPU."""
    if dist.is_initialized():
        yield
        return
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def batch(parity_checkpoint, tmp_path_factory):
    """A real XTuner batch of two samples of different lengths (so one is padded)."""
    from mmengine.config import ConfigDict

    from xtuner.dataset import InternVL_V1_5_Dataset
    from xtuner.dataset.collate_fns import default_collate_fn
    from xtuner.utils import PROMPT_TEMPLATE

    root = tmp_path_factory.mktemp("lean-data")
    (root / "images").mkdir()
    noise_image(192, 64, seed=1).save(root / "images" / "wide.png")
    noise_image(64, 64, seed=2).save(root / "images" / "square.png")
    records = [
        {"image": "wide.png", "conversations": [{"from": "human", "value": "<image>\n图中的菜是什么？"},
                                                {"from": "gpt", "value": "图中的菜是叉烧包。"}]},
        {"image": "square.png", "conversations": [{"from": "human", "value": "<image>\n这是哪一道菜？"},
                                                  {"from": "gpt", "value": "图中的菜是肠粉。"}]},
    ]
    (root / "train.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    dataset = InternVL_V1_5_Dataset(str(parity_checkpoint), ConfigDict(PROMPT_TEMPLATE.internlm2_chat),
                                    str(root / "train.json"), str(root / "images"), max_length=2048)
    return default_collate_fn([dataset[0], dataset[1]])["data"]


LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=None, task_type="CAUSAL_LM")


def _pair(path, lora):
    """XTuner's stock model and the lean one, identical weights, float32, LoRA B non-zero."""
    from peft import LoraConfig

    from labkit.train.lean import LeanInternVL
    from xtuner.model import InternVL_V1_5

    kwargs = dict(freeze_llm=lora, freeze_visual_encoder=True,
                  llm_lora=dict(type=LoraConfig, **LORA) if lora else None)
    stock = InternVL_V1_5(str(path), **copy.deepcopy(kwargs)).float()
    lean = LeanInternVL(str(path), weights_dtype="float32", **copy.deepcopy(kwargs))
    if lora:  # fresh LoRA B matrices are zero: make the adapters matter
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in stock.named_parameters():
                if "lora_B" in name:
                    param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    lean.load_state_dict(stock.state_dict(), strict=False)
    for name, value in stock.model.state_dict().items():
        assert torch.equal(value, lean.model.state_dict()[name]), name
    return stock, lean


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_lean_loss_and_gradients_equal_xtuners(parity_checkpoint, batch, lora):
    stock, lean = _pair(parity_checkpoint, lora)
    losses, grads = [], []
    for model in (stock, lean):
        model.train()
        loss = model(copy.copy(batch))["loss"]
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert abs(losses[0] - losses[1]) < 1e-5, losses
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_lean_reaches_the_lora_wrapped_output_head(parity_checkpoint, batch):
    from peft.tuners.lora import LoraLayer

    _, lean = _pair(parity_checkpoint, lora=True)
    decoder, head = lean.decoder_and_head()
    assert isinstance(head, LoraLayer), "XTuner's LoRA wraps InternLM2's `output` head too"
    assert type(decoder).__name__ == "InternLM2Model"


def test_logits_exist_only_at_supervised_positions(parity_checkpoint, batch):
    _, lean = _pair(parity_checkpoint, lora=False)
    out = lean._llm_forward(pixel_values=torch.cat([p for p in batch["pixel_values"]]).float(),
                            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            position_ids=batch["position_ids"], image_flags=torch.ones(5, dtype=torch.long),
                            labels=batch["labels"])
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    total = batch["input_ids"].numel()
    vocab = lean.model.language_model.config.vocab_size
    assert out.logits.shape == (supervised, vocab)
    assert supervised < total / 4  # image tokens and the prompt are most of every sequence


def test_batch_without_answers_gives_zero_loss_not_nan(parity_checkpoint, batch):
    _, lean = _pair(parity_checkpoint, lora=False)
    silent = dict(batch, labels=torch.full_like(batch["labels"], -100))
    loss = lean(silent)["loss"]
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph


def test_image_slots_cut_by_max_length_are_reported(parity_checkpoint, batch):
    _, lean = _pair(parity_checkpoint, lora=False)
    cut = {k: (v[:, :40] if k in ("input_ids", "labels", "attention_mask", "position_ids") else v)
           for k, v in batch.items()}
    with pytest.raises(ValueError, match="max_length"):
        lean(cut)


def test_frozen_weights_stay_bfloat16_and_checkpointing_can_be_turned_off(parity_checkpoint, batch):
    """PEFT's preparation casts the frozen LLM to float32; LeanInternVL casts it back (exactly),
    keeps the adapters in float32, and gives the same loss with or without checkpointing."""
    from peft import LoraConfig

    from labkit.train.lean import LeanInternVL

    def build(**options):
        return LeanInternVL(str(parity_checkpoint), freeze_llm=True, freeze_visual_encoder=True,
                            llm_lora=dict(type=LoraConfig, **LORA), **options)

    lean = build()
    frozen = {p.dtype for p in lean.model.parameters() if not p.requires_grad}
    adapters = {p.dtype for n, p in lean.model.named_parameters() if "lora_" in n}
    assert frozen == {torch.bfloat16} and adapters == {torch.float32}
    assert lean.model.language_model.is_gradient_checkpointing

    fast = build(gradient_checkpointing=False)
    assert not fast.model.language_model.is_gradient_checkpointing
    fast.load_state_dict(lean.state_dict(), strict=False)
    losses = []
    for model in (lean, fast):
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses.append(model(copy.copy(batch))["loss"])
        losses[-1].backward()
    assert torch.isfinite(losses[0]) and abs(losses[0].item() - losses[1].item()) < 1e-3


def test_lora_inputs_stay_bfloat16_under_autocast_with_the_same_loss(parity_checkpoint, batch):
    """Under autocast PEFT's float32 cast of each LoRA input is skipped (autocast would cast it
    straight back); without autocast the cast stays. The loss is the same either way."""
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer

    from labkit.train.lean import LeanInternVL

    lean = LeanInternVL(str(parity_checkpoint), freeze_llm=True, freeze_visual_encoder=True,
                        llm_lora=dict(type=LoraConfig, **LORA))
    lean.train()
    layers = [m for m in lean.model.modules() if isinstance(m, LoraLayer)]
    assert layers
    losses = {}
    for autocast in (True, False):
        lean.set_lora_input_cast(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            losses[autocast] = lean(copy.copy(batch))["loss"].item()
        assert all(m.cast_input_dtype_enabled is (not autocast) for m in layers)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lean.set_lora_input_cast(True)
        lean.match_lora_input_dtype = lambda: None  # keep PEFT's cast under autocast, for comparison
        with_cast = lean(copy.copy(batch))["loss"].item()
    assert with_cast == losses[True]
