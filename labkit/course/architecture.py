"""The architecture lesson: follow one picture through ViT -> pixel shuffle -> MLP -> LLM.

Notebook 01 calls these functions on the real model code, so every shape printed is the shape
the model really computes, for the tiny course model and for InternVL2-2B alike. They use only
the model's public parts (``vision_model``, ``mlp1``, ``language_model``, ``template``,
``system_message``, ``num_image_token``), which labkit's code and OpenGVLab's both have; the
prompt comes from the model's own template module, and the image tokens are checked against
the model's own ``extract_feature``.
"""
import functools
import inspect
import sys
from dataclasses import dataclass

import torch

from labkit import fileio
from labkit.checkpoints.folder import INTERNVL2_2B_CONFIG, build_model
from labkit.chat.prompt import IMG_CONTEXT, render_prompt
from labkit.checkpoints.remote_code import FolderTemplates
from labkit.tiling import tiling_from_config


@dataclass
class Stage:
    step: str
    shape: tuple
    note: str

    def __str__(self):
        return f"{self.step:<34} {str(self.shape):<22} {self.note}"


def folder_pixel_shuffle(model):
    """The pixel shuffle of the model's own code, as ``f(grid) -> folded grid``.

    OpenGVLab's code has it as a method (``model.pixel_shuffle(x, scale_factor)``); labkit's as a
    function of the same module as the model class (``pixel_shuffle(x, scale_factor, ps_version)``).
    """
    method = getattr(model, "pixel_shuffle", None)
    if callable(method):
        return functools.partial(method, scale_factor=model.downsample_ratio)
    function = getattr(sys.modules[type(model).__module__], "pixel_shuffle", None)
    if function is None:
        raise AttributeError(f"{type(model).__module__} has no pixel_shuffle (method or function): "
                             "is this an InternVL2 model?")
    return functools.partial(function, scale_factor=model.downsample_ratio, ps_version=model.ps_version)


def _splice_function(model):
    """The model's own method that puts image tokens in place of <IMG_CONTEXT>, if it has one."""
    for name in SPLICE_METHODS:
        if callable(getattr(model, name, None)):
            return getattr(model, name)
    return None


# labkit's code, the OpenGVLab-like test folder; OpenGVLab's own code splices inside forward/generate
SPLICE_METHODS = ("splice_image_tokens", "_splice")


def key_sources(model):
    """The source of the three key steps in the model's own (loaded) code, by step name.

    ``pixel_shuffle``, ``extract_feature`` and the splice of the image tokens into the prompt's
    embeddings (a method of its own in labkit's code; in OpenGVLab's, part of ``generate``).
    """
    module = sys.modules[type(model).__module__]
    shuffle = getattr(model, "pixel_shuffle", None) or getattr(module, "pixel_shuffle")
    splice = _splice_function(model) or model.generate
    return {
        "pixel_shuffle": inspect.getsource(shuffle),
        "extract_feature": inspect.getsource(model.extract_feature),
        "splice": inspect.getsource(splice),
    }


def image_path(model, pixels):
    """The image path of ``extract_feature``, one step at a time, with the model's own modules.

    Returns the tensors after each step: ``embeddings`` (patch tokens + class token, the
    vision tower's first hidden state), ``vit`` (the hidden state ``extract_feature`` uses, per
    ``select_layer``), ``grid`` (class token dropped, as a square grid), ``shuffled`` (the model's
    pixel shuffle) and ``image_tokens`` (``mlp1``'s output). Works on the meta device too.
    """
    out = model.vision_model(pixel_values=pixels, output_hidden_states=True, return_dict=True)
    vit = out.last_hidden_state if model.select_layer == -1 else out.hidden_states[model.select_layer]
    patches = vit[:, 1:, :]
    side = int(patches.shape[1] ** 0.5)
    grid = patches.reshape(patches.shape[0], side, side, -1)
    shuffled = folder_pixel_shuffle(model)(grid)
    image_tokens = model.mlp1(shuffled.reshape(shuffled.shape[0], -1, shuffled.shape[-1]))
    return {"embeddings": out.hidden_states[0], "vit": vit, "grid": grid, "shuffled": shuffled,
            "image_tokens": image_tokens}


@torch.no_grad()
def trace_image(model, tokenizer, image, question="图中的菜是什么？"):
    """Run one image through every stage of the model; return the list of :class:`Stage`.

    Every step is the model's own code (its vision tower, pixel shuffle, ``mlp1``, splice and
    language model); the image tokens must equal the model's own ``extract_feature``.
    """
    tiling = tiling_from_config(model.config)
    pixels = tiling.load(image).to(model.dtype)
    vit = model.vision_model
    steps = image_path(model, pixels)
    if not torch.allclose(steps["image_tokens"], model.extract_feature(pixels), atol=1e-4, rtol=1e-3):
        raise AssertionError("the traced image tokens differ from the model's own extract_feature()")
    grid, side = steps["grid"], steps["grid"].shape[1]
    stages = [
        Stage("1. tiles (pixels)", tuple(pixels.shape), f"{pixels.shape[0]} tiles of {tiling.tile_size}px"),
        Stage("2. patch tokens + class token", tuple(steps["embeddings"].shape),
              f"({tiling.tile_size}/{tiling.patch_size})^2 patches + 1 class token"),
        Stage("3. after the InternViT encoder", tuple(steps["vit"].shape),
              f"{len(vit.encoder.layers)} pre-norm blocks, shape unchanged"),
        Stage("4. drop class token, as a grid", tuple(grid.shape), f"{side}x{side} grid per tile"),
        Stage("5. pixel shuffle", tuple(steps["shuffled"].shape), "each 2x2 block -> one token, 4x channels"),
        Stage("6. mlp1 projector", tuple(steps["image_tokens"].shape),
              "LayerNorm, Linear, GELU, Linear -> LLM width; == extract_feature()"),
    ]
    query = render_prompt(model.template, model.system_message, "<image>\n" + question, [],
                          model.num_image_token * pixels.shape[0], FolderTemplates.of_model(model))
    ids = tokenizer(query, return_tensors="pt")["input_ids"]
    context_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    n_image = int((ids == context_id).sum())
    stages.append(Stage("7. prompt token ids", tuple(ids.shape),
                        f"{n_image} <IMG_CONTEXT> placeholders = {pixels.shape[0]} tiles x {model.num_image_token}"))
    embeds = model.language_model.get_input_embeddings()(ids)
    splice = _splice_function(model)
    if splice is not None:
        model.img_context_token_id = context_id  # as chat() sets it
        spliced = splice(ids, embeds.clone(), steps["image_tokens"])
    else:  # OpenGVLab's code does this inside generate(): the same masked replacement
        placeholders = (ids == context_id)[..., None]
        spliced = embeds.masked_scatter(placeholders, steps["image_tokens"].reshape(-1, embeds.shape[-1]).to(embeds.dtype))
    stages.append(Stage("8. LLM input embeddings (spliced)", tuple(spliced.shape),
                        f"{100 * n_image / ids.shape[1]:.0f}% of the positions are image tokens"))
    logits = model.language_model(inputs_embeds=spliced, use_cache=False).logits
    stages.append(Stage("9. LLM logits", tuple(logits.shape), "one score per vocabulary entry per position"))
    return stages


@torch.no_grad()
def image_path_shapes(model, tiles):
    """The shapes along the image path for ``tiles`` tiles, from the model's own code on zeros.

    On a model built on the meta device (:func:`full_size_model`) this costs no memory: the
    code runs, only the shapes are computed.
    """
    size = model.config.force_image_size or model.config.vision_config.image_size
    param = next(model.parameters())
    pixels = torch.zeros(tiles, 3, size, size, device=param.device, dtype=param.dtype)
    shapes = {name: tuple(t.shape) for name, t in image_path(model, pixels).items()}
    return {"pixels": tuple(pixels.shape), **shapes}


def parameter_table(model):
    """Parameter counts per component, as rows (component, parameters, share)."""
    llm = model.language_model
    parts = {
        "vision: patch + position embeddings": model.vision_model.embeddings,
        "vision: encoder blocks": model.vision_model.encoder,
        "projector: mlp1": model.mlp1,
        "LLM: token embeddings": llm.model.tok_embeddings,
        "LLM: decoder blocks": llm.model.layers,
        "LLM: final norm": llm.model.norm,
        "LLM: output head": llm.output,
    }
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
    total = sum(p.numel() for p in model.parameters())
    if sum(counts.values()) != total:
        raise AssertionError("the components do not add up to the model: a part is missing from the table")
    rows = [(name, n, n / total) for name, n in counts.items()]
    rows.append(("total", total, 1.0))
    return rows


def format_table(rows):
    return "\n".join(f"{name:<38} {n:>14,} {share:>7.1%}" for name, n, share in rows)


def full_size_model(config_path=INTERNVL2_2B_CONFIG):
    """InternVL2-2B's real architecture on the meta device: shapes and counts, no memory."""
    config = fileio.read_config(config_path)
    return build_model(config, device="meta")


def image_tokens_by_max_tiles(config, width, height, max_tiles=(1, 2, 4, 6, 8, 12)):
    """How many LLM positions one width x height picture costs as max_dynamic_patch grows."""
    base = tiling_from_config(config)
    rows = []
    for max_num in max_tiles:
        tiling = type(base)(base.tile_size, base.min_num, max_num, base.use_thumbnail, base.patch_size,
                            base.downsample_ratio)
        tiles = tiling.count_tiles(width, height)
        rows.append((max_num, tiling.choose_grid(width, height), tiles, tiles * tiling.tokens_per_tile))
    return rows


def show_tiles(image, tiles, path):
    """The picture beside the tiles dynamic tiling cut from it (the last one is the thumbnail)."""
    from matplotlib.figure import Figure

    from labkit.eval.figures import save_and_show

    n = len(tiles)
    fig = Figure(figsize=(2.2 * (n + 2), 2.6), dpi=100)
    axes = fig.subplots(1, n + 1, gridspec_kw={"width_ratios": [2] + [1] * n})
    axes[0].imshow(image)
    axes[0].set_title(f"picture {image.size[0]}x{image.size[1]}")
    for i, (ax, tile) in enumerate(zip(axes[1:], tiles)):
        ax.imshow(tile)
        thumb = n > 1 and i == n - 1
        ax.set_title("thumbnail" if thumb else f"tile {i + 1}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return save_and_show(fig, path)


#: The four boxes of the data-flow figure, and which traced tensor each arrow carries into a box.
FLOW_BOXES = (("视觉编码器\nvision encoder (ViT)", "pixels", "图块 tiles"),
              ("像素重排\npixel shuffle", "grid", "patch 网格"),
              ("多层感知机投影\nMLP projector mlp1", "shuffled", "折叠后 folded"),
              ("语言模型\nLLM (InternLM2)", "image_tokens", "图像 token"))


def draw_data_flow(flows, path):
    """ViT -> pixel shuffle -> mlp1 -> LLM as boxes, one row per model, the traced shapes on the arrows.

    ``flows``: ``{row label: shapes}`` with the shapes of :func:`image_path_shapes`.
    """
    from matplotlib.figure import Figure

    from labkit.eval.figures import _cjk_font, save_and_show

    font = _cjk_font()
    text = {"fontfamily": font} if font else {}
    rows = list(flows.items())
    fig = Figure(figsize=(13, 1.9 * len(rows) + 0.4), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 13)
    ax.set_ylim(0, 1.9 * len(rows) + 0.4)
    ax.axis("off")
    for r, (label, shapes) in enumerate(rows):
        y = 1.9 * (len(rows) - r) - 0.9
        ax.text(0.1, y + 0.75, label, fontsize=12, fontweight="bold", **text)
        for b, (name, incoming, caption) in enumerate(FLOW_BOXES):
            x = 1.9 + 3.0 * b
            ax.add_patch(_box(x, y - 0.35, 1.9, 0.7))
            ax.text(x + 0.95, y, name if font else name.split("\n")[1], ha="center", va="center", fontsize=9, **text)
            start = 0.15 if b == 0 else x - 1.1
            ax.annotate("", xy=(x, y), xytext=(start, y), arrowprops={"arrowstyle": "->", "lw": 1.4})
            ax.text((start + x) / 2, y + 0.12, str(shapes[incoming]).replace(" ", ""), ha="center", fontsize=8)
            if font:
                ax.text((start + x) / 2, y - 0.28, caption, ha="center", fontsize=8, color="#555555", **text)
    return save_and_show(fig, path)


def _box(x, y, width, height):
    from matplotlib.patches import FancyBboxPatch

    return FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0.05", facecolor="#e8f0fb", edgecolor="#3a6ea5")
