"""OpenAIEngine against a real ``labkit serve`` on 127.0.0.1 serving the tiny model.

The server runs in its own process, as a student starts it; every answer it gives is compared
with the in-process TransformersEngine on the same checkpoint, so the whole path - request
JSON, data URL, SSE stream, prompt built on the server - must be exact for the tests to pass.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from helpers import noise_image, serve
from labkit.chat import ChatInputError, OpenAIEngine, Sampling, TransformersEngine

SHORT = Sampling(max_new_tokens=16)


@pytest.fixture(scope="module")
def server_url(tiny_checkpoint):
    with serve(tiny_checkpoint) as url:
        yield url


@pytest.fixture(scope="module")
def local(tiny_checkpoint):
    return TransformersEngine(tiny_checkpoint)


@pytest.fixture(scope="module")
def client(server_url):
    return OpenAIEngine(server_url, timeout=120)


def post(url, payload, raw=None):
    """POST JSON; return (status, decoded JSON body)."""
    data = raw if raw is not None else json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(url + "/chat/completions", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_models_lists_the_served_checkpoint(client, tiny_checkpoint):
    assert client.model == tiny_checkpoint.name  # asked from /v1/models


def test_text_answer_equals_the_local_engine(client, local):
    assert client.ask("你好", settings=SHORT) == local.ask("你好", settings=SHORT)


def test_image_as_data_url_gives_the_same_answer_as_locally(client, local):
    image = noise_image(192, 64)
    remote = client.ask("这是什么菜？", image, settings=SHORT)
    assert remote == local.ask("这是什么菜？", image, settings=SHORT)
    assert remote != client.ask("这是什么菜？", noise_image(192, 64, seed=5), settings=SHORT)
    assert "data:image/png;base64," in client.prompt("这是什么菜？", image)


def test_streaming_pieces_join_to_the_answer(client, local):
    settings = Sampling(max_new_tokens=40)
    pieces = list(client.stream("这是什么菜？", noise_image(128, 64), settings=settings))
    assert len(pieces) > 1
    assert "".join(pieces) == local.ask("这是什么菜？", noise_image(128, 64), settings=settings)


def test_multi_turn_conversation(client, local):
    image = noise_image(192, 64)
    first, history = client.chat("这是什么菜？", image, settings=SHORT)
    second, history = client.chat("它是哪里的？", image, history, settings=SHORT)
    assert [q for q, _ in history] == ["<image>\n这是什么菜？", "它是哪里的？"]
    assert second == local.ask("它是哪里的？", image, [("<image>\n这是什么菜？", first)], settings=SHORT)


def test_a_system_message_replaces_the_system_prompt(server_url, local, tiny_checkpoint):
    custom = OpenAIEngine(server_url, system="你是美食专家。", timeout=120)
    expected = TransformersEngine(tiny_checkpoint, system="你是美食专家。").ask("你好", settings=SHORT)
    assert custom.ask("你好", settings=SHORT) == expected


def test_bad_requests_get_clear_400s(server_url):
    cases = [
        ({"messages": [{"role": "user", "content": "  "}]}, "empty"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "alternate"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]}]}, "data: URLs"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}},
            {"type": "text", "text": "这是什么菜？"}]}]}, "not an image"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}, "temperature"),
    ]
    for payload, phrase in cases:
        status, body = post(server_url, payload)
        assert status == 400 and phrase in body["error"]["message"], (payload, body)
    status, body = post(server_url, None, raw=b"{not json")
    assert status == 400 and "JSON" in body["error"]["message"]
    status, body = post(server_url, {"model": "InternVL2-76B", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 404 and "not served here" in body["error"]["message"]


def test_client_reports_server_refusals_and_absence(client, server_url):
    with pytest.raises(ChatInputError, match="empty"):
        client.ask(" ")  # checked before sending
    with pytest.raises(ChatInputError, match="not served here"):
        OpenAIEngine(server_url, model="InternVL2-76B", timeout=30).ask("你好", settings=SHORT)
    nobody = OpenAIEngine("http://127.0.0.1:9/v1", model="x", timeout=5)  # port 9: nothing listens
    with pytest.raises(ConnectionError, match="labkit serve"):
        nobody.ask("你好")
