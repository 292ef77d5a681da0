"""Run an InternVL2 checkpoint with LMDeploy (CUDA GPU only, its own environment).

LMDeploy 0.18 needs torch <= 2.12.1 while the course pins a newer torch, so it lives in a
separate virtualenv built from ``requirements/lmdeploy.txt``; without it this engine raises an
``ImportError`` that points there.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from labkit.chat.engine import ChatEngine
from labkit.chat.prompt import lmdeploy_chat_template, openai_messages, resolve_template
from labkit.checkpoints.remote_code import FolderTemplates
from labkit.tiling import DEFAULT_MAX_PIXELS, tiling_from_config


def _import_lmdeploy():
    if importlib.util.find_spec("lmdeploy") is None:
        raise ImportError(
            "LMDeploy is not installed in this environment. It needs a CUDA GPU and torch <= 2.12.1, "
            "so it lives in its own environment: see requirements/lmdeploy.txt. On a CPU, use "
            "TransformersEngine (or make_engine(..., backend='transformers'))."
        )
    try:
        import lmdeploy
    except ImportError as err:  # installed, but one of its own dependencies is missing or broken
        raise ImportError(
            f"LMDeploy is installed but does not import: {err}. Reinstall its environment from "
            "requirements/lmdeploy.txt."
        ) from err
    return lmdeploy


class LMDeployEngine(ChatEngine):
    """Run the checkpoint with LMDeploy's TurboMind or PyTorch engine (CUDA GPU only).

    LMDeploy uses its own InternVL2 implementation and tiling; labkit hands it the
    conversation in the OpenAI format and labkit's template (via ``ChatTemplateConfig``).
    ``engine_options`` go to the engine config as they are, e.g. ``{"eager_mode": True}``
    (PyTorch engine without CUDA graphs) or ``{"cache_max_entry_count": 0.4}`` (a smaller
    KV cache, leaving GPU memory for other work).
    """

    backend = "lmdeploy"

    def __init__(self, model_dir, backend="turbomind", session_len=8192, template=None, system=None,
                 max_pixels=DEFAULT_MAX_PIXELS, engine_options=None):
        if backend not in ("turbomind", "pytorch"):
            raise ValueError(f"backend={backend!r}: LMDeploy offers 'turbomind' or 'pytorch'.")
        from labkit.checkpoints.folder import check_model_folder

        config = check_model_folder(model_dir)  # a missing or broken folder is named before LMDeploy starts
        lmdeploy = _import_lmdeploy()
        if "ipykernel" in sys.modules:  # Jupyter already runs an event loop; LMDeploy needs its own
            import nest_asyncio

            nest_asyncio.apply()
        self.model_dir, self.engine_backend, self.max_pixels = Path(model_dir), backend, max_pixels
        self.templates = FolderTemplates(self.model_dir)
        self.template = resolve_template(template or config.get("template"), self.templates)
        self.system = system
        self.tiling = tiling_from_config(config)
        engine_config = (lmdeploy.TurbomindEngineConfig if backend == "turbomind" else lmdeploy.PytorchEngineConfig)
        try:
            self.pipe = lmdeploy.pipeline(
                str(self.model_dir),
                backend_config=engine_config(session_len=session_len, **(engine_options or {})),
                chat_template_config=lmdeploy.ChatTemplateConfig(**lmdeploy_chat_template(self.template, system, self.templates)),
                trust_remote_code=True,
            )
        except SystemExit as err:  # LMDeploy's environment checks end with exit(1) after logging why
            raise RuntimeError(
                f"LMDeploy refused to start ({backend} engine, {self.model_dir}): see its log lines above. "
                "In a script, build the engine under `if __name__ == '__main__':` (LMDeploy starts worker "
                "processes that re-import the script)."
            ) from err

    @property
    def description(self):
        return f"lmdeploy {self.engine_backend}, {self.model_dir.name}, template {self.template}"

    def _gen_config(self, settings):
        from lmdeploy import GenerationConfig

        if settings.greedy:
            return GenerationConfig(max_new_tokens=settings.max_new_tokens, do_sample=False, top_k=1)
        return GenerationConfig(max_new_tokens=settings.max_new_tokens, do_sample=True, top_k=0,
                                temperature=settings.temperature, top_p=settings.top_p)

    def _stream(self, question, history, picture, settings):
        messages = openai_messages(question, history, picture)
        for output in self.pipe.stream_infer(messages, gen_config=self._gen_config(settings)):
            yield output.text
