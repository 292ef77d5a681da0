"""Conversion settings and outputs that are wrong: refused before any weight is read.

Part of the bad-input checks (docs/checks.md), one file per stage. Every case uses real files: a
copy of the committed tiny base model, real safetensors, real JSON, real pictures, the real
command lines. Each test failed on the code before the fix.
"""
from __future__ import annotations

import re

import pytest

from labkit.checkpoints.folder import CheckpointError
from labkit.course import base_model


def test_conversion_output_that_is_a_file_is_refused_before_reading_weights(tmp_path):
    from labkit.train import settings, xtuner_config
    from labkit.convert.pipeline import convert

    config = xtuner_config.write_config(settings.tiny_lora_cpu().replace(model_path=str(base_model.ASSET_DIR)),
                                   tmp_path / "config.py", num_samples=8)
    out = tmp_path / "merged"
    out.write_text("my notes", encoding="utf-8")
    with pytest.raises(NotADirectoryError, match=re.escape(str(out)) + ": is a file"):
        convert(config, tmp_path / "iter_1.pth", out)  # the .pth does not exist: never read
    assert out.read_text(encoding="utf-8") == "my notes"


@pytest.mark.parametrize("size", ["0GB", "-1GB", "abc"])
def test_a_shard_size_that_is_not_positive_is_refused_before_anything_is_read(tmp_path, size):
    from labkit.train import settings, xtuner_config
    from labkit.convert.pipeline import convert

    config = xtuner_config.write_config(settings.tiny_lora_cpu().replace(model_path=str(base_model.ASSET_DIR)),
                                   tmp_path / "config.py", num_samples=8)
    with pytest.raises(CheckpointError, match=re.escape(f"max_shard_size {size!r}")):
        convert(config, tmp_path / "iter_1.pth", tmp_path / "out", max_shard_size=size)  # .pth never read
    assert not (tmp_path / "out").exists()
