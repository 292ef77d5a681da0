"""The chat CLI, the server and the client: a bad question, picture, port or URL is named before a model loads.

Part of the bad-input checks (docs/checks.md), one file per stage. Every case uses real files: a
copy of the committed tiny base model, real safetensors, real JSON, real pictures, the real
command lines. Each test failed on the code before the fix.
"""
from __future__ import annotations

import re
import socket

import pytest
from helpers import run_cli

from labkit.course import base_model


def test_chat_cli_checks_question_and_picture_before_loading(tmp_path):
    missing = tmp_path / "no-model"  # were the model loaded first, this would be the error
    empty = run_cli("labkit", "chat", missing, "   ")
    assert empty.returncode == 2 and "The question is empty" in empty.stderr, empty.stderr
    text = tmp_path / "notes.txt"
    text.write_text("not a picture", encoding="utf-8")
    picture = run_cli("labkit", "chat", missing, "这是什么菜？", "--image", text)
    assert picture.returncode == 2 and str(text) in picture.stderr and "not an image" in picture.stderr
    folder = run_cli("labkit", "chat", missing, "这是什么菜？")
    assert folder.returncode == 2 and f"{missing}: no such model folder" in folder.stderr
    assert "Traceback" not in empty.stderr + picture.stderr + folder.stderr


def test_chat_cli_lmdeploy_template_on_a_missing_model_folder(tmp_path):
    out = tmp_path / "template.json"
    done = run_cli("labkit", "chat", tmp_path / "no-model", "--lmdeploy-template", out)
    assert done.returncode == 2 and "no-model: no such model folder" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_chat_cli_with_lmdeploy_where_it_cannot_run(tmp_path):
    import importlib.util

    if importlib.util.find_spec("lmdeploy") is not None:
        pytest.skip("LMDeploy is installed here; this checks the message where it is not")
    missing = run_cli("labkit", "chat", tmp_path / "no-model", "你好", "--backend", "lmdeploy")
    assert missing.returncode == 2 and "no-model: no such model folder" in missing.stderr
    absent = run_cli("labkit", "chat", base_model.ASSET_DIR, "你好", "--backend", "lmdeploy")
    assert absent.returncode == 2 and "LMDeploy is not installed" in absent.stderr
    assert "Traceback" not in missing.stderr + absent.stderr


def test_server_on_a_port_in_use_says_which_before_loading(tmp_path):
    import time

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        started = time.monotonic()
        done = run_cli("labkit", "serve", base_model.ASSET_DIR, "--port", port)
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "already listens" in done.stderr
    assert "The model was not loaded" in done.stderr and "Traceback" not in done.stderr
    assert "serving" not in done.stdout, time.monotonic() - started


def test_a_base_url_without_http_is_called_malformed():
    from labkit.chat import ChatInputError, OpenAIEngine

    for url in ("127.0.0.1:23333/v1", "localhost:23333/v1", "http://:23333/v1", "http://host:port/v1"):
        with pytest.raises(ChatInputError, match=re.escape(repr(url)) + " is malformed"):
            OpenAIEngine(url, model="x", timeout=5).ask("你好")
    assert OpenAIEngine("http://127.0.0.1:23333/v1/").base_url == "http://127.0.0.1:23333/v1"
