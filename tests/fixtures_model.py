"""Model fixtures shared by test_model.py, test_parity.py and test_checkpoint.py.

Import the fixtures you use into a test module (``from fixtures_model import tiny_checkpoint``).
Each checkpoint is built once per session even when several modules import its fixture.

* ``tiny_checkpoint``: the tiny course checkpoint exactly as a student makes it, by the CLI
  ``labkit checkpoint --tiny DIR`` (bfloat16, default random initialisation).
* ``parity_checkpoint``: the same architecture with EVERY weight random and of order one -
  norms not 1, biases not 0, layer scales not constant - saved in float32. Default
  initialisation leaves biases at zero and norms at one, so a bias or norm that an
  implementation forgot would go unnoticed; here it changes the logits. Logits of order one
  also make greedy decoding decisive instead of a coin toss between near-equal tokens.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
_BUILT = {}  # name -> path: one build per session, shared by every module that imports a fixture


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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Path of the tiny course checkpoint, written by the labkit CLI."""
    if "tiny" not in _BUILT:
        out = tmp_path_factory.mktemp("ckpt") / "tiny"
        run_python(["-m", "labkit", "checkpoint", "--tiny", out])
        _BUILT["tiny"] = out
    return _BUILT["tiny"]


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_checkpoint), trust_remote_code=True)


@pytest.fixture(scope="session")
def parity_checkpoint(tiny_tokenizer, tmp_path_factory):
    """Path of a float32 tiny checkpoint whose every weight is random (see the module docstring)."""
    if "parity" not in _BUILT:
        from labkit.checkpoints.folder import build_model, tiny_config, write_checkpoint

        model = randomize_(build_model(tiny_config(len(tiny_tokenizer)), seed=0), seed=1)
        out = tmp_path_factory.mktemp("ckpt") / "parity"
        write_checkpoint(out, tokenizer=tiny_tokenizer, model=model, dtype=torch.float32)
        _BUILT["parity"] = out
    return _BUILT["parity"]


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
