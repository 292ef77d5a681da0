"""A client of an OpenAI-compatible chat server: ``lmdeploy serve api_server`` on a GPU, or
``labkit serve`` (labkit's small CPU server). Standard library only.
"""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from labkit.chat.engine import ChatEngine
from labkit.chat.inputs import ChatInputError
from labkit.chat.prompt import clean_answer, openai_messages
from labkit.tiling import DEFAULT_MAX_PIXELS, tiling_from_config


class OpenAIEngine(ChatEngine):
    """A client for an OpenAI-compatible ``/v1/chat/completions`` server, standard library only.

    The server renders the prompt with its own template, so :meth:`prompt` shows the request
    labkit sends (the picture's data shortened). ``folder``, the served model's folder where it
    is at hand, gives the engine the model's tiling and template: ``labkit deploy`` and ``labkit
    serve`` prompt with the folder's template, so :meth:`prompt` then shows that text.
    """

    backend = "openai"

    def __init__(self, base_url="http://127.0.0.1:23333/v1", model=None, api_key="none", timeout=600,
                 system=None, max_pixels=DEFAULT_MAX_PIXELS, folder=None):
        self.base_url = check_base_url(base_url)
        self._model, self.api_key, self.timeout = model, api_key, timeout
        self.system, self.max_pixels, self.template = system, max_pixels, "the server's"
        if folder is not None:  # served by labkit deploy or labkit serve: with the folder's own template
            from labkit.chat.prompt import resolve_template
            from labkit.checkpoints.remote_code import FolderTemplates
            from labkit.fileio import read_config

            config = read_config(folder)
            self.tiling = tiling_from_config(config)
            self.templates = FolderTemplates(folder)
            self.template = resolve_template(config.get("template"), self.templates)

    def served_models(self) -> list[str]:
        """The model names the server's ``/models`` lists."""
        with self._open("/models") as response:
            return [model["id"] for model in json.load(response).get("data") or []]

    def check_served(self) -> None:
        """ChatInputError unless the server lists the model this engine asks for."""
        served = self.served_models()
        if self._model is not None and self._model not in served:
            raise ChatInputError(
                f"The server at {self.base_url} serves {', '.join(map(repr, served)) or 'no model'}, not "
                f"{self._model!r}. Serve that folder: `labkit deploy FOLDER` (GPU) or `labkit serve FOLDER` (CPU); "
                "a model is served under its folder's name."
            )

    @property
    def description(self):
        return f"openai client of {self.base_url}, model {self._model or '(ask the server)'}"

    @property
    def model(self) -> str:
        """The model name to request; asked from the server's /models when not given."""
        if self._model is None:
            models = self.served_models()
            if not models:
                raise ChatInputError(f"{self.base_url}/models lists no model; is the server still loading?")
            self._model = models[0]
        return self._model

    def _open(self, path, payload=None):
        request = urllib.request.Request(
            self.base_url + path,
            data=None if payload is None else json.dumps(payload).encode("utf-8"),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"},
        )
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            detail = _error_message(err)
            if 400 <= err.code < 500:  # the request was wrong (input, model name, address): fixable here
                raise ChatInputError(f"The server refused the request (HTTP {err.code}): {detail}") from None
            raise RuntimeError(f"{self.base_url}{path} answered HTTP {err.code}: {detail}") from None
        except urllib.error.URLError as err:
            raise ConnectionError(
                f"No chat server answers at {self.base_url} ({err.reason}). Start one: "
                "`labkit serve MODEL_DIR --port 23333` (CPU) or `labkit deploy MODEL_DIR` (GPU, LMDeploy)."
            ) from None

    def _payload(self, question, history, picture, settings, stream):
        payload = {
            "model": self.model,
            "messages": openai_messages(question, history, picture, self.system),
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "stream": stream,
        }
        if settings.greedy:
            payload["top_k"] = 1  # LMDeploy's extension: make greedy explicit
        return payload

    def ask(self, question, image=None, history=None, settings=None) -> str:
        prepared = self._prepare(question, image, history, settings)
        with self._open("/chat/completions", self._payload(*prepared, stream=False)) as response:
            reply = json.load(response)
        return clean_answer(reply["choices"][0]["message"].get("content") or "")

    def _stream(self, question, history, picture, settings):
        with self._open("/chat/completions", self._payload(question, history, picture, settings, True)) as response:
            for line in response:  # server-sent events: "data: {...}" lines, ending with "data: [DONE]"
                line = line.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(f"The server failed while answering: {chunk['error'].get('message')}")
                for choice in chunk.get("choices", []):
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield piece

    def prompt(self, question, image=None, history=None, full=False) -> str:
        """With the served folder known, the text its server renders (both servers labkit starts use
        the folder's template); else the request labkit sends."""
        if self.templates is not None:
            return super().prompt(question, image, history, full)
        placed, turns, picture, _ = self._prepare(question, image, history, None)
        messages = openai_messages(placed, turns, picture, self.system)
        text = json.dumps(messages, ensure_ascii=False, indent=2)
        if full:
            return text
        return re.sub(r'"data:([^;"]+);base64,([^"]{40})[^"]*"',
                      lambda m: f'"data:{m.group(1)};base64,{m.group(2)}..."', text)


def served_name(folder) -> str:
    """The model name a folder is served under, by ``labkit deploy`` and ``labkit serve``: its name."""
    return Path(folder).resolve().name


def check_base_url(base_url) -> str:
    """A server address such as ``http://127.0.0.1:23333/v1`` (no trailing slash); ChatInputError if malformed."""
    if not isinstance(base_url, str) or not base_url.strip():
        raise ChatInputError(f"base_url {base_url!r} is not a URL: write e.g. 'http://127.0.0.1:23333/v1'.")
    url = base_url.strip().rstrip("/")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # a port that is not a number raises ValueError
    except ValueError as err:
        raise ChatInputError(f"base_url {base_url!r} is malformed ({err}): write e.g. 'http://127.0.0.1:23333/v1'.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        hint = "http://127.0.0.1:23333/v1" if "://" in url else "http://" + url
        raise ChatInputError(f"base_url {base_url!r} is malformed: a server address starts with http:// or https:// "
                             f"and names a host, e.g. {hint!r}.")
    return url


def _error_message(err: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(err.read().decode("utf-8"))
        return body.get("error", {}).get("message") or body.get("message") or str(body)
    except (ValueError, AttributeError):
        return err.reason
