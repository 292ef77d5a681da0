"""The memory planner: its anchors, its verdicts, its budgets and its counts against real modules."""

import contextlib
import json

import pytest
import torch

from labkit.train import plan
from labkit.train.settings import course_gpu
from labkit.fileio import REPO_ROOT

REAL_CONFIG = REPO_ROOT / "labkit" / "assets" / "internvl2-2b" / "config.json"

# The InternVL2-2B numbers of /work/shared/internvl2-format.md section 2, written out here so
# the planner is checked against the documented sizes, not against its own defaults.
SECTION_2 = {
    "downsample_ratio": 0.5,
    "dynamic_image_size": True,
    "force_image_size": 448,
    "max_dynamic_patch": 12,
    "min_dynamic_patch": 1,
    "use_thumbnail": True,
    "ps_version": "v2",
    "select_layer": -1,
    "template": "internlm2-chat",
    "torch_dtype": "bfloat16",
    "vision_config": {
        "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
        "intermediate_size": 4096, "image_size": 448, "patch_size": 14, "num_channels": 3,
        "qkv_bias": True,
    },
    "llm_config": {
        "hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 16,
        "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 92553,
        "tie_word_embeddings": False,
    },
}

CONFIGS = [pytest.param(SECTION_2, id="section-2-dict")]
if REAL_CONFIG.is_file():
    CONFIGS.append(pytest.param(REAL_CONFIG, id="configs/internvl2-2b"))

COURSE_BUDGET = "A100 80GB x 30%"


def anchor_plan(config, batch, lean):
    return plan.estimate(config, batch_size=batch, lean_logits=lean, **plan.ANCHOR_SETTINGS)


# ---------------------------------------------------------------- the measured anchors


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("batch,lean,measured", plan.MEASURED_ANCHORS)
def test_anchor_within_15_percent(config, batch, lean, measured):
    predicted = anchor_plan(config, batch, lean).total
    assert abs(predicted / measured - 1) <= 0.15, (batch, lean, predicted, measured)


def test_anchor_sequence_is_3418_tokens():
    assert anchor_plan(SECTION_2, 1, False).sequence_length == 13 * 256 + 90 == 3418


def test_logits_dominate_and_lean_logits_removes_them():
    full, lean = anchor_plan(SECTION_2, 8, False), anchor_plan(SECTION_2, 8, True)
    assert full.logits > full.activations > 0
    assert lean.logits < full.logits / 30  # 90 supervised positions instead of 3418
    assert lean.total < full.total * 0.6


def test_refitting_reproduces_the_calibration():
    fitted = plan.fit_calibration(SECTION_2)
    assert fitted.logit_bytes_per_element == pytest.approx(
        plan.CALIBRATION.logit_bytes_per_element, abs=0.1)
    assert fitted.activation_scale == pytest.approx(plan.CALIBRATION.activation_scale, abs=0.02)
    # a logit element costs about bf16 (2) + fp32 upcast (4) + fp32 gradient (4) bytes
    assert 8 <= fitted.logit_bytes_per_element <= 11


def test_real_config_file_gives_the_same_plan_as_section_2():
    if not REAL_CONFIG.is_file():
        pytest.skip("labkit/assets/internvl2-2b/config.json is not there yet")
    for folder_or_file in (REAL_CONFIG, REAL_CONFIG.parent):
        assert anchor_plan(folder_or_file, 4, False).total == anchor_plan(SECTION_2, 4, False).total


# ---------------------------------------------------------------- the kit's own measurements


@pytest.mark.parametrize("engine,batch,lean,ckpt,measured", plan.KIT_MEASUREMENTS)
def test_kit_measurements_within_15_percent(engine, batch, lean, ckpt, measured):
    """XTuner's logged peaks on an H200 (benchmarks/gpu_train.py): both of the kit's engines,
    lean logits on and off, with and without gradient checkpointing."""
    predicted = plan.estimate(SECTION_2, engine=engine, batch_size=batch, lean_logits=lean,
                              gradient_checkpointing=ckpt, **plan.KIT_SETTINGS).total
    assert abs(predicted / measured - 1) <= 0.15, (engine, batch, lean, ckpt, predicted, measured)


def test_refitting_reproduces_the_kit_calibration():
    fitted = plan.fit_calibration(SECTION_2, plan.KIT_MEASUREMENTS)
    cal = plan.KIT_CALIBRATION
    assert fitted.logit_bytes_per_element == pytest.approx(cal.logit_bytes_per_element, abs=0.1)
    assert fitted.activation_scale == pytest.approx(cal.activation_scale, abs=0.02)
    assert fitted.no_checkpoint_scale == pytest.approx(cal.no_checkpoint_scale, abs=0.02)


def test_engines_differ_where_their_code_differs():
    settings = dict(batch_size=4, tiles=13)
    labkit = plan.estimate(SECTION_2, engine="labkit", **settings)
    xtuner = plan.estimate(SECTION_2, engine="xtuner", **settings)
    llm = plan.count_parameters(plan.read_model_shape(SECTION_2))
    llm_params = llm["llm_linears"] + llm["llm_other"] + llm["embeddings"] + llm["head"]
    # PEFT's preparation leaves XTuner's frozen LLM in fp32: 2 more bytes per LLM weight
    assert xtuner.weights - labkit.weights == pytest.approx(llm_params * 2 / plan.GIB)
    assert xtuner.activations > labkit.activations  # fp32 LoRA inputs
    without = plan.estimate(SECTION_2, engine="labkit", gradient_checkpointing=False, **settings)
    assert without.activations > 3 * labkit.activations
    with pytest.raises(ValueError, match="unknown engine 'deepspeed'"):
        plan.estimate(SECTION_2, engine="deepspeed")


# ---------------------------------------------------------------- the course's case


def test_course_case_batch_4_does_not_fit_batch_2_fits():
    verdict4 = plan.fits(anchor_plan(SECTION_2, 4, False), COURSE_BUDGET)
    verdict2 = plan.fits(anchor_plan(SECTION_2, 2, False), COURSE_BUDGET)
    assert not verdict4 and str(verdict4).startswith("does not fit")
    assert verdict2 and str(verdict2).startswith("fits")


@pytest.mark.parametrize("engine", plan.ENGINES)
def test_course_case_holds_for_every_engine_and_lean_logits_make_batch_4_fit(engine):
    def course(batch, lean=False):
        return plan.estimate(SECTION_2, engine=engine, batch_size=batch, tiles=13, lean_logits=lean)

    assert not plan.fits(course(4), COURSE_BUDGET)
    assert plan.fits(course(2), COURSE_BUDGET)
    assert plan.fits(course(4, lean=True), COURSE_BUDGET)


def test_margin_decides_borderline_cases():
    p = anchor_plan(SECTION_2, 4, False)  # ~24.4 GiB
    assert plan.fits(p, "32GB", margin=0.0)
    assert not plan.fits(p, "32GB", margin=0.3)
    with pytest.raises(ValueError, match="margin"):
        plan.fits(p, "32GB", margin=1.5)


def test_recommend_course_budget_keeps_effective_batch():
    rec = plan.recommend(SECTION_2, COURSE_BUDGET, effective_batch=8, **plan.ANCHOR_SETTINGS)
    assert rec.fits and (rec.batch_size, rec.grad_accum) == (2, 4)
    assert rec.batch_size * rec.grad_accum * rec.gpus == 8


def test_recommend_big_card_and_several_gpus():
    rec = plan.recommend(SECTION_2, "H200", effective_batch=8, **plan.ANCHOR_SETTINGS)
    assert (rec.batch_size, rec.grad_accum) == (8, 1)
    settings = dict(plan.ANCHOR_SETTINGS, gpus=2)
    rec = plan.recommend(SECTION_2, "RTX 4090", effective_batch=16, **settings)
    assert rec.batch_size * rec.grad_accum * 2 == 16 and rec.batch_size == 2
    with pytest.raises(ValueError, match="effective_batch 9"):
        plan.recommend(SECTION_2, "H200", effective_batch=9, gpus=2)
    with pytest.raises(ValueError, match="batch_size"):
        plan.recommend(SECTION_2, "H200", batch_size=4)


def test_recommend_nothing_fits_says_what_to_try():
    rec = plan.recommend(SECTION_2, "8GB", effective_batch=8, **plan.ANCHOR_SETTINGS)
    assert not rec.fits and rec.batch_size is None and rec.grad_accum is None
    text = str(rec)
    assert text.startswith("even batch 1 does not fit")
    for idea in ("lean_logits=True", "qlora", "zero_stage=3", "tiles="):
        assert idea in text
    assert any(s.endswith(": fits") for s in rec.suggestions)


# ---------------------------------------------------------------- the training Settings


def test_the_course_recipe_plans_like_its_knobs_written_out():
    course = course_gpu()
    written_out = dict(method="lora", batch_size=4, max_length=8192, lora_r=128, lora_target_modules=None,
                       lora_dropout=0.05, gradient_checkpointing=True, zero_stage=0, gpus=1,
                       weights_dtype="bfloat16", freeze_visual_encoder=True, lean_logits=True)
    assert plan.settings_knobs(course) == dict(written_out, engine="labkit")
    assert plan.estimate(SECTION_2, course) == plan.estimate(SECTION_2, engine="labkit", **written_out)


def test_the_engine_is_the_model_type_the_settings_train_with():
    course = course_gpu()
    assert plan.settings_knobs(course)["engine"] == "labkit"  # lean logits: labkit.train.lean
    stock = course.replace(lean_logits=False)
    assert not stock.uses_lean_model and plan.settings_knobs(stock)["engine"] == "xtuner"
    fast = stock.replace(gradient_checkpointing=False)  # only labkit.train.lean turns checkpointing off
    assert plan.settings_knobs(fast)["engine"] == "labkit"
    assert plan.estimate(SECTION_2, stock, engine="transformers").settings.engine == "transformers"


def test_keywords_override_the_settings():
    course = course_gpu()
    assert plan.estimate(SECTION_2, course, batch_size=2) == plan.estimate(SECTION_2, course.replace(batch_size=2))
    smaller = plan.estimate(SECTION_2, course.replace(lora_r=8))
    assert smaller.optimizer < plan.estimate(SECTION_2, course).optimizer / 10
    assert plan.estimate(SECTION_2, course, tiles=5).sequence_length == 5 * 256 + 90


def test_recommend_from_settings_keeps_their_effective_batch():
    stock = course_gpu().replace(lean_logits=False)  # batch 4 x accumulation 2 on 1 GPU
    rec = plan.recommend(SECTION_2, COURSE_BUDGET, stock)
    assert rec.fits and (rec.batch_size, rec.grad_accum, rec.effective_batch) == (2, 4, 8)
    rec = plan.recommend(SECTION_2, "H200", stock.replace(accumulative_counts=4))
    assert rec.effective_batch == 16 and rec.batch_size * rec.grad_accum == 16
    assert plan.recommend(SECTION_2, COURSE_BUDGET, stock, effective_batch=4).effective_batch == 4
    with pytest.raises(ValueError, match="batch_size"):
        plan.recommend(SECTION_2, COURSE_BUDGET, stock, batch_size=2)


# ---------------------------------------------------------------- budgets


@pytest.mark.parametrize("text,gib", [
    ("A100 80GB x 30%", 24.0),
    ("a100 80gb x0.3", 24.0),
    ("A100-80GB*30%", 24.0),
    ("24GB", 24.0),
    ("12 GiB", 12.0),
    ("16384MiB", 16.0),
    ("H200", 140.0),
    ("RTX 4090", 24.0),
    ("NVIDIA GeForce RTX 4090", 24.0),
    ("A100-40GB", 40.0),
    ("RTX A6000 x 50%", 24.0),
])
def test_parse_budget(text, gib):
    assert plan.parse_budget(text).gib == pytest.approx(gib)


def test_parse_budget_numbers_and_errors():
    assert plan.parse_budget(20).gib == 20.0
    with pytest.raises(ValueError, match="B200.*Known cards:.*H200.*RTX4090"):
        plan.parse_budget("B200")
    with pytest.raises(ValueError, match="'A100 40GB' or 'A100 80GB'"):
        plan.parse_budget("A100")
    with pytest.raises(ValueError, match="share after 'x'.*got 2"):
        plan.parse_budget("24GB x 2")
    with pytest.raises(ValueError, match="positive"):
        plan.parse_budget(0)
    with pytest.raises(ValueError, match="budget must be text"):
        plan.parse_budget("")


# ---------------------------------------------------------------- the physics, direction by direction


def test_settings_move_memory_the_right_way():
    base = plan.estimate(SECTION_2, batch_size=2)
    no_ckpt = plan.estimate(SECTION_2, batch_size=2, gradient_checkpointing=False)
    assert no_ckpt.activations > 10 * base.activations  # 24 layers kept instead of ~1
    qlora = plan.estimate(SECTION_2, batch_size=2, method="qlora")
    assert qlora.weights < base.weights * 0.55  # the LLM's Linears in 4 bits
    full = plan.estimate(SECTION_2, batch_size=2, method="full")
    assert full.optimizer > 10 * base.optimizer  # 12 bytes for every LLM parameter
    sharded = plan.estimate(SECTION_2, batch_size=2, method="full", zero_stage=3, gpus=4)
    assert sharded.weights == pytest.approx(full.weights / 4)
    assert sharded.optimizer == pytest.approx(full.optimizer / 4)
    trained_vision = plan.estimate(SECTION_2, batch_size=2, freeze_visual_encoder=False)
    assert trained_vision.activations > base.activations
    assert trained_vision.trained_parameters - base.trained_parameters == pytest.approx(304e6, rel=0.01)
    fewer_tiles = plan.estimate(SECTION_2, batch_size=2, tiles=5)
    assert fewer_tiles.sequence_length == 5 * 256 + 90 and fewer_tiles.total < base.total
    smaller_rank = plan.estimate(SECTION_2, batch_size=2, lora_r=8)
    assert smaller_rank.optimizer < base.optimizer / 10
    mlp_only = plan.estimate(SECTION_2, batch_size=2, lora_target_modules=("w1", "w3", "w2"))
    assert base.optimizer > mlp_only.optimizer > base.optimizer / 2


def test_table_lists_the_parts_and_adds_up():
    p = anchor_plan(SECTION_2, 2, False)
    text = str(p)
    for part in ("weights", "trainable + optimizer", "activations", "logits", "overhead",
                 "peak per GPU"):
        assert part in text
    assert sum(gib for _, gib in p.rows()) == pytest.approx(p.total)
    assert f"{p.total:.2f}" in p.table()


def test_truncation_is_reported():
    p = plan.estimate(SECTION_2, tiles=13, max_length=2048)
    assert p.sequence_length == 2048
    assert any("max_length 2048" in n for n in p.notes)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("settings,message", [
    (dict(batch_size=0), "batch_size .* got 0"),
    (dict(batch_size=-3), "batch_size .* got -3"),
    (dict(batch_size=2.5), "batch_size .* got 2.5"),
    (dict(method="adapter"), "unknown method 'adapter'"),
    (dict(tiles=0), "tiles .* between 1 and 13, got 0"),
    (dict(tiles=14), "tiles .* between 1 and 13, got 14"),
    (dict(batchsize=4), "unknown setting 'batchsize'. Did you mean 'batch_size'"),
    (dict(lora_target_modules=["wq"]), "unknown lora target 'wq'"),
    (dict(lora_target_modules="wq"), "unknown lora target 'wq'"),
    (dict(lora_target_modules=()), "unknown lora target .*use None"),
    (dict(text_tokens=0), "text_tokens .* got 0"),
    (dict(zero_stage=4), "zero_stage .* got 4"),
    (dict(gpus=0), "gpus .* got 0"),
    (dict(weights_dtype="float32"), "weights_dtype 'float32' is not planned for"),
    (dict(lora_dropout=True), "lora_dropout must be a dropout probability.*got True"),
    (dict(lora_dropout=1.0), "lora_dropout .* got 1.0"),
    (dict(lora_rank=8), "unknown setting 'lora_rank'.*write 'lora_r'"),
    (dict(num_gpus=2), "unknown setting 'num_gpus'.*write 'gpus'"),
    (dict(lr=1e-4), "'lr' is a training setting that does not change the memory plan"),
    (dict(lean_logits="yes"), "lean_logits must be True or False, got 'yes'"),
    (dict(supervised_tokens=500), "supervised_tokens .* got 500"),
])
def test_bad_settings_name_the_value(settings, message):
    with pytest.raises(ValueError, match=message):
        plan.estimate(SECTION_2, **settings)


def test_bad_config_names_the_file_or_key(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        plan.estimate(tmp_path / "nowhere")
    broken = tmp_path / "config.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        plan.estimate(tmp_path)
    flat = {k: v for k, v in SECTION_2.items() if k != "llm_config"}
    broken.write_text(json.dumps(flat), encoding="utf-8")
    with pytest.raises(ValueError, match=r"config.json has no 'llm_config\."):
        plan.estimate(broken)


# ---------------------------------------------------------------- counts against real modules


def tiny_config():
    from labkit.checkpoints.folder import tiny_config as make
    return make()


def test_parameter_counts_match_a_real_model():
    from labkit.checkpoints.folder import build_model

    config = tiny_config()
    model = build_model(config)
    counts = plan.count_parameters(plan.read_model_shape(config))

    def numel(module):
        return sum(p.numel() for p in module.parameters())

    lm = model.language_model
    assert counts["vision"] == numel(model.vision_model)
    assert counts["projector"] == numel(model.mlp1)
    assert counts["embeddings"] == lm.model.tok_embeddings.weight.numel()
    assert counts["head"] == lm.output.weight.numel()
    assert sum(counts.values()) == numel(model)


def test_internvl2_2b_has_2_2_billion_parameters():
    counts = plan.count_parameters(plan.read_model_shape(SECTION_2))
    assert sum(counts.values()) == pytest.approx(2.206e9, rel=0.001)
    assert counts["vision"] == pytest.approx(304e6, rel=0.01)  # InternViT-300M


def test_lora_count_matches_peft():
    peft = pytest.importorskip("peft")
    from labkit.checkpoints.folder import build_model

    config = tiny_config()
    lm = build_model(config).language_model
    lm.requires_grad_(False)
    targets = list(plan.LLM_LINEARS)  # every Linear but the output head, as XTuner does
    wrapped = peft.get_peft_model(lm, peft.LoraConfig(r=16, lora_alpha=32, target_modules=targets))
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert trainable == plan.lora_parameters(plan.read_model_shape(config), 16, plan.LLM_LINEARS)


@pytest.mark.parametrize("engine", ["transformers", "labkit"])
def test_layer_activation_list_matches_tensors_saved_by_a_real_layer(engine):
    """Sum the tensors autograd really saves in one InternLM2 layer with fp32 LoRA adapters:
    as PEFT runs it (inputs cast to fp32), and as labkit.train.lean runs it (bf16 autocast, no cast)."""
    peft = pytest.importorskip("peft")
    from labkit.model.configuration_internlm2 import InternLM2Config
    from labkit.model.modeling_internlm2 import InternLM2DecoderLayer

    llm = dict(tiny_config()["llm_config"], hidden_size=256, intermediate_size=704,
               num_attention_heads=4, num_key_value_heads=2)
    config = dict(tiny_config(), llm_config=llm)
    layer_config = InternLM2Config(**llm)

    class OneLayer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = InternLM2DecoderLayer(layer_config, 0)

        def forward(self, x, cos, sin, mask):
            return self.layer(x, cos, sin, mask)[0]

    torch.manual_seed(0)
    module = OneLayer().to(torch.bfloat16).requires_grad_(False)
    module = peft.get_peft_model(module, peft.LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules=list(plan.LLM_LINEARS)))
    tokens, head_dim = 128, llm["hidden_size"] // llm["num_attention_heads"]
    x = torch.randn(1, tokens, llm["hidden_size"], dtype=torch.bfloat16, requires_grad=True)
    cos = torch.randn(1, tokens, head_dim, dtype=torch.bfloat16)
    sin = torch.randn(1, tokens, head_dim, dtype=torch.bfloat16)
    mask = torch.ones(tokens, tokens, dtype=torch.bool).tril()[None, None]

    not_activations = {p.untyped_storage().data_ptr() for p in module.parameters()}
    not_activations |= {t.untyped_storage().data_ptr() for t in (x, cos, sin, mask)}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in not_activations:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    autocast = contextlib.nullcontext()
    if engine == "labkit":
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        for layer in module.modules():
            if hasattr(layer, "cast_input_dtype_enabled"):
                layer.cast_input_dtype_enabled = False
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        module(x, cos, sin, mask)
    measured = sum(saved.values()) / tokens

    shape = plan.read_model_shape(config)
    settings = plan.make_settings(shape, lora_r=16, engine=engine)
    listed = sum(plan.llm_layer_saved_bytes(shape, settings).values())
    assert measured == pytest.approx(listed, rel=0.10)


def test_tiny_course_model_plans_small():
    p = plan.estimate(tiny_config(), batch_size=4)
    assert p.sequence_length == 7 * 16 + 90  # 6 tiles + thumbnail, 16 tokens each
    assert p.total < 1.0  # the CUDA context is most of it
