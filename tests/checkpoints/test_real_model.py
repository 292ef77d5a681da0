"""The kit on a folder that behaves like OpenGVLab's InternVL2-2B (its own remote code and tokenizer).

``opengvlab_like_checkpoint`` (tests/opengvlab_like_folder.py) is a stand-in for the real hub
folder at the tiny size: its InternLM2 lacks GenerationMixin and reads the legacy tuple cache, it
names a template of its own, its tokenizer is sentencepiece with its own tokenization module, and
its InternViT imports timm at the top. These tests run labkit's loader, engines, CLIs, server,
evaluation, XTuner fine-tune, conversion and the five notebooks on it.
"""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import assert_demo_serves, image_tiles, noise_image, randomize_, run_python, serve, shared_cache
from opengvlab_like_folder import FIXTURE_SYSTEM_MESSAGE, REMOTE_CODE_FILES, TEMPLATE

from labkit.checkpoints import remote_code
from labkit.chat import (ChatInputError, Sampling, TransformersEngine, clean_answer, lmdeploy_chat_template,
                         render_prompt, resolve_template)
from labkit.checkpoints.folder import CheckpointError, check_model_folder, load_checkpoint
from labkit.checkpoints.remote_code import FolderTemplates, RemoteCodeError, adapt_for_generation, missing_packages
from labkit.fileio import REPO_ROOT

QUESTION = "图中的菜是什么？"
GREEDY = dict(max_new_tokens=6, do_sample=False)

# Hides a package in a fresh interpreter, as if it were not installed (the path finder skips it).
HIDE_PACKAGE = """
import sys
from importlib.machinery import PathFinder
class Hide(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.split(".")[0] == {name!r} else PathFinder.find_spec(name, path, target)
sys.meta_path[:] = [Hide if f is PathFinder else f for f in sys.meta_path]
"""


@pytest.fixture(scope="module")
def loaded(opengvlab_like_checkpoint):
    return load_checkpoint(opengvlab_like_checkpoint)


@pytest.fixture(scope="module")
def engine(opengvlab_like_checkpoint):
    return TransformersEngine(opengvlab_like_checkpoint)


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("pictures") / "dish.png"
    noise_image(128, 64, seed=3).save(path)
    return path


def labkit_named_copy(folder, out):
    """The stand-in folder with a template name labkit's own code also knows."""
    shutil.copytree(folder, out)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    config["template"] = "internlm2-chat"
    (out / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return out


# -- what the folder's code imports ---------------------------------------------------------
def test_missing_packages_are_named_with_the_file_that_imports_them(tmp_path):
    (tmp_path / "modeling_x.py").write_text(
        "import os\nimport labkit_absent_pkg.layers\ntry:\n    import labkit_optional_pkg\nexcept ImportError:\n"
        "    pass\nfrom .sibling import thing\n", encoding="utf-8")
    assert missing_packages(tmp_path) == {"labkit_absent_pkg": ["modeling_x.py"]}
    with pytest.raises(RemoteCodeError, match=r"labkit_absent_pkg \(imported by modeling_x.py\).*pip install"):
        remote_code.check_imports(tmp_path)


def test_the_folder_check_names_timm_when_it_is_missing(opengvlab_like_checkpoint):
    code = HIDE_PACKAGE.format(name="timm") + (
        "from labkit.checkpoints.folder import check_model_folder, CheckpointError\n"
        f"try:\n    check_model_folder({str(opengvlab_like_checkpoint)!r})\n"
        "except CheckpointError as err:\n    print('REFUSED', err)\n")
    done = run_python(["-c", code])
    assert "REFUSED" in done.stdout and "timm (imported by modeling_intern_vit.py)" in done.stdout


def test_refresh_code_leaves_a_folder_with_its_own_code_alone(opengvlab_like_checkpoint, tmp_path):
    folder = shutil.copytree(opengvlab_like_checkpoint, tmp_path / "own-code")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    done = subprocess.run([sys.executable, "-m", "labkit", "base-model", "refresh-code", str(folder)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 2 and "not labkit's (tokenization_internlm2.py" in done.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


# -- loading and generating --------------------------------------------------------------------
def test_the_folders_own_code_loads_and_chats_through_labkits_loader(loaded):
    model, tokenizer = loaded
    assert type(model).__module__.endswith("modeling_internvl_chat") and not hasattr(model, "build_prompt")
    assert type(tokenizer).__name__ == "InternLM2Tokenizer"
    pixels = image_tiles(model.config.to_dict(), 128, 64)
    answer, history = model.chat(tokenizer, pixels, QUESTION, dict(GREEDY), return_history=True)
    assert isinstance(answer, str)
    again = model.chat(tokenizer, pixels, "再说一遍", dict(GREEDY), history=history)
    batch = model.batch_chat(tokenizer, torch.cat([pixels, pixels]), [QUESTION, QUESTION], dict(GREEDY),
                             num_patches_list=[len(pixels), len(pixels)])
    assert isinstance(again, str) and batch == [answer, answer]


def test_generation_with_the_legacy_cache_equals_generation_without_it(loaded):
    model, tokenizer = loaded
    ids = tokenizer("<|im_start|>user\n图中的菜是什么？<|im_end|><|im_start|>assistant\n", return_tensors="pt")
    embeds = model.language_model.get_input_embeddings()(ids["input_ids"])
    runs = [model.language_model.generate(inputs_embeds=embeds, attention_mask=ids["attention_mask"],
                                          max_new_tokens=8, do_sample=False, use_cache=cache, pad_token_id=0)
            for cache in (True, False)]
    assert runs[0].tolist() == runs[1].tolist()


def test_labkits_loader_drops_the_warning_the_layer_makes_moot(opengvlab_like_checkpoint):
    import logging

    from transformers import AutoModel

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("transformers.modeling_utils")
    logger.addHandler(handler)
    try:
        load_checkpoint(opengvlab_like_checkpoint)
        quiet = list(seen)
        AutoModel.from_pretrained(str(opengvlab_like_checkpoint), trust_remote_code=True)
    finally:
        logger.removeHandler(handler)
    warning = "has generative capabilities"
    assert not any(warning in m for m in quiet) and any(warning in m for m in seen[len(quiet):])


def test_adapting_is_idempotent_and_leaves_labkits_code_alone(loaded, tiny_checkpoint):
    model, _ = loaded
    cls = type(model.language_model)
    assert adapt_for_generation(model) is model and type(model.language_model) is cls
    own, _ = load_checkpoint(tiny_checkpoint)
    before = type(own.language_model)
    adapt_for_generation(own)
    assert type(own.language_model) is before and not remote_code.needs_adapting(own)


def test_a_transformers_version_the_layer_cannot_serve_is_refused(opengvlab_like_checkpoint, monkeypatch):
    import transformers
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(opengvlab_like_checkpoint), trust_remote_code=True)
    monkeypatch.setattr(transformers, "__version__", "5.1.0")  # transformers 5 cannot be installed beside XTuner
    with pytest.raises(RemoteCodeError, match=r"transformers 5\.1\.0.*checked with 4\.57\.6.*code='labkit'"):
        adapt_for_generation(model, where="the stand-in")


def test_labkits_own_code_on_the_folders_weights_gives_the_same_logits_and_answers(
        opengvlab_like_checkpoint, tmp_path):
    folder = labkit_named_copy(opengvlab_like_checkpoint, tmp_path / "named")
    # order-one random weights, so a missing bias or norm would change the logits
    theirs, tokenizer = load_checkpoint(folder)
    randomize_(theirs, seed=2)
    theirs.save_pretrained(folder, safe_serialization=True)
    theirs, _ = load_checkpoint(folder)
    ours, _ = load_checkpoint(folder, code="labkit")
    assert type(ours).__module__.startswith("labkit.model")
    pixels = image_tiles(ours.config.to_dict(), 192, 64)
    text = "<img>" + "<IMG_CONTEXT>" * (ours.num_image_token * len(pixels)) + "</img>\n" + QUESTION
    ids = tokenizer(text, return_tensors="pt")
    flags = torch.ones(len(pixels), 1, dtype=torch.long)
    with torch.no_grad():
        logits = [m(pixel_values=pixels, input_ids=ids["input_ids"], attention_mask=ids["attention_mask"],
                    image_flags=flags).logits for m in (theirs, ours)]
    assert float((logits[0] - logits[1]).abs().max()) < 1e-4
    answers = [m.chat(tokenizer, pixels, QUESTION, dict(max_new_tokens=10, do_sample=False)) for m in (theirs, ours)]
    assert answers[0] == answers[1]


def test_labkits_code_refuses_a_template_it_does_not_know(opengvlab_like_checkpoint):
    with pytest.raises(CheckpointError, match=f"template '{TEMPLATE}' is not one of labkit's"):
        load_checkpoint(opengvlab_like_checkpoint, code="labkit")


# -- templates, engines, CLIs -------------------------------------------------------------------
def test_templates_come_from_the_folders_own_conversation_module(opengvlab_like_checkpoint, loaded):
    templates = FolderTemplates(opengvlab_like_checkpoint)
    assert TEMPLATE in templates and templates.system_message(TEMPLATE) == FIXTURE_SYSTEM_MESSAGE
    assert FolderTemplates.of_model(loaded[0]).names() == templates.names()
    with pytest.raises(ChatInputError, match="internlm2-chat-xtuner"):
        resolve_template("internlm2-chat-xtuner", templates)  # labkit's own name, unknown to this folder


def test_the_engine_prompts_and_answers_exactly_as_the_folders_own_chat(engine, loaded, picture):
    model, tokenizer = loaded
    assert engine.template == TEMPLATE
    prompt = engine.prompt(QUESTION, picture, full=True)
    assert prompt.startswith(f"<|im_start|>system\n{FIXTURE_SYSTEM_MESSAGE}<|im_end|>")
    pixels = engine.tiling.load(str(picture), max_pixels=None)
    settings = Sampling(max_new_tokens=8)
    own = clean_answer(model.chat(tokenizer, pixels, QUESTION, settings.hf_kwargs()))  # as engines trim it
    assert engine.ask(QUESTION, picture, settings=settings) == own
    assert "".join(engine.stream(QUESTION, picture, settings=settings)) == own


def test_lmdeploy_template_fields_reproduce_the_folders_prompt(opengvlab_like_checkpoint):
    templates = FolderTemplates(opengvlab_like_checkpoint)
    fields = lmdeploy_chat_template(TEMPLATE, None, templates)
    history = [("第一个问题", "第一个回答")]
    expected = render_prompt(TEMPLATE, None, "第二个问题", history, 0, templates)
    rebuilt = (fields["system"] + fields["meta_instruction"] + fields["eosys"]
               + fields["user"] + "第一个问题" + fields["eoh"] + fields["assistant"] + "第一个回答" + fields["eoa"]
               + fields["separator"] + fields["user"] + "第二个问题" + fields["eoh"] + fields["assistant"])
    assert rebuilt == expected and fields["stop_words"] == ["<|im_end|>"]


def test_the_chat_cli_answers_with_the_folders_code(opengvlab_like_checkpoint, picture, engine, tmp_path):
    done = run_python(["-m", "labkit", "chat", opengvlab_like_checkpoint, QUESTION, "--image", picture,
                       "--max-new-tokens", "8", "--backend", "transformers"])
    assert done.stdout.strip().splitlines()[-1] == engine.ask(QUESTION, picture, settings=Sampling(max_new_tokens=8))
    out = tmp_path / "template.json"
    run_python(["-m", "labkit", "chat", opengvlab_like_checkpoint, "--lmdeploy-template", out])
    assert json.loads(out.read_text(encoding="utf-8"))["meta_instruction"] == FIXTURE_SYSTEM_MESSAGE


def test_the_server_answers_as_the_local_engine(opengvlab_like_checkpoint, engine, picture):
    from labkit.chat import OpenAIEngine

    with serve(opengvlab_like_checkpoint) as url:
        client = OpenAIEngine(url, timeout=120)
        settings = Sampling(max_new_tokens=8)
        assert client.ask(QUESTION, picture, settings=settings) == engine.ask(QUESTION, picture, settings=settings)


def test_the_demo_handlers_chat_with_the_folder(engine, picture):
    from labkit.chat.demo import DemoHandlers

    handlers = DemoHandlers(engine)
    chat, history, box, error, prompt = list(handlers.respond(QUESTION, str(picture), [], 0.0, 0.8, 8, True))[-1]
    assert error == "" and FIXTURE_SYSTEM_MESSAGE in prompt
    assert history[0][1] == engine.ask(QUESTION, picture, settings=Sampling(max_new_tokens=8))


def test_the_web_demo_serves_the_folder(engine):
    assert_demo_serves(engine)


def test_the_architecture_trace_runs_on_the_folders_code(loaded):
    from labkit.course.architecture import parameter_table, trace_image

    model, tokenizer = loaded
    stages = trace_image(model, tokenizer, noise_image(192, 64))
    assert [s.step.split(".")[0] for s in stages] == [str(i) for i in range(1, 10)]
    assert stages[-1].shape[-1] == model.config.llm_config.vocab_size
    assert parameter_table(model)[-1][1] == sum(p.numel() for p in model.parameters())


def test_training_samples_carry_the_folders_own_system_prompt(opengvlab_like_checkpoint, tiny_checkpoint,
                                                               tmp_path):
    from xtuner.utils import PROMPT_TEMPLATE

    from labkit.model.conversation import XTUNER_SYSTEM
    from labkit.train.dataset import FolderPromptDataset

    noise_image(64, 64).save(tmp_path / "dish.png")
    records = [{"image": "dish.png", "conversations": [{"from": "human", "value": "<image>\n" + QUESTION},
                                                      {"from": "gpt", "value": "图中的菜是肠粉。"}]}]
    (tmp_path / "train.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    for folder, system in ((opengvlab_like_checkpoint, FIXTURE_SYSTEM_MESSAGE), (tiny_checkpoint, XTUNER_SYSTEM)):
        data = FolderPromptDataset(str(folder), template=copy.deepcopy(PROMPT_TEMPLATE.internlm2_chat),
                                   data_paths=[str(tmp_path / "train.json")], image_folders=[str(tmp_path)])
        text = data.tokenizer.decode(data[0]["input_ids"])
        assert f"<|im_start|>system\n{system}<|im_end|>" in text.replace(" <", "<"), text[:200]


# -- XTuner, conversion and the notebooks on it (minutes) -----------------------------------
@pytest.fixture(scope="module")
def trained_opengvlab_like(opengvlab_like_checkpoint, tmp_path_factory):
    """The stand-in pretrained like labkit's base model: XTuner full fine-tune, conversion, targets."""
    from labkit.course.base_model import build
    from labkit.course.workspace import Workspace

    data_root = Workspace(tmp_path_factory.mktemp("ws"), shared_cache()).data()["root"]
    out = tmp_path_factory.mktemp("trained") / "opengvlab-like-base"
    return build(out, seed=1, data_root=data_root, start=opengvlab_like_checkpoint, progress=False, quiet=True)


@pytest.mark.slow
def test_xtuner_trains_and_conversion_keeps_the_folders_code(trained_opengvlab_like, opengvlab_like_checkpoint):
    folder = trained_opengvlab_like
    check_model_folder(folder)
    for name in REMOTE_CODE_FILES + ("tokenizer.model", "tokenizer_config.json", "added_tokens.json"):
        assert (folder / name).read_bytes() == (opengvlab_like_checkpoint / name).read_bytes(), name
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    base = json.loads((opengvlab_like_checkpoint / "config.json").read_text(encoding="utf-8"))
    assert config["template"] == TEMPLATE and config["auto_map"] == base["auto_map"]
    assert config["llm_config"]["auto_map"] == base["llm_config"]["auto_map"]
    report = json.loads((folder / "conversion.json").read_text(encoding="utf-8"))
    assert report["fresh_loaders"] == ["labkit"] and report["max_logit_diff_fresh"] == 0.0
    built = json.loads((folder / "base-model.json").read_text(encoding="utf-8"))
    assert built["check"]["known_accuracy"] >= 0.8 and built["check"]["sentence_rate"] >= 0.95


@pytest.mark.slow
def test_every_notebook_runs_on_the_folder(trained_opengvlab_like, tmp_path):
    from labkit.course.main import NOTEBOOKS, run_course

    run_dir = tmp_path / "run"
    run_course(run_dir, shared_cache(), parameters={"model_dir": str(trained_opengvlab_like)}, progress=False)
    course = json.loads((run_dir / "course.json").read_text(encoding="utf-8"))
    assert [n["name"] for n in course["notebooks"]] == NOTEBOOKS
    tuned = Path(json.loads((run_dir / "conversion.json").read_text(encoding="utf-8"))["out_dir"])
    assert (tuned / "tokenization_internlm2.py").is_file() and not (tuned / "tokenizer.json").exists()
    comparison = json.loads((run_dir / "comparison.json").read_text(encoding="utf-8"))
    assert comparison["held_back"]["tuned"] > comparison["held_back"]["base"]
    baseline = json.loads((run_dir / "baseline.json").read_text(encoding="utf-8"))
    assert TEMPLATE in baseline["engine"]
