"""Dynamic high-resolution tiling: how InternVL2 turns one picture into several tiles.

The vision tower only ever sees square tiles of ``tile_size`` pixels (448 for InternVL2-2B,
64 for the tiny course model). A wide photo squeezed into one square would lose its shape and
its detail, so InternVL 1.5 introduced *dynamic tiling*:

1. List every grid of ``cols x rows`` tiles whose tile count lies in ``[min_num, max_num]``,
   ordered by tile count (:func:`candidate_grids`).
2. Pick the grid whose shape ``cols / rows`` is closest to the image's ``width / height``. When
   two grids are equally close, the later (larger) one wins only if the image has enough pixels
   to fill more than half of it (:func:`choose_grid`).
3. Resize the image (bicubic) to ``(tile_size * cols, tile_size * rows)`` and cut it into tiles,
   left to right, top to bottom (:func:`split_into_tiles`).
4. With ``use_thumbnail`` and more than one tile, append the whole image squeezed into one tile,
   so the model also gets the overall picture.

Every tile then becomes a normalised tensor (:func:`image_transform`) and costs
``num_image_token`` language-model positions (:func:`count_image_tokens`): 16 per tile for the
tiny model, 256 for InternVL2-2B.

The same recipe lives in XTuner's training dataset and in LMDeploy's preprocessor; labkit's
version gives the same grid and the same pixels for every image size (tests/test_tiling.py
checks it against XTuner).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Union

from PIL import Image, UnidentifiedImageError

# ImageNet statistics, the normalisation InternViT was trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Refuse images above this many pixels unless the caller raises the limit. 40 megapixels is
# larger than nearly every photo a student will use, yet small enough that a hostile file (a
# "decompression bomb": a tiny file that unpacks into gigabytes) is rejected before decoding.
DEFAULT_MAX_PIXELS = 40_000_000

ImageSource = Union[str, os.PathLike, bytes, bytearray, Image.Image]


# ---------------------------------------------------------------------------------------------
# 1-2. Choosing the grid
# ---------------------------------------------------------------------------------------------


def _check_tile_range(min_num: int, max_num: int) -> None:
    """Reject tile-count limits that allow no grid at all."""
    if not (isinstance(min_num, int) and isinstance(max_num, int)):
        raise ValueError(f"min_num and max_num must be integers, got {min_num!r} and {max_num!r}.")
    if min_num < 1 or max_num < min_num:
        raise ValueError(
            f"Tile limits min_num={min_num}, max_num={max_num} are impossible: "
            "use 1 <= min_num <= max_num (InternVL2 uses min 1, max 12)."
        )


def _check_tile_size(tile_size: int) -> None:
    if not isinstance(tile_size, int) or tile_size < 1:
        raise ValueError(f"tile_size must be a positive integer (pixels), got {tile_size!r}.")


def candidate_grids(min_num: int = 1, max_num: int = 12) -> list[tuple[int, int]]:
    """All ``(cols, rows)`` grids with ``min_num <= cols * rows <= max_num``, fewest tiles first.

    Grids with the same number of tiles (say 1x6, 2x3, 3x2 and 6x1) come in the order in which
    a Python ``set`` of these tuples hands them out, because that is how the reference recipe
    (InternVL, XTuner, LMDeploy) collects them before its stable sort by tile count. The order
    is arbitrary but fixed: tuples of small integers hash the same in every run. It decides the
    outcome only in one corner: two grids with the same tile count that are equally close to
    the image's shape, with no smaller grid closer. That never happens when ``min_num == 1``
    (the 1x1 grid is always closer), but it does for, say, ``min_num = max_num = 2`` and a
    5:4 image. Keeping the same order keeps labkit's tiles identical to XTuner's there too.

    >>> candidate_grids(1, 3)
    [(1, 1), (1, 2), (2, 1), (3, 1), (1, 3)]
    """
    _check_tile_range(min_num, max_num)
    grids = set()
    for tiles in range(min_num, max_num + 1):
        for cols in range(1, tiles + 1):
            for rows in range(1, tiles + 1):
                if min_num <= cols * rows <= max_num:
                    grids.add((cols, rows))
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


def choose_grid(
    width: int,
    height: int,
    min_num: int = 1,
    max_num: int = 12,
    tile_size: int = 448,
) -> tuple[int, int]:
    """The ``(cols, rows)`` grid that InternVL2 uses for a ``width x height`` image.

    The grid whose shape ``cols / rows`` is nearest to ``width / height`` wins. On an exact tie
    the grid seen later (more tiles) replaces the earlier one only when the image's own pixel
    count exceeds half of the grid's ``tile_size**2 * cols * rows``: a small image is not blown
    up to fill many tiles. The arithmetic is plain floating point, exactly as in the reference,
    so near-ties are decided the same way.

    >>> choose_grid(800, 600, 1, 12, 448)    # 4:3 photo -> 4 columns, 3 rows
    (4, 3)
    >>> choose_grid(100, 100, 1, 12, 448)    # small square -> one tile
    (1, 1)
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"Image size {width}x{height} is empty: width and height must be >= 1.")
    _check_tile_size(tile_size)
    aspect = width / height
    area = width * height
    best_grid, best_diff = (1, 1), math.inf
    for cols, rows in candidate_grids(min_num, max_num):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best_grid, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * cols * rows:
            best_grid = (cols, rows)
    return best_grid


def count_tiles(
    width: int,
    height: int,
    min_num: int = 1,
    max_num: int = 12,
    tile_size: int = 448,
    use_thumbnail: bool = True,
) -> int:
    """How many tiles :func:`split_into_tiles` makes for a ``width x height`` image."""
    cols, rows = choose_grid(width, height, min_num, max_num, tile_size)
    tiles = cols * rows
    return tiles + 1 if use_thumbnail and tiles > 1 else tiles


def tokens_per_tile(tile_size: int = 448, patch_size: int = 14, downsample_ratio: float = 0.5) -> int:
    """Image tokens one tile costs: ``(tile_size / patch_size)**2 * downsample_ratio**2``.

    InternVL2-2B: (448 / 14)**2 * 0.25 = 1024 * 0.25 = 256. Tiny model: (64 / 8)**2 * 0.25 = 16.
    Pixel shuffle folds each 2x2 block of patch features into one token, hence the ratio squared.
    """
    _check_tile_size(tile_size)
    return int((tile_size // patch_size) ** 2 * downsample_ratio**2)


def count_image_tokens(
    width: int,
    height: int,
    min_num: int = 1,
    max_num: int = 12,
    tile_size: int = 448,
    use_thumbnail: bool = True,
    patch_size: int = 14,
    downsample_ratio: float = 0.5,
) -> int:
    """How many ``<IMG_CONTEXT>`` tokens a ``width x height`` image occupies in the prompt.

    >>> count_image_tokens(800, 600)    # 4x3 grid + thumbnail = 13 tiles x 256
    3328
    """
    tiles = count_tiles(width, height, min_num, max_num, tile_size, use_thumbnail)
    return tiles * tokens_per_tile(tile_size, patch_size, downsample_ratio)


# ---------------------------------------------------------------------------------------------
# 3-4. Cutting the tiles
# ---------------------------------------------------------------------------------------------


def split_into_tiles(
    image: Image.Image,
    tile_size: int = 448,
    min_num: int = 1,
    max_num: int = 12,
    use_thumbnail: bool = True,
) -> list[Image.Image]:
    """Cut ``image`` into square ``tile_size`` tiles, row by row, plus an optional thumbnail."""
    cols, rows = choose_grid(image.width, image.height, min_num, max_num, tile_size)
    resized = image.resize((tile_size * cols, tile_size * rows), Image.Resampling.BICUBIC)
    tiles = []
    for row in range(rows):
        for col in range(cols):
            left, top = col * tile_size, row * tile_size
            tiles.append(resized.crop((left, top, left + tile_size, top + tile_size)))
    if use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize((tile_size, tile_size), Image.Resampling.BICUBIC))
    return tiles


def image_transform(tile_size: int = 448):
    """The per-tile transform: RGB, bicubic resize to ``tile_size``, tensor, ImageNet normalise.

    Returns a callable ``PIL.Image -> torch.Tensor`` of shape ``(3, tile_size, tile_size)``.
    """
    import torchvision.transforms as T  # imported here so `import labkit.tiling` stays light

    _check_tile_size(tile_size)
    return T.Compose(
        [
            T.Lambda(lambda img: img if img.mode == "RGB" else img.convert("RGB")),
            T.Resize((tile_size, tile_size), interpolation=T.InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Opening images safely
# ---------------------------------------------------------------------------------------------


def _describe(source: ImageSource) -> str:
    """A short name for an image source, for error messages."""
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes of image data>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.width}x{source.height}>"
    return str(source)


def _check_pixels(width: int, height: int, name: str, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(
            f"Image {name} is {width}x{height} = {width * height:,} pixels, above the limit of "
            f"{max_pixels:,}. Shrink it first, or pass a larger max_pixels if you trust the file."
        )


def open_image(source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open a path, raw bytes or a PIL image as a fully decoded RGB image.

    Every failure becomes a ``ValueError`` that names the file: missing, empty, not an image,
    truncated or corrupt, or larger than ``max_pixels`` (checked from the header, before the
    pixels are decoded). ``max_pixels=None`` lifts labkit's limit; Pillow's own hard limit
    (``PIL.Image.MAX_IMAGE_PIXELS * 2``) still applies.
    """
    name = _describe(source)
    if isinstance(source, Image.Image):
        _check_pixels(source.width, source.height, name, max_pixels)
        try:
            source.load()  # an Image.open()ed picture decodes only now
        except (OSError, SyntaxError) as err:
            raise ValueError(f"Image {name} is corrupt or truncated ({err}): replace the file.") from err
        return source if source.mode == "RGB" else source.convert("RGB")

    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ValueError("The image data is empty (0 bytes): pass the bytes of a JPEG or PNG.")
        stream: Any = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ValueError(f"Image file {path} does not exist: check the path and the data folder.")
        if not path.is_file():
            raise ValueError(f"Image path {path} is not a file (is it a folder?).")
        if path.stat().st_size == 0:
            raise ValueError(f"Image file {path} is empty (0 bytes): re-copy or re-download it.")
        stream = path
    else:
        raise ValueError(
            f"Cannot read an image from {type(source).__name__}: pass a file path, bytes, or a PIL image."
        )

    try:
        with warnings.catch_warnings():
            # labkit applies its own limit below; Pillow's milder warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream) as image:
                _check_pixels(image.width, image.height, name, max_pixels)
                image.load()
                return image.convert("RGB")
    except Image.DecompressionBombError as err:
        raise ValueError(f"Image {name} is too large for Pillow to decode safely: {err}") from err
    except UnidentifiedImageError as err:
        raise ValueError(
            f"{name} is not an image Pillow can read (expected JPEG, PNG, WebP, ...): "
            "check that the file is really a picture."
        ) from err
    except (OSError, SyntaxError) as err:  # truncated data, broken chunks, bad headers
        raise ValueError(f"Image {name} is corrupt or truncated ({err}): replace the file.") from err


def load_image(
    source: ImageSource,
    tile_size: int = 448,
    min_num: int = 1,
    max_num: int = 12,
    use_thumbnail: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
):
    """Open an image and return its tiles as one tensor ``(tiles, 3, tile_size, tile_size)``.

    This is the ``pixel_values`` that ``InternVLChatModel.chat`` expects (cast it to the model's
    dtype). ``tiles`` is :func:`count_tiles` of the image size.
    """
    import torch

    image = open_image(source, max_pixels=max_pixels)
    transform = image_transform(tile_size)
    tiles = split_into_tiles(image, tile_size, min_num, max_num, use_thumbnail)
    return torch.stack([transform(tile) for tile in tiles])


# ---------------------------------------------------------------------------------------------
# Reading the settings from a model config
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tiling:
    """The tiling settings of one model, read from its config by :func:`tiling_from_config`."""

    tile_size: int = 448
    min_num: int = 1
    max_num: int = 12
    use_thumbnail: bool = True
    patch_size: int = 14
    downsample_ratio: float = 0.5

    @property
    def tokens_per_tile(self) -> int:
        return tokens_per_tile(self.tile_size, self.patch_size, self.downsample_ratio)

    def choose_grid(self, width: int, height: int) -> tuple[int, int]:
        return choose_grid(width, height, self.min_num, self.max_num, self.tile_size)

    def count_tiles(self, width: int, height: int) -> int:
        return count_tiles(width, height, self.min_num, self.max_num, self.tile_size, self.use_thumbnail)

    def count_image_tokens(self, width: int, height: int) -> int:
        return self.count_tiles(width, height) * self.tokens_per_tile

    def split(self, image: Image.Image) -> list[Image.Image]:
        return split_into_tiles(image, self.tile_size, self.min_num, self.max_num, self.use_thumbnail)

    def load(self, source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        return load_image(
            source, self.tile_size, self.min_num, self.max_num, self.use_thumbnail, max_pixels
        )


def _get(config: Any, key: str) -> Any:
    """Read ``key`` from a dict or from a transformers config object (None if absent)."""
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None)


def tiling_from_config(config: Any) -> Tiling:
    """Build a :class:`Tiling` from an InternVL config (a dict, ``config.json`` path, or object).

    Reads ``force_image_size`` (falling back to ``vision_config.image_size``),
    ``min_dynamic_patch``, ``max_dynamic_patch``, ``use_thumbnail``, ``downsample_ratio`` and
    ``vision_config.patch_size``. With ``dynamic_image_size: false`` the image is one tile.
    """
    if isinstance(config, (str, os.PathLike)):
        from labkit.fileio import read_config

        config = read_config(config)

    vision = _get(config, "vision_config") or {}
    tile_size = _get(config, "force_image_size") or _get(vision, "image_size")
    patch_size = _get(vision, "patch_size")
    if tile_size is None or patch_size is None:
        raise ValueError(
            "The model config lacks force_image_size (or vision_config.image_size) or "
            "vision_config.patch_size: is this an InternVL2 config.json?"
        )
    dynamic = _get(config, "dynamic_image_size")
    min_num = _get(config, "min_dynamic_patch")
    max_num = _get(config, "max_dynamic_patch")
    thumbnail = _get(config, "use_thumbnail")
    ratio = _get(config, "downsample_ratio")
    if dynamic is False:
        min_num = max_num = 1
    return Tiling(
        tile_size=int(tile_size),
        min_num=int(1 if min_num is None else min_num),
        max_num=int(12 if max_num is None else max_num),
        use_thumbnail=bool(True if thumbnail is None else thumbnail),
        patch_size=int(patch_size),
        downsample_ratio=float(0.5 if ratio is None else ratio),
    )
