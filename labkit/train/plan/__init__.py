"""Plan the GPU memory of an InternVL2 fine-tune before you launch it.

From the checkpoint's ``config.json`` and the ``Settings`` the run trains with, the planner adds
up what one GPU holds at the worst moment of a training step and says whether that fits a card::

    from labkit.train import plan, settings
    course = settings.course_gpu()
    p = plan.estimate("labkit/assets/internvl2-2b/config.json", course)
    print(p)                                  # a table: weights, optimizer, activations...
    print(plan.fits(p, "A100 80GB x 30%"))    # fits / does not fit: needs ... GiB of ... usable
    print(plan.recommend("labkit/assets/internvl2-2b/config.json", "24GB", course))

Keywords override single knobs (``batch_size=2``, ``tiles=13``, ``engine="xtuner"``) or plan
without a ``Settings``. The parts, one module each:

* ``shape`` - the sizes read from ``config.json``, parameter counts, LoRA parameters;
* ``activations`` - the tensors saved for backward and the logits, per token;
* ``calibration`` - the fitted constants, the measurements behind them, ``fit_calibration``;
* ``budget`` - "24GB", "H200", "A100 80GB x 30%" as GiB;
* ``estimate`` - the knobs (``PlanSettings``) and the plan; ``verdict`` - ``fits``, ``recommend``.

The memory model, the calibration and how well it holds: ``docs/memory-plan.md``.
"""

from labkit.train.plan.budget import KNOWN_GPUS, Budget, parse_budget
from labkit.train.plan.calibration import (ANCHOR_SETTINGS, CALIBRATION, CALIBRATIONS, ENGINES,
                                           KIT_CALIBRATION, KIT_MEASUREMENTS, KIT_SETTINGS,
                                           MEASURED_ANCHORS, Calibration, fit_calibration)
from labkit.train.plan.estimate import (FROM_SETTINGS, METHODS, SETTING_NAMES, Plan, PlanSettings, estimate,
                                        make_settings, settings_knobs)
from labkit.train.plan.activations import (activation_bytes, frozen_vision_forward_bytes,
                                           llm_layer_saved_bytes, logit_elements)
from labkit.train.plan.shape import (BF16, FP32, GIB, LLM_LINEARS, NF4_BYTES_PER_PARAM, ModelShape,
                                     count_parameters, lora_parameters, read_model_shape)
from labkit.train.plan.verdict import SAFETY_MARGIN, Recommendation, Verdict, fits, recommend

__all__ = [
    "ANCHOR_SETTINGS", "BF16", "Budget", "CALIBRATION", "CALIBRATIONS", "Calibration", "ENGINES", "FP32",
    "FROM_SETTINGS", "GIB", "KIT_CALIBRATION", "KIT_MEASUREMENTS", "KIT_SETTINGS", "KNOWN_GPUS", "LLM_LINEARS",
    "MEASURED_ANCHORS", "METHODS", "ModelShape", "NF4_BYTES_PER_PARAM", "Plan", "PlanSettings",
    "Recommendation", "SAFETY_MARGIN", "SETTING_NAMES", "Verdict", "activation_bytes", "count_parameters",
    "estimate", "fit_calibration", "fits", "frozen_vision_forward_bytes", "llm_layer_saved_bytes",
    "logit_elements", "lora_parameters", "make_settings", "parse_budget", "read_model_shape", "recommend",
    "settings_knobs",
]
