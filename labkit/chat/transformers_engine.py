"""Run an InternVL2 checkpoint with transformers, on the CPU or a GPU.

The engine builds the prompt itself, from the model folder's own ``conversation.py``
(:func:`labkit.chat.prompt.render_prompt`), and calls only the model's public members
(``num_image_token``, ``img_context_token_id``, ``generate``), so it runs labkit's tiny model
and OpenGVLab's InternVL2-2B alike.
"""
from __future__ import annotations

import threading
from pathlib import Path

from labkit.chat.engine import ChatEngine
from labkit.chat.prompt import IMG_CONTEXT, clean_answer, render_prompt, resolve_template
from labkit.checkpoints.remote_code import FolderTemplates
from labkit.tiling import DEFAULT_MAX_PIXELS, tiling_from_config


class TransformersEngine(ChatEngine):
    """Run an official-format checkpoint folder with transformers (``trust_remote_code``).

    ``device`` "cpu" or "cuda"; ``dtype`` defaults to float32 on the CPU and bfloat16 on a GPU.
    ``template`` names a template of the folder's own ``conversation.py`` (default: the one
    ``config.json`` names), ``system`` replaces the template's system prompt. The folder's own
    remote code runs (``code="labkit"`` runs its weights with labkit's model code instead).
    ``fast_decode=True`` decodes greedy answers with a static KV cache and, on a GPU, a compiled
    decode step replayed as a CUDA graph (`labkit.chat.fast_decode`; the first answer compiles for
    about a minute). On the CPU its tokens equal ``generate``'s; on an H200 in bf16 they drifted
    from the eager path's after 2-66 tokens (docs/benchmarks.md). It needs labkit's model code;
    sampling (temperature > 0) still goes through ``generate``.
    """

    backend = "transformers"

    def __init__(self, model_dir, device="cpu", dtype=None, template=None, system=None,
                 max_pixels=DEFAULT_MAX_PIXELS, code="folder", fast_decode=False):
        import torch

        from labkit.checkpoints.folder import load_checkpoint

        if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
            raise ValueError(f"device={device!r}: use 'cpu' or 'cuda'.")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device='cuda' but PyTorch sees no CUDA GPU here: use device='cpu'.")
        if dtype is None:
            dtype = torch.float32 if device == "cpu" else torch.bfloat16
        self.model_dir, self.device, self.dtype, self.max_pixels = Path(model_dir), device, dtype, max_pixels
        self.model, self.tokenizer = load_checkpoint(model_dir, dtype=dtype, device=device, code=code)
        self.templates = FolderTemplates(model_dir)
        self.template = resolve_template(template or getattr(self.model.config, "template", None), self.templates)
        self.system = system
        self.tiling = tiling_from_config(self.model.config)
        self.model.img_context_token_id = self.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
        self.stop_token_id = self.tokenizer.convert_tokens_to_ids(self.templates.get(self.template).sep)
        self._lock = threading.Lock()  # one generation at a time (a threaded server shares the engine)
        self.fast_decode = None
        if fast_decode:
            from labkit.chat.fast_decode import StaticGreedyDecoder, supports_static_cache

            if not supports_static_cache(self.model):
                raise ValueError(f"fast_decode=True needs labkit's model code, which {model_dir} does not run: "
                                 "pass code='labkit' (or leave fast_decode off).")
            self.fast_decode = StaticGreedyDecoder(self.model.language_model)

    @property
    def description(self):
        return f"transformers on {self.device}, {self.model_dir.name}, template {self.template}"

    def generate_inputs(self, question, image=None, history=None, settings=None) -> dict:
        """The exact keyword arguments this engine hands to ``model.generate`` (for a closer look)."""
        return self._generate_kwargs(*self._prepare(question, image, history, settings))

    def _generate_kwargs(self, question, history, picture, settings) -> dict:
        pixel_values, tokens = None, 0
        if picture is not None:
            pixel_values = self.tiling.load(picture.image, max_pixels=None)  # (tiles, 3, S, S)
            pixel_values = pixel_values.to(self.device, self.dtype)
            tokens = self.model.num_image_token * len(pixel_values)
        prompt = render_prompt(self.template, self.system, question, history, tokens, self.templates)
        inputs = self.tokenizer(prompt, return_tensors="pt")
        pad = self.tokenizer.pad_token_id
        return dict(
            pixel_values=pixel_values,
            input_ids=inputs["input_ids"].to(self.device),
            attention_mask=inputs["attention_mask"].to(self.device),
            eos_token_id=self.stop_token_id,
            pad_token_id=pad if pad is not None else self.stop_token_id,
            **settings.hf_kwargs(),
        )

    def _decode(self, token_ids) -> str:
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return clean_answer(text.split(self.templates.get(self.template).sep)[0])

    def ask(self, question, image=None, history=None, settings=None) -> str:
        import torch

        kwargs = self._generate_kwargs(*self._prepare(question, image, history, settings))
        with self._lock, torch.inference_mode():
            if self._fast(kwargs):
                output = self._fast_generate(kwargs)
            else:
                output = self.model.generate(**kwargs)  # only the new tokens: the prompt went in as embeddings
        return self._decode(output[0])

    def _fast(self, kwargs) -> bool:
        return self.fast_decode is not None and not kwargs.get("do_sample")

    def _fast_generate(self, kwargs, streamer=None, stop=None):
        """`labkit.chat.fast_decode`'s greedy tokens for ``generate``'s keyword arguments."""
        from labkit.chat.fast_decode import prompt_embeddings

        embeds = prompt_embeddings(self.model, kwargs["input_ids"], kwargs["pixel_values"])
        return self.fast_decode.generate(embeds, kwargs["attention_mask"], kwargs["max_new_tokens"],
                                         kwargs["eos_token_id"], kwargs["pad_token_id"], streamer=streamer, stop=stop)

    def _stream(self, question, history, picture, settings):
        """Generate in a worker thread; a TextIteratorStreamer hands the text over piece by piece."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        kwargs = self._generate_kwargs(question, history, picture, settings)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()  # set when the reader stops early: generation ends at the next token

        class StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids, scores, **_):
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        failure = []

        def work():
            try:
                with self._lock, torch.inference_mode():
                    if self._fast(kwargs):
                        self._fast_generate(kwargs, streamer=streamer, stop=stop.is_set)
                    else:
                        self.model.generate(**kwargs, streamer=streamer,
                                            stopping_criteria=StoppingCriteriaList([StopWhenAsked()]))
            except BaseException as err:  # handed to the reader below, never lost in the thread
                failure.append(err)
                streamer.end()

        worker = threading.Thread(target=work, name="labkit-generate", daemon=True)
        worker.start()
        try:
            yield from streamer
            worker.join()
            if failure:
                raise RuntimeError(f"Generation failed: {failure[0]}") from failure[0]
        finally:
            stop.set()
            worker.join(timeout=60)
