"""A model folder's own remote code: what it imports, its chat templates, and running it today.

An InternVL2 folder carries the python files that define its model (``auto_map`` in
``config.json`` points at them). labkit's folders carry labkit's code (``labkit/model/``);
OpenGVLab's InternVL2-2B carries OpenGVLab's. labkit runs every folder with the folder's own
code, so three things live here:

* :func:`missing_packages`: the packages a folder's code imports that this environment lacks
  (OpenGVLab's ``modeling_intern_vit.py`` imports ``timm``), found before anything loads.
* :class:`FolderTemplates`: the chat templates of the folder's own ``conversation.py``, which
  its ``chat()`` uses too; ``render`` is labkit's one prompt builder, so labkit's engines build
  the same prompt the folder's code would.
* :func:`adapt_for_generation`: the load-time compatibility layer. OpenGVLab's
  ``InternLM2ForCausalLM`` derives from ``PreTrainedModel`` alone and reads the legacy tuple
  KV cache. Since transformers 4.50 ``PreTrainedModel`` no longer brings ``GenerationMixin``,
  so ``InternVLChatModel.generate`` fails on ``self.language_model.generate``. The layer gives
  that one language model object ``GenerationMixin``, a ``generation_config`` and the legacy
  cache (transformers must not hand it a ``DynamicCache``). Every labkit loader applies it
  (``labkit.checkpoints.folder.load_checkpoint``); outside labkit, one call does the same::

      from labkit.checkpoints.remote_code import adapt_for_generation
      model = adapt_for_generation(AutoModel.from_pretrained(path, trust_remote_code=True))

Checked with transformers 4.57.6 (the course pin). transformers 5 removed the legacy tuple
cache that OpenGVLab's InternLM2 code reads, so the layer refuses to run there.
"""
from __future__ import annotations

import ast
import contextlib
import importlib.util
import logging
import sys
from pathlib import Path

from labkit import fileio

CHECKED_TRANSFORMERS = "4.57.6"
SERVED_TRANSFORMERS = ("4.37", "5")  # the layer runs for versions in [first, second)
LABKIT_TEMPLATE = "internlm2-chat-xtuner"  # the template labkit's folders name in config.json (XTuner's layout)

# Import names whose pip package has another name.
PIP_NAMES = {"cv2": "opencv-python-headless", "PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn"}


class RemoteCodeError(ValueError):
    """A folder's own code cannot run here; the message names the file and what to do."""


# -- what the folder's code imports ---------------------------------------------------------
def _optional_import_lines(tree):
    """Line numbers of imports inside ``try:`` blocks: the code copes when those are absent."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            for inner in node.body:
                for sub in ast.walk(inner):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        lines.add(sub.lineno)
    return lines


def imported_packages(py_file):
    """Top-level packages a python file imports outside ``try:`` blocks (no relative imports)."""
    tree = ast.parse(Path(py_file).read_text(encoding="utf-8"), filename=str(py_file))
    optional = _optional_import_lines(tree)
    names = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in optional:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names)


def missing_packages(folder):
    """``{package: [files that import it]}`` for packages this Python environment lacks."""
    missing = {}
    for py_file in sorted(Path(folder).glob("*.py")):
        try:
            packages = imported_packages(py_file)
        except SyntaxError as err:
            raise RemoteCodeError(f"{py_file}: not valid Python ({err.msg}, line {err.lineno}); "
                                  "restore the file from the model's original folder.") from None
        for name in sorted(packages):
            if importlib.util.find_spec(name) is None:
                missing.setdefault(name, []).append(py_file.name)
    return missing


def check_imports(folder):
    """Raise :class:`RemoteCodeError` naming each package the folder's code needs but lacks."""
    missing = missing_packages(folder)
    if missing:
        parts = [f"{name} (imported by {', '.join(files)})" for name, files in missing.items()]
        pips = " ".join(PIP_NAMES.get(name, name) for name in missing)
        raise RemoteCodeError(
            f"{folder}: the model's own code imports packages this environment lacks: {'; '.join(parts)}. "
            f"Install them (`pip install {pips}`; the course environment pins timm in requirements/base.txt)."
        )


# -- the folder's chat templates ------------------------------------------------------------
def _load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FolderTemplates:
    """The chat templates a model folder defines in its own ``conversation.py``.

    labkit's and OpenGVLab's ``conversation.py`` share the interface the prompt needs:
    ``get_conv_template(name)`` gives a conversation with ``system_message``, ``roles``,
    ``sep``, ``append_message`` and ``get_prompt``. A folder without that file falls back to
    labkit's own templates.
    """

    def __init__(self, folder=None):
        path = Path(folder) / "conversation.py" if folder is not None else None
        if path is not None and path.is_file():
            self.source = path
            self.module = _load_module(path, f"_labkit_templates_{abs(hash(str(path.resolve())))}")
        else:
            from labkit.model import conversation

            self.source, self.module = Path(conversation.__file__), conversation
        if not hasattr(self.module, "get_conv_template"):
            raise RemoteCodeError(f"{self.source}: has no get_conv_template(); it is not an InternVL2 template module.")

    @classmethod
    def of_model(cls, model):
        """The templates a loaded model's own code uses (the module its ``chat()`` calls)."""
        code = sys.modules.get(type(model).__module__)
        factory = getattr(code, "get_conv_template", None)
        if factory is None:
            raise RemoteCodeError(f"{type(model).__module__}: has no get_conv_template; not InternVL2 model code.")
        templates = cls.__new__(cls)
        templates.module = sys.modules[factory.__module__]
        templates.source = Path(templates.module.__file__)
        return templates

    def names(self):
        table = getattr(self.module, "TEMPLATES", None) or getattr(self.module, "conv_templates", None) or {}
        return sorted(table)

    def get(self, name):
        """A fresh conversation of template ``name``; KeyError naming the known ones if unknown."""
        try:
            return self.module.get_conv_template(name)
        except KeyError:
            raise KeyError(f"Unknown chat template {name!r} in {self.source}; it knows: {', '.join(self.names())}.") from None

    def render(self, name, question, history=(), system=None):
        """The conversation as template ``name`` writes it, ending where the assistant's answer begins.

        The steps of InternVL2's own ``chat()``: each ``(question, answer)`` turn of ``history``,
        then ``question`` and an open answer. ``system`` replaces the template's system prompt.
        Markers such as ``<image>`` stay as they are (the caller puts the image tokens there).
        """
        conv = self.get(name)
        if system is not None:
            conv.system_message = system
        user, assistant = conv.roles
        for old_question, old_answer in history:
            conv.append_message(user, old_question)
            conv.append_message(assistant, old_answer)
        conv.append_message(user, question)
        conv.append_message(assistant, None)
        return conv.get_prompt()

    def __contains__(self, name):
        return name in self.names()

    def system_message(self, name):
        return self.get(name).system_message


def folder_template(folder):
    """``(template name, its system prompt)`` that a model folder's ``config.json`` names."""
    config = fileio.read_config(folder)
    name = config.get("template") or "internlm2-chat"
    return name, FolderTemplates(folder).system_message(name)


# -- the compatibility layer ----------------------------------------------------------------
class _DropGenerationMixinWarning(logging.Filter):
    """transformers warns, at every load, that such a class will lose ``generate``: the layer below
    gives it back, so the warning (which asks the reader to contact the model's owner) only confuses."""

    def filter(self, record):
        return "has generative capabilities, as `prepare_inputs_for_generation`" not in record.getMessage()


@contextlib.contextmanager
def quiet_generation_warning():
    """Load a model without transformers' GenerationMixin warning (see ``adapt_for_generation``)."""
    logger = logging.getLogger("transformers.modeling_utils")
    drop = _DropGenerationMixinWarning()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


_ADAPTED = {}  # original language-model class -> its generating subclass


def _generating_class(cls):
    """``cls`` with GenerationMixin and the legacy tuple cache (one subclass per class, cached)."""
    from transformers import GenerationMixin

    if cls not in _ADAPTED:
        _ADAPTED[cls] = type(cls.__name__, (cls, GenerationMixin), {
            "__module__": cls.__module__,
            "__doc__": f"{cls.__doc__ or cls.__name__}\n\n(labkit: GenerationMixin and the legacy tuple KV cache.)",
            # transformers must not create a DynamicCache: this code reads past_key_values[0][0].shape
            "_supports_default_dynamic_cache": classmethod(lambda _cls: False),
            "_labkit_adapted": True,
        })
    return _ADAPTED[cls]


def needs_adapting(model):
    """True when the model's language model cannot ``generate`` under this transformers."""
    from transformers import GenerationMixin

    llm = getattr(model, "language_model", None)
    return llm is not None and not isinstance(llm, GenerationMixin)


def adapt_for_generation(model, where="the model"):
    """Make a loaded InternVL2 model generate under the pinned transformers; returns ``model``.

    Models whose language model already generates (labkit's own code) are returned unchanged.
    The change is to this object only: its language model's class becomes a subclass with
    ``GenerationMixin`` and the legacy cache, and it gets a ``generation_config`` from its
    config (as transformers gives every model that can generate).
    """
    if not needs_adapting(model):
        return model
    import transformers
    from packaging.version import Version
    from transformers import GenerationConfig

    low, high = (Version(v) for v in SERVED_TRANSFORMERS)
    if not low <= Version(Version(transformers.__version__).base_version) < high:
        raise RemoteCodeError(
            f"{where}: its language model ({type(model.language_model).__name__}) cannot generate under "
            f"transformers {transformers.__version__}. labkit's compatibility layer serves transformers "
            f"{SERVED_TRANSFORMERS[0]} to below {SERVED_TRANSFORMERS[1]} (checked with {CHECKED_TRANSFORMERS}); "
            "transformers 5 removed the legacy tuple KV cache this code reads. Use the course environment "
            "(requirements/base.txt), or run the weights with labkit's own code: load_checkpoint(path, code='labkit')."
        )
    llm = model.language_model
    llm.__class__ = _generating_class(type(llm))
    if getattr(llm, "generation_config", None) is None:
        llm.generation_config = GenerationConfig.from_model_config(llm.config)
    return model
