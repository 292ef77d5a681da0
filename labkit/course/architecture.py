"""The architecture lesson: follow one picture through ViT -> pixel shuffle -> MLP -> LLM.

Notebook 01 calls these functions on the real model code, so every shape printed is the shape
the model really computes, for the tiny course model and for InternVL2-2B alike. They use only
the model's public parts (``vision_model``, ``mlp1``, ``language_model``, ``template``,
``system_message``, ``num_image_token``), which labkit's code and OpenGVLab's both have; the
prompt comes from the model's own template module, and the image tokens are checked against
the model's own ``extract_feature``.
"""
from dataclasses import dataclass

import torch

from labkit import fileio
from labkit.checkpoints.folder import INTERNVL2_2B_CONFIG, build_model
from labkit.chat.prompt import IMG_CONTEXT, render_prompt
from labkit.model.modeling_internvl_chat import pixel_shuffle
from labkit.checkpoints.remote_code import FolderTemplates
from labkit.tiling import tiling_from_config


@dataclass
class Stage:
    step: str
    shape: tuple
    note: str

    def __str__(self):
        return f"{self.step:<34} {str(self.shape):<22} {self.note}"


@torch.no_grad()
def trace_image(model, tokenizer, image, question="图中的菜是什么？"):
    """Run one image through every stage of the model; return the list of :class:`Stage`."""
    tiling = tiling_from_config(model.config)
    pixels = tiling.load(image).to(model.dtype)
    vit = model.vision_model
    stages = [Stage("1. tiles (pixels)", tuple(pixels.shape), f"{pixels.shape[0]} tiles of {tiling.tile_size}px")]
    tokens = vit.embeddings(pixels)
    stages.append(Stage("2. patch tokens + class token", tuple(tokens.shape),
                        f"({tiling.tile_size}/{tiling.patch_size})^2 patches + 1 class token"))
    encoded = vit.encoder(tokens).last_hidden_state
    stages.append(Stage("3. after the InternViT encoder", tuple(encoded.shape),
                        f"{len(vit.encoder.layers)} pre-norm blocks, shape unchanged"))
    patches = encoded[:, 1:, :]
    side = int(patches.shape[1] ** 0.5)
    grid = patches.reshape(patches.shape[0], side, side, -1)
    stages.append(Stage("4. drop class token, as a grid", tuple(grid.shape), f"{side}x{side} grid per tile"))
    shuffled = pixel_shuffle(grid, model.downsample_ratio, model.ps_version)
    stages.append(Stage("5. pixel shuffle", tuple(shuffled.shape), "each 2x2 block -> one token, 4x channels"))
    flat = shuffled.reshape(shuffled.shape[0], -1, shuffled.shape[-1])
    projected = model.mlp1(flat)
    if not torch.allclose(projected, model.extract_feature(pixels), atol=1e-4, rtol=1e-3):
        raise AssertionError("the traced image tokens differ from the model's own extract_feature()")
    stages.append(Stage("6. mlp1 projector", tuple(projected.shape), "LayerNorm, Linear, GELU, Linear -> LLM width"))
    query = render_prompt(model.template, model.system_message, "<image>\n" + question, [],
                          model.num_image_token * pixels.shape[0], FolderTemplates.of_model(model))
    ids = tokenizer(query, return_tensors="pt")["input_ids"]
    context_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    n_image = int((ids == context_id).sum())
    stages.append(Stage("7. prompt token ids", tuple(ids.shape),
                        f"{n_image} <IMG_CONTEXT> placeholders = {pixels.shape[0]} tiles x {model.num_image_token}"))
    embeds = model.language_model.get_input_embeddings()(ids)
    placeholders = (ids == context_id)[..., None]
    spliced = embeds.masked_scatter(placeholders, projected.reshape(-1, embeds.shape[-1]).to(embeds.dtype))
    stages.append(Stage("8. LLM input embeddings (spliced)", tuple(spliced.shape),
                        f"{100 * n_image / ids.shape[1]:.0f}% of the positions are image tokens"))
    logits = model.language_model(inputs_embeds=spliced, use_cache=False).logits
    stages.append(Stage("9. LLM logits", tuple(logits.shape), "one score per vocabulary entry per position"))
    return stages


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
