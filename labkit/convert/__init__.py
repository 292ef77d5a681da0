"""From an XTuner checkpoint to a model folder: read the trained weights (`trained`), merge LoRA
and check the merge (`merge`), write safetensors and check the folder (`pipeline`); the folder's
model card, its check before an upload and the upload commands (`publish`).

    from labkit import convert
    out = convert.convert("configs/tiny_lora_food_cpu.py", "work_dirs/.../iter_96.pth", "models/tuned")
"""
from labkit.convert.pipeline import ConversionError, ConversionReport, convert, read_report  # noqa: F401
