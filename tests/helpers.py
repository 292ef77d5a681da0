"""Helpers the tests share: plain functions (the fixtures themselves are in conftest.py).

* ``run_python``: ``python ARGS`` in a fresh interpreter with this checkout on the path.
* ``randomize_``: every weight random and of order one - norms not 1, biases not 0, layer scales
  not constant. Default initialisation leaves biases at zero and norms at one, so a bias or norm
  that an implementation forgot would go unnoticed; here it changes the logits. Logits of order
  one also make greedy decoding decisive instead of a coin toss between near-equal tokens.
* ``load_remote``, ``noise_image``, ``image_tiles``: a folder through transformers' Auto classes,
  a random picture, and its tiles.
* ``shared_cache``: the cache the slow tests share.
* ``run_cli``, ``one_record_file``, ``current_umask``: for the bad-input tests (``test_bad_*_input.py``):
  ``python -m ARGS`` offline with its result whatever the exit status, a one-record annotation file,
  the process's umask.
* ``serve``, ``assert_demo_serves``: ``labkit serve`` in a child process, the gradio demo in this one.
"""
from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from labkit.fileio import REPO_ROOT


def run_python(args, cwd=None, env=None, timeout=300, pythonpath=(REPO_ROOT,)):
    """Run ``python ARGS`` in a fresh interpreter; fail the test with its output if it fails."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("PYTHONPATH", None)
    if pythonpath:
        full_env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    done = subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd or REPO_ROOT, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )
    if done.returncode != 0:
        pytest.fail(f"python {' '.join(map(str, args))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def run_cli(*args, timeout=120):
    """``python -m ARGS`` in a fresh interpreter, offline, with this checkout first on the path."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_record_file(path, record):
    """Write ``[record]`` as an annotation file; return its path."""
    path.write_text(json.dumps([record], ensure_ascii=False), encoding="utf-8")
    return path


def current_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def shared_cache() -> Path:
    """The cache the slow tests share: ``$LABKIT_TEST_CACHE`` or ``<repo>/.cache/labkit-test``."""
    return Path(os.environ.get("LABKIT_TEST_CACHE") or REPO_ROOT / ".cache" / "labkit-test").resolve()


def randomize_(model, seed=0):
    """Give every parameter random values of order one, in place (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            scale_like = name.endswith((".ls1", ".ls2", "norm.weight", "norm1.weight", "norm2.weight", "mlp1.0.weight"))
            if param.ndim == 1 and scale_like:
                param.copy_(1.0 + 0.2 * noise)  # norm weights and layer scales
            elif param.ndim == 1:
                param.copy_(0.1 * noise)  # biases
            elif "tok_embeddings" in name:
                param.copy_(noise)
            elif "class_embedding" in name or "position_embedding" in name:
                param.copy_(0.5 * noise)
            else:  # Linear and Conv2d weights: unit-variance outputs for unit-variance inputs
                param.copy_(noise / param[0].numel() ** 0.5)
    return model


def load_remote(path, dtype=torch.float32):
    """(model, tokenizer) through transformers' Auto classes and the folder's own remote code."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(path), trust_remote_code=True, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=True)
    model.img_context_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    return model, tokenizer


def noise_image(width, height, seed=0):
    """A random RGB picture: every tile different, so a swapped tile changes the result."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def image_tiles(config, width, height, seed=0):
    """pixel_values (tiles, 3, S, S) of a noise image, tiled by labkit.tiling as the config says.

    With the tiny config (64 px tiles, up to 6, thumbnail): 192x64 -> 3 tiles + thumbnail = 4,
    128x64 -> 2 + 1 = 3, 64x64 -> 1.
    """
    from labkit.tiling import tiling_from_config

    return tiling_from_config(config).load(noise_image(width, height, seed))


SERVER_START_TIMEOUT_S = 180


@contextlib.contextmanager
def serve(model_dir):
    """Start ``labkit.chat.server`` for ``model_dir`` on a free port (port 0; it prints its URL); yield the
    URL; stop it afterwards - also on failure."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "labkit", "serve", str(model_dir), "--port", "0", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT,
    )
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        deadline, seen = time.monotonic() + SERVER_START_TIMEOUT_S, []
        url = None
        while url is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or process.poll() is not None:
                pytest.fail(f"labkit.chat.server did not start within {SERVER_START_TIMEOUT_S} s:\n{''.join(seen)}")
            try:
                line = lines.get(timeout=min(remaining, 5))
            except queue.Empty:
                continue
            seen.append(line)
            if "labkit.chat.server: serving" in line:
                url = line.rsplit(" at ", 1)[1].strip()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


def assert_demo_serves(engine):
    """Build the gradio demo on ``engine``, serve it on a free loopback port, fetch its page."""
    pytest.importorskip("gradio", reason="gradio is an optional extra (requirements/demo.txt)")
    import socket
    import urllib.request

    from labkit.chat.demo import build_demo

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = build_demo(engine)
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200
    finally:
        demo.close()


def failing_engine():
    """An engine whose model breaks halfway through its first answer (a crash a cell must survive)."""
    from labkit.chat import ChatEngine

    class FailingEngine(ChatEngine):
        backend = "failing"

        def __init__(self):
            self.calls = 0

        def _stream(self, question, history, picture, settings):
            self.calls += 1
            yield "半"
            if self.calls == 1:
                raise RuntimeError("CUDA out of memory (pretend)")
            yield "个答案"

    return FailingEngine()
