"""labkit: a hands-on course kit that shows how the InternVL2 multimodal model works.

Each module holds one concern (the model parts, image tiling, data, fine-tuning, conversion,
chat, evaluation, plots); notebooks import them. Importing ``labkit`` itself is cheap: the
heavy libraries (torch, transformers, xtuner) load only in the modules that need them.
"""

__version__ = "0.1.0"
