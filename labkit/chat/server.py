"""A small OpenAI-compatible chat server for the CPU course.

On a GPU, ``lmdeploy serve api_server MODEL_DIR --trust-remote-code --server-port 23333`` serves
a checkpoint through the OpenAI chat API. LMDeploy cannot run on a CPU, so this module serves
the same API with labkit's :class:`~labkit.chat.transformers_engine.TransformersEngine`; every OpenAI client
(:class:`~labkit.chat.openai_engine.OpenAIEngine`, ``curl``, the ``openai`` package) then works the same way
against either server::

    labkit serve models/tiny --port 23333
    curl http://127.0.0.1:23333/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"messages": [{"role": "user", "content": "你好"}], "max_tokens": 20}'

Endpoints: ``GET /v1/models`` and ``POST /v1/chat/completions`` (``"stream": true`` answers
with server-sent events). Pictures come as ``image_url`` content parts holding ``data:`` URLs
(base64); web addresses are refused, as the course runs offline. The server listens on
127.0.0.1 only, unless you choose another ``--host``.
"""
from __future__ import annotations

import argparse
import base64
import copy
import json
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from labkit.chat.inputs import IMAGE_MARKER, ChatInputError, Sampling

MAX_BODY_BYTES = 32 * 1024 * 1024  # a request larger than this is refused (pictures included)
MAX_MESSAGES = 200


class RequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message, status=400, kind="invalid_request_error"):
        super().__init__(message)
        self.status, self.kind = status, kind


# ---------------------------------------------------------------------------------------------
# From an OpenAI request to labkit's (question, picture, history, settings)
# ---------------------------------------------------------------------------------------------


def _decode_data_url(url: str) -> bytes:
    if not isinstance(url, str) or not url.startswith("data:"):
        raise RequestError(
            "Only data: URLs are accepted for images (this server runs offline): send the picture as "
            "'data:image/jpeg;base64,...'."
        )
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise RequestError("The image data URL must be base64-encoded ('data:image/png;base64,...').")
    try:
        return base64.b64decode(payload, validate=True)
    except ValueError:
        raise RequestError("The image data URL does not hold valid base64.") from None


def _read_content(content, where):
    """A message's content -> (text, image bytes or None)."""
    if isinstance(content, str):
        return content, None
    if not isinstance(content, list):
        raise RequestError(f"{where}: content must be text or a list of content parts.")
    texts, image = [], None
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            if image is not None:
                raise RequestError(f"{where}: one picture per message, please.")
            url = part.get("image_url")
            image = _decode_data_url(url.get("url") if isinstance(url, dict) else url)
        else:
            raise RequestError(f"{where}: unknown content part type {kind!r} (use 'text' or 'image_url').")
    return "\n".join(texts), image


def parse_messages(messages):
    """OpenAI messages -> (system or None, question, image bytes or None, history).

    The turn that carries the picture gets the ``<image>`` marker, exactly as labkit's own
    engines place it.
    """
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list.")
    if len(messages) > MAX_MESSAGES:
        raise RequestError(f"Too many messages ({len(messages)}); at most {MAX_MESSAGES}.")
    system, turns, image = None, [], None
    for number, message in enumerate(messages, start=1):
        where = f"message {number}"
        if not isinstance(message, dict):
            raise RequestError(f"{where} is not an object.")
        role = message.get("role")
        text, picture = _read_content(message.get("content"), where)
        if picture is not None:
            if role != "user" or image is not None:
                raise RequestError("Only one picture per conversation, in a user message.")
            image, text = picture, f"{IMAGE_MARKER}\n{text}"
        if role == "system":
            if number != 1:
                raise RequestError("A system message may only come first.")
            system = text
        elif role in ("user", "assistant"):
            expected = "user" if not turns or turns[-1][0] == "assistant" else "assistant"
            if role != expected:
                raise RequestError(f"{where} has role {role!r}; user and assistant turns must alternate.")
            turns.append((role, text))
        else:
            raise RequestError(f"{where} has role {role!r}; use system, user or assistant.")
    if not turns or turns[-1][0] != "user":
        raise RequestError("The last message must come from the user.")
    history = [(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns) - 1, 2)]
    return system, turns[-1][1], image, history


def parse_settings(body) -> Sampling:
    defaults = Sampling()
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return Sampling(
        max_new_tokens=defaults.max_new_tokens if max_tokens is None else max_tokens,
        temperature=body.get("temperature", defaults.temperature),
        top_p=body.get("top_p", defaults.top_p),
    )


# ---------------------------------------------------------------------------------------------
# The HTTP side
# ---------------------------------------------------------------------------------------------


class ChatHandler(BaseHTTPRequestHandler):
    """Answers one request; the server's ``engine`` and ``model_name`` do the work."""

    server_version = "labkit-chat/1"
    timeout = 60  # seconds a client may take to send its request

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if not self.server.quiet:
            super().log_message(format, *args)

    # -- answering ------------------------------------------------------------------------
    def _send_json(self, status, payload):
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, err: RequestError):
        self._send_json(err.status, {"error": {"message": str(err), "type": err.kind, "code": err.status}})

    def do_GET(self):
        if self.path.rstrip("/") == "/v1/models":
            model = {"id": self.server.model_name, "object": "model", "created": self.server.started,
                     "owned_by": "labkit"}
            self._send_json(200, {"object": "list", "data": [model]})
        else:
            self._send_error(RequestError(f"No endpoint {self.path}; try /v1/models.", 404, "not_found"))

    def do_POST(self):
        try:
            if self.path.rstrip("/") != "/v1/chat/completions":
                raise RequestError(f"No endpoint {self.path}; use /v1/chat/completions.", 404, "not_found")
            self._chat(self._read_body())
        except RequestError as err:
            self._send_error(err)
        except ChatInputError as err:
            self._send_error(RequestError(str(err)))
        except Exception as err:  # the server stays up; the client hears what went wrong
            self.log_error("chat failed: %r", err)
            self._send_error(RequestError(f"The model failed: {err}", 500, "server_error"))

    def _read_body(self):
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError("The request needs a Content-Length header.", 411) from None
        if length > MAX_BODY_BYTES:
            raise RequestError(f"The request is {length:,} bytes, above the limit of {MAX_BODY_BYTES:,}.", 413)
        try:
            body = json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError):
            raise RequestError("The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise RequestError("The request body must be a JSON object.")
        return body

    def _chat(self, body):
        model = body.get("model")
        if model not in (None, "", self.server.model_name):
            raise RequestError(f"The model {model!r} is not served here; this server has "
                               f"{self.server.model_name!r}.", 404, "model_not_found")
        system, question, image, history = parse_messages(body.get("messages"))
        settings = parse_settings(body)
        engine = self.server.engine
        if system is not None:  # a shallow copy shares the model and its lock, with its own system prompt
            engine = copy.copy(engine)
            engine.system = system
        reply_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.get("stream"):
            pieces = engine.stream(question, image, history, settings)  # checks the input before any reply
            self._stream_reply(reply_id, pieces)
        else:
            answer = engine.ask(question, image, history, settings)
            message = {"role": "assistant", "content": answer}
            self._send_json(200, {
                "id": reply_id, "object": "chat.completion", "created": int(time.time()),
                "model": self.server.model_name,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            })

    def _stream_reply(self, reply_id, pieces):
        """Server-sent events: one ``data: {chunk}`` per piece, then ``data: [DONE]``."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()

        def event(delta=None, finish=None, error=None):
            chunk = {"id": reply_id, "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": self.server.model_name,
                     "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}
            if error:
                chunk = {"error": {"message": error, "type": "server_error"}}
            self.wfile.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode("utf-8"))
            self.wfile.flush()

        try:
            event({"role": "assistant", "content": ""})
            for piece in pieces:
                event({"content": piece})
            event(finish="stop")
        except (BrokenPipeError, ConnectionResetError):
            pieces.close()  # the client left: stop generating
            return
        except Exception as err:  # headers are gone already: report inside the stream
            self.log_error("chat failed while streaming: %r", err)
            event(error=f"The model failed: {err}")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True  # a hanging request never keeps the process alive

    def __init__(self, engine, host="127.0.0.1", port=23333, model_name="labkit", quiet=False):
        super().__init__((host, port), ChatHandler)
        self.engine, self.model_name, self.quiet = engine, model_name, quiet
        self.started = int(time.time())

    @property
    def url(self):
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


def listen(host, port, model_name, quiet=False) -> ChatServer:
    """A ChatServer bound to ``host:port`` with no engine yet; ChatInputError naming the port if it cannot bind."""
    import errno
    import socket

    try:
        return ChatServer(None, host, port, model_name, quiet)
    except socket.gaierror as err:
        raise ChatInputError(f"--host {host!r}: not an address of this machine ({err.strerror}); "
                             "use 127.0.0.1 (this machine only) or 0.0.0.0 (every network).") from None
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            why = "another program (an earlier labkit.chat.server or lmdeploy?) already listens there"
        elif err.errno == errno.EACCES:
            why = "ports below 1024 need administrator rights"
        elif err.errno == errno.EADDRNOTAVAIL:
            why = f"{host} is not an address of this machine"
        else:
            why = err.strerror or str(err)
        raise ChatInputError(f"cannot listen on {host}:{port}: {why}. Choose another --port (0 picks a free one), "
                             "or stop the other server first. The model was not loaded.") from None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="labkit serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="an official-format checkpoint folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=23333, help="port (0: any free port; the URL is printed)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--template", help="chat template (default: the model's config)")
    parser.add_argument("--model-name", help="the name clients ask for (default: the folder's name)")
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: a port is a number from 0 to 65535 (0: any free port).")

    from labkit.chat.openai_engine import served_name
    from labkit.chat.prompt import resolve_template
    from labkit.chat.transformers_engine import TransformersEngine
    from labkit.checkpoints.folder import CheckpointError, check_model_folder

    # The cheap checks first, so a mistake costs no model load: the folder, the template, the port.
    try:
        check_model_folder(args.model_dir)
        if args.template:
            resolve_template(args.template)
        server = listen(args.host, args.port, args.model_name or served_name(args.model_dir), args.quiet)
    except (CheckpointError, ChatInputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        server.engine = TransformersEngine(args.model_dir, device=args.device, template=args.template)
    except (CheckpointError, ChatInputError, ValueError) as err:
        server.server_close()
        print(f"error: {err}", file=sys.stderr)
        return 2
    engine = server.engine
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"labkit.chat.server: listening on {args.host}: other machines can reach this server.", file=sys.stderr)
    print(f"labkit.chat.server: serving {server.model_name} ({engine.description}) at {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
