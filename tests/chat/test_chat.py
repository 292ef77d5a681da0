"""labkit.chat on the tiny course checkpoint: prompts, streaming, history, settings, bad input.

The tiny model has random weights, so its answers are gibberish; the tests check behaviour:
what reaches the prompt, that streaming and whole answers agree, that settings reach the
sampler, and that every bad input is refused with a message a student can act on.
"""
from __future__ import annotations

import importlib.util
import io
import time

import pytest
from PIL import Image

from helpers import assert_demo_serves, noise_image, run_python
from labkit.chat import (
    IMG_CONTEXT,
    ChatInputError,
    ChatSession,
    LMDeployEngine,
    Sampling,
    TransformersEngine,
    abbreviate,
    clean_answer,
    lmdeploy_chat_template,
    make_engine,
    render_prompt,
    trim_pieces,
)
from labkit.chat.cli import main
from labkit.chat.demo import DemoHandlers
from labkit.model.conversation import INTERNVL_SYSTEM, TEMPLATES, XTUNER_SYSTEM

SHORT = Sampling(max_new_tokens=12)
WIDE = (192, 64)  # tiny tiling: a 3x1 grid + thumbnail = 4 tiles


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return TransformersEngine(tiny_checkpoint)


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# -- the package -----------------------------------------------------------------------------


def test_the_package_names_the_api_and_imports_torch_only_when_an_engine_is_asked_for():
    script = (
        "import sys\n"
        "from labkit import chat\n"
        "assert 'torch' not in sys.modules, 'import labkit.chat imported torch'\n"
        "chat.Sampling(max_new_tokens=4); chat.read_image; chat.IMAGE_MARKER; chat.ChatInputError\n"
        "assert 'torch' not in sys.modules, 'the inputs imported torch'\n"
        "assert chat.make_engine.__module__ == 'labkit.chat.engine'\n"
        "assert chat.ChatSession.__module__ == 'labkit.chat.session'\n"
        "assert 'Settings' not in dir(chat) and not hasattr(chat, 'Settings')\n"
        "print(sorted(chat.__all__))\n"
    )
    names = run_python(["-c", script]).stdout
    for name in ("OpenAIEngine", "LMDeployEngine", "TransformersEngine", "IMG_CONTEXT", "render_prompt"):
        assert f"'{name}'" in names


# -- settings --------------------------------------------------------------------------------


def test_settings_validate_each_value_by_name():
    for kwargs, name in [({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": 2.5}, "max_new_tokens"),
                         ({"temperature": -0.1}, "temperature"), ({"temperature": float("nan")}, "temperature"),
                         ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"temperature": "hot"}, "temperature")]:
        with pytest.raises(ChatInputError, match=name):
            Sampling(**kwargs)


def test_temperature_zero_is_greedy_and_above_samples():
    assert Sampling(temperature=0).hf_kwargs() == {"max_new_tokens": 256, "do_sample": False}
    sampled = Sampling(max_new_tokens=9, temperature=0.7, top_p=0.9).hf_kwargs()
    assert sampled["do_sample"] is True and sampled["temperature"] == 0.7 and sampled["top_p"] == 0.9


def test_greedy_is_deterministic_and_sampling_reaches_the_model(engine):
    greedy = engine.ask("你好", settings=SHORT)
    assert engine.ask("你好", settings=SHORT) == greedy
    sampled = {engine.ask("你好", settings=Sampling(12, temperature=1.0, top_p=1.0)) for _ in range(4)}
    assert sampled - {greedy}, "temperature 1.0 never changed the answer: sampling settings do not reach generate"


def test_max_new_tokens_caps_the_answer(engine):
    short = engine.ask("你好", settings=Sampling(max_new_tokens=3))
    longer = engine.ask("你好", settings=Sampling(max_new_tokens=40))
    assert short and len(short) < len(longer) and longer.startswith(short)


# -- prompts ---------------------------------------------------------------------------------


def test_engine_uses_the_checkpoint_template_and_matches_the_models_own_prompt(engine):
    assert engine.template == engine.model.config.template == "internlm2-chat-xtuner"
    history = [("<image>\n这是什么菜？", "肠粉")]
    ours = engine.prompt("它是哪里的？", noise_image(*WIDE), history, full=True)
    tiles = engine.tiling.count_tiles(*WIDE)
    theirs, _ = engine.model.build_prompt("它是哪里的？", history, [tiles])  # labkit remote code's own layout
    assert ours == theirs
    assert XTUNER_SYSTEM in ours


def test_image_of_several_tiles_puts_tokens_per_tile_times_tiles_placeholders(engine):
    tiles = engine.tiling.count_tiles(*WIDE)
    assert tiles == 4
    expected = engine.model.num_image_token * tiles
    full = engine.prompt("这是什么菜？", noise_image(*WIDE), full=True)
    assert full.count(IMG_CONTEXT) == expected == 64
    assert full.index("<img>") < full.index("这是什么菜？")
    ids = engine.tokenizer(full)["input_ids"]
    assert ids.count(engine.model.img_context_token_id) == expected  # one token per placeholder
    short = engine.prompt("这是什么菜？", noise_image(*WIDE))
    assert f"<img>{IMG_CONTEXT}×{expected}</img>" in short and short.count(IMG_CONTEXT) == 1
    assert abbreviate(full) == short


def test_the_image_reaches_the_model(engine):
    answers = {engine.ask("这是什么菜？", noise_image(*WIDE, seed=s), settings=SHORT) for s in range(3)}
    assert len(answers) > 1, "three different pictures gave one answer: the pixels never reach the model"


def test_another_template_can_be_chosen_by_name(tiny_checkpoint):
    other = TransformersEngine(tiny_checkpoint, template="internlm2-chat")
    assert other.template == "internlm2-chat"
    assert INTERNVL_SYSTEM in other.prompt("你好") and XTUNER_SYSTEM not in other.prompt("你好")
    custom = TransformersEngine(tiny_checkpoint, system="你是美食专家。")
    assert custom.prompt("你好").startswith("<|im_start|>system\n你是美食专家。")
    with pytest.raises(ChatInputError, match="internlm2-chat-xtuner"):
        TransformersEngine(tiny_checkpoint, template="vicuna")


# -- streaming and history -------------------------------------------------------------------


@pytest.mark.parametrize("with_image", [False, True])
def test_stream_pieces_join_to_the_whole_answer(engine, with_image):
    image = noise_image(*WIDE) if with_image else None
    settings = Sampling(max_new_tokens=40)
    pieces = list(engine.stream("这是什么菜？", image, settings=settings))
    assert len(pieces) > 1
    assert "".join(pieces) == engine.ask("这是什么菜？", image, settings=settings)


def test_trim_pieces_clean_like_the_whole_answer():
    pieces = ["\n ", " 肠", "粉 ", "\n", "好吃", " \ufffd", "好", "\ufffd\ufffd", " \n"]
    assert "".join(trim_pieces(pieces)) == clean_answer("".join(pieces)) == "肠粉 \n好吃 \ufffd好"


def test_closing_a_stream_stops_generation(engine):
    stream = engine.stream("你好", settings=Sampling(max_new_tokens=4000))
    next(stream)
    started = time.perf_counter()
    stream.close()
    assert time.perf_counter() - started < 5
    assert engine.ask("你好", settings=SHORT)  # the engine is free again


def test_multi_turn_history_grows_and_the_second_prompt_holds_the_first_turn(engine):
    image = noise_image(*WIDE)
    first, history = engine.chat("这是什么菜？", image, settings=SHORT)
    assert history == [("<image>\n这是什么菜？", first)]
    second_prompt = engine.prompt("它是哪里的？", image, history, full=True)
    assert "这是什么菜？" in second_prompt and f"{first}<|im_end|>" in second_prompt
    assert second_prompt.count("<img>") == 1  # the picture stays in the turn that showed it
    assert second_prompt.index("<img>") < second_prompt.index("这是什么菜？") < second_prompt.index("它是哪里的？")
    second, history = engine.chat("它是哪里的？", image, history, settings=SHORT)
    assert len(history) == 2 and history[1] == ("它是哪里的？", second)


def test_session_remembers_picture_and_turns(engine):
    session = ChatSession(engine, SHORT)
    session.set_image(png_bytes(noise_image(*WIDE)))
    first = session.ask("这是什么菜？")
    session.ask("它是哪里的？")
    assert [q for q, _ in session.history] == ["<image>\n这是什么菜？", "它是哪里的？"]
    assert session.history[0][1] == first
    assert "它是哪里的？" in session.prompt("再说一次")
    assert session.set_image(noise_image(64, 64)) is True and session.history == []  # new picture, new chat
    session.clear()
    assert session.picture is not None


# -- bad input -------------------------------------------------------------------------------


def test_empty_question_is_refused(engine):
    for question in ("", "   \n"):
        with pytest.raises(ChatInputError, match="empty"):
            engine.ask(question)
    with pytest.raises(ChatInputError, match="text"):
        engine.ask(None)


def test_non_image_corrupt_and_missing_files_are_refused_by_name(engine, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("肠粉是广东的早点。", encoding="utf-8")
    with pytest.raises(ChatInputError, match="notes.txt.*not an image"):
        engine.ask("这是什么菜？", notes)
    with pytest.raises(ChatInputError, match="not an image"):
        engine.ask("这是什么菜？", b"GIF? no, just text")
    broken = tmp_path / "broken.jpg"
    buffer = io.BytesIO()
    noise_image(200, 200).save(buffer, format="JPEG")
    broken.write_bytes(buffer.getvalue()[:600])
    with pytest.raises(ChatInputError, match="broken.jpg.*(corrupt|truncated)"):
        engine.ask("这是什么菜？", broken)
    with pytest.raises(ChatInputError, match="does not exist"):
        engine.ask("这是什么菜？", tmp_path / "missing.png")


def test_huge_image_is_refused_before_decoding(engine, tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("L", (8000, 6000)).save(huge)  # 48 megapixels of black: a small file
    with pytest.raises(ChatInputError, match="huge.png.*above the limit"):
        engine.ask("这是什么菜？", huge)


def test_history_must_match_the_picture(engine):
    with pytest.raises(ChatInputError, match="pass the same image again"):
        engine.ask("它是哪里的？", None, [("<image>\n这是什么菜？", "肠粉")])
    with pytest.raises(ChatInputError, match="one picture per"):
        engine.ask("<image>\n这个呢？", noise_image(64, 64), [("<image>\n这是什么菜？", "肠粉")])
    with pytest.raises(ChatInputError, match="History turn 1"):
        engine.ask("你好", None, [("only a question",)])


# -- picking an engine, LMDeploy's side ------------------------------------------------------


def test_make_engine_says_what_it_picked(tiny_checkpoint, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this test checks the CPU choice")
    picked = make_engine(tiny_checkpoint)
    assert isinstance(picked, TransformersEngine) and picked.device == "cpu"
    assert "no CUDA GPU" in picked.picked
    assert "using transformers on cpu" in capsys.readouterr().out
    assert "device='cpu' was asked for" in make_engine(tiny_checkpoint, device="cpu").picked
    with pytest.raises(ValueError, match="CUDA GPU only"):
        make_engine(tiny_checkpoint, backend="lmdeploy", device="cpu")


@pytest.mark.skipif(importlib.util.find_spec("lmdeploy") is not None, reason="lmdeploy is installed")
def test_lmdeploy_missing_says_where_to_get_it(tiny_checkpoint):
    with pytest.raises(ImportError, match="requirements/lmdeploy.txt"):
        LMDeployEngine(tiny_checkpoint)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_lmdeploy_template_fields_rebuild_labkits_prompt(name):
    """LMDeploy joins {system}{meta_instruction}{eosys}, then per turn {user}q{eoh}{assistant}a{eoa}{separator}."""
    fields = lmdeploy_chat_template(name)
    history = [("<image>\n这是什么菜？", "肠粉")]
    lmdeploy_layout = fields["system"] + fields["meta_instruction"] + fields["eosys"]
    for question, answer in history:
        lmdeploy_layout += fields["user"] + question + fields["eoh"] + fields["assistant"] + answer
        lmdeploy_layout += fields["eoa"] + fields["separator"]
    lmdeploy_layout += fields["user"] + "它是哪里的？" + fields["eoh"] + fields["assistant"]
    assert lmdeploy_layout == render_prompt(name, None, "它是哪里的？", history)
    assert fields["stop_words"] == ["<|im_end|>"]


def test_cli_prints_the_prompt_and_an_answer(tiny_checkpoint, tmp_path, capsys):
    image = tmp_path / "dish.png"
    noise_image(*WIDE).save(image)
    assert main([str(tiny_checkpoint), "这是什么菜？", "--image", str(image), "--max-new-tokens", "5",
                 "--backend", "transformers", "--show-prompt"]) == 0
    assert f"{IMG_CONTEXT}×64" in capsys.readouterr().out
    assert main([str(tiny_checkpoint), " ", "--backend", "transformers"]) == 2
    assert "empty" in capsys.readouterr().err


# -- the web demo's handlers (gradio itself is optional) -------------------------------------


def test_demo_handlers_stream_keep_history_and_report_errors(engine):
    handlers = DemoHandlers(engine)
    image = noise_image(*WIDE)
    steps = list(handlers.respond("这是什么菜？", image, [], 0.0, 0.8, 20, True))
    assert len(steps) > 2  # the answer arrives in steps
    chat, history, box, error, prompt = steps[-1]
    assert box == "" and error == "" and f"{IMG_CONTEXT}×64" in prompt
    assert history == [("<image>\n这是什么菜？", engine.ask("这是什么菜？", image, settings=Sampling(20)))]
    assert chat == [{"role": "user", "content": "这是什么菜？"}, {"role": "assistant", "content": history[0][1]}]
    chat2, history2, *_ = list(handlers.respond("它是哪里的？", image, history, 0.0, 0.8, 5))[-1]
    assert len(history2) == 2 and len(chat2) == 4
    _, kept, box, error, _ = list(handlers.respond("", image, history2, 0.0, 0.8, 5))[-1]
    assert "empty" in error and kept == history2
    _, _, box, error, _ = list(handlers.respond("这个呢？", b"not a picture", [], 0.0, 0.8, 5))[-1]
    assert "not an image" in error and box == "这个呢？"  # the question stays, to resend
    assert handlers.new_image(image, history2)[1] == []


def test_demo_page_builds_and_serves(engine):
    assert_demo_serves(engine)


# -- LMDeploy on a GPU (its own environment: requirements/lmdeploy.txt) ----------------------


@pytest.mark.gpu
def test_lmdeploy_reads_the_same_prompt_as_transformers(tiny_checkpoint):
    """LMDeploy, given labkit's template, reads exactly as many tokens as labkit's own prompt.

    Exact answers are not compared: the tiny model's random logits are nearly tied, so two
    implementations in bfloat16 part ways after a few tokens. The tiny model needs LMDeploy's
    PyTorch engine in eager mode (its CUDA-graph warm-up fails on the tiny shapes);
    InternVL2-2B runs with the defaults.
    """
    pytest.importorskip("lmdeploy", reason="LMDeploy lives in its own environment (requirements/lmdeploy.txt)")
    from lmdeploy import GenerationConfig

    from labkit.chat import openai_messages, place_image, read_image

    reference = TransformersEngine(tiny_checkpoint, device="cuda")
    engine = make_engine(tiny_checkpoint, lmdeploy_backend="pytorch", engine_options={"eager_mode": True})
    try:
        assert isinstance(engine, LMDeployEngine)
        image = noise_image(*WIDE)
        answer = engine.ask("这是什么菜？", image, settings=SHORT)
        assert answer and "".join(engine.stream("这是什么菜？", image, settings=SHORT)) == answer
        for question, history in [("这是什么菜？", []), ("它是哪里的？", [("<image>\n这是什么菜？", answer)])]:
            placed = place_image(question, True, history)
            messages = openai_messages(placed, history, read_image(image))
            reply = engine.pipe(messages, gen_config=GenerationConfig(max_new_tokens=1, do_sample=False))
            ours = reference.generate_inputs(question, image, history)["input_ids"].shape[1]
            assert reply.input_token_len == ours, (question, reply.input_token_len, ours)
    finally:
        engine.pipe.close()
