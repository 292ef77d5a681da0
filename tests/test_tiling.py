"""labkit.tiling against XTuner's own dynamic_preprocess, an independent implementation.

XTuner trains the model on the tiles its dataset cuts; labkit cuts the tiles the course shows
and feeds at inference. Both must agree grid for grid and pixel for pixel, or the fine-tuned
model sees differently shaped inputs at chat time.
"""

from __future__ import annotations

import io
import math
import types
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from labkit import tiling
xtuner_dataset = pytest.importorskip(
    "xtuner.dataset.internvl_dataset", reason="XTuner is the reference implementation"
)

TINY = dict(tile_size=64, min_num=1, max_num=6, use_thumbnail=True)


# --- helpers ---------------------------------------------------------------------------------

_BASE = Image.merge(
    "RGB",
    (
        Image.linear_gradient("L"),
        Image.linear_gradient("L").rotate(90),
        Image.radial_gradient("L"),
    ),
)


def picture(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A cheap image with no symmetry, so a wrong grid or tile order changes the pixels."""
    base = _BASE if mode == "RGB" else _BASE.convert(mode)
    return base.resize((width, height), Image.Resampling.BILINEAR)


def same_tiles(ours: list[Image.Image], theirs: list[Image.Image]) -> bool:
    return len(ours) == len(theirs) and all(
        a.size == b.size and a.tobytes() == b.tobytes() for a, b in zip(ours, theirs)
    )


def assert_matches_xtuner(width, height, tile_size, min_num, max_num, use_thumbnail=True, mode="RGB"):
    image = picture(width, height, mode)
    theirs = xtuner_dataset.dynamic_preprocess(image, min_num, max_num, tile_size, use_thumbnail)
    ours = tiling.split_into_tiles(image, tile_size, min_num, max_num, use_thumbnail)
    assert same_tiles(ours, theirs), (
        f"{width}x{height}, tile {tile_size}, tiles {min_num}..{max_num}: labkit chose "
        f"{tiling.choose_grid(width, height, min_num, max_num, tile_size)} "
        f"({len(ours)} tiles), XTuner made {len(theirs)} tiles"
    )
    assert len(ours) == tiling.count_tiles(width, height, min_num, max_num, tile_size, use_thumbnail)


def exact_tie_sizes(min_num: int, max_num: int, tile_size: int, limit: int = 2500):
    """Image sizes whose aspect ratio lies exactly as close to two or more grids.

    Computed with exact fractions (independently of labkit's float arithmetic), on both sides of
    the area threshold that decides such ties, so the tie-break rule is exercised both ways.
    """
    grids = [(c, r) for c in range(1, max_num + 1) for r in range(1, max_num + 1)
             if min_num <= c * r <= max_num]
    ratios = sorted({Fraction(c, r) for c, r in grids})
    aspects = {(a + b) / 2 for a, b in zip(ratios, ratios[1:])}
    aspects |= {Fraction(c, r) for c, r in grids if math.gcd(c, r) > 1}  # 1x1 vs 2x2 vs 3x3 ...
    sizes = set()
    for aspect in aspects:
        best = min(abs(aspect - Fraction(c, r)) for c, r in grids)
        tied = [(c, r) for c, r in grids if abs(aspect - Fraction(c, r)) == best]
        if len(tied) < 2:
            continue
        p, q = aspect.numerator, aspect.denominator
        for c, r in tied:
            threshold = 0.5 * tile_size * tile_size * c * r
            k = int(math.sqrt(threshold / (p * q)))
            for scale in (1, k, k + 1):
                if 1 <= scale and p * scale <= limit and q * scale <= limit:
                    sizes.add((p * scale, q * scale))
    return sorted(sizes)


# --- the grid and the tiles agree with XTuner ------------------------------------------------


@pytest.mark.parametrize("max_num", [6, 12])
@pytest.mark.parametrize("tile_size", [64, 448])
@pytest.mark.parametrize(
    "size",
    [(1, 1), (3, 5), (5, 3), (2, 1), (64, 64), (448, 448), (1000, 1000), (10, 1), (1, 10),
     (1000, 100), (100, 1000), (4480, 448), (640, 480), (1920, 1080), (1080, 1920)],
)
def test_named_sizes_match_xtuner(size, tile_size, max_num):
    assert_matches_xtuner(*size, tile_size, 1, max_num)


def test_huge_photo_matches_xtuner():
    # 4000x3000 is a 12-megapixel phone photo; made by resizing a 256x256 gradient (cheap).
    assert_matches_xtuner(4000, 3000, 448, 1, 12)
    assert tiling.choose_grid(4000, 3000, 1, 12, 448) == (4, 3)


@pytest.mark.parametrize("max_num", [6, 12])
def test_dense_sweep_matches_xtuner(max_num):
    # every width and height up to 40 px, all against the tiny 64-px tile: many small ratios
    for width in range(1, 41):
        for height in range(1, 41):
            assert_matches_xtuner(width, height, 64, 1, max_num)


@pytest.mark.parametrize("max_num", [6, 12])
@pytest.mark.parametrize("tile_size", [64, 448])
def test_exact_ties_match_xtuner(tile_size, max_num):
    sizes = exact_tie_sizes(1, max_num, tile_size)
    assert len(sizes) > 20
    for width, height in sizes:
        # greyscale: a third of the resizing work, and a wrong grid still changes the pixels
        assert_matches_xtuner(width, height, tile_size, 1, max_num, mode="L")


def test_tie_break_depends_on_image_area():
    # A square image ties between 1x1, 2x2, 3x3: the bigger grid wins only for a big image.
    # 64-px tiles: 2x2 needs area > 0.5 * 64 * 64 * 4 = 8192, i.e. a side of 91 px.
    assert tiling.choose_grid(90, 90, 1, 6, 64) == (1, 1)
    assert tiling.choose_grid(91, 91, 1, 6, 64) == (2, 2)
    assert tiling.choose_grid(91, 91, 1, 12, 64) == (2, 2)
    assert tiling.choose_grid(136, 136, 1, 12, 64) == (3, 3)


@pytest.mark.parametrize(
    "size, tile_size, expected",
    [((128, 144), 64, (2, 2)), ((144, 128), 64, (2, 2)), ((2048, 588), 448, (3, 1))],
)
def test_area_exactly_at_the_threshold_keeps_the_smaller_grid(size, tile_size, expected):
    # 128 x 144 = 18432 = 0.5 * 64 * 64 * 9: exactly half of a 3x3 grid, which is "not more
    # than half", so 2x2 (same ratio as 3x3) stays. 2048 x 588 = 0.5 * 448**2 * 12 vs 3x1 / 6x2.
    assert tiling.choose_grid(*size, 1, 12, tile_size) == expected
    assert_matches_xtuner(*size, tile_size, 1, 12, mode="L")


@pytest.mark.parametrize(
    "min_num, max_num, size",
    [(2, 2, (5, 4)), (2, 2, (500, 400)), (2, 3, (5, 4)), (4, 4, (5, 2)), (4, 4, (500, 200)),
     (4, 4, (5, 8)), (4, 4, (500, 800)), (4, 5, (5, 8)), (4, 5, (5, 2)), (4, 5, (500, 200))],
)
def test_equal_area_tie_order_matches_xtuner(min_num, max_num, size):
    # With min_num > 1 two grids of the SAME tile count can tie (1x2 and 2x1 for a 5:4 image):
    # then only the order of equal-area candidates decides. It must be XTuner's order.
    assert_matches_xtuner(*size, 64, min_num, max_num)


def test_candidate_grids_are_complete_and_ordered_by_area():
    grids = tiling.candidate_grids(1, 12)
    expected = {(c, r) for c in range(1, 13) for r in range(1, 13) if c * r <= 12}
    assert set(grids) == expected and len(grids) == len(expected)
    areas = [c * r for c, r in grids]
    assert areas == sorted(areas)
    assert tiling.candidate_grids(3, 4) == sorted(tiling.candidate_grids(3, 4), key=lambda g: g[0] * g[1])
    assert all(3 <= c * r <= 4 for c, r in tiling.candidate_grids(3, 4))


def test_thumbnail_only_with_several_tiles():
    one = tiling.split_into_tiles(picture(64, 64), 64, 1, 6, use_thumbnail=True)
    many = tiling.split_into_tiles(picture(128, 64), 64, 1, 6, use_thumbnail=True)
    assert len(one) == 1
    assert len(many) == 3  # 2x1 grid + thumbnail
    assert many[-1].tobytes() == picture(128, 64).resize((64, 64), Image.Resampling.BICUBIC).tobytes()


@pytest.mark.parametrize("min_num, max_num", [(0, 6), (3, 2), (1, 0)])
def test_impossible_tile_limits_are_refused(min_num, max_num):
    with pytest.raises(ValueError, match="min_num"):
        tiling.choose_grid(10, 10, min_num, max_num, 64)


def test_empty_size_is_refused():
    with pytest.raises(ValueError, match="0x5"):
        tiling.choose_grid(0, 5)


# --- tensors ---------------------------------------------------------------------------------


def test_load_image_tensor_matches_manual_normalisation(tmp_path):
    path = tmp_path / "photo.png"
    picture(200, 100).save(path)
    pixels = tiling.load_image(path, **TINY)
    theirs = xtuner_dataset.dynamic_preprocess(picture(200, 100), 1, 6, 64, True)
    assert pixels.shape == (len(theirs), 3, 64, 64) and pixels.dtype == torch.float32
    mean, std = np.array(tiling.IMAGENET_MEAN), np.array(tiling.IMAGENET_STD)
    for tensor, tile in zip(pixels, theirs):
        manual = (np.asarray(tile, dtype=np.float64) / 255.0 - mean) / std  # (H, W, 3)
        np.testing.assert_allclose(tensor.permute(1, 2, 0).numpy(), manual, atol=1e-5)


def test_load_image_accepts_bytes_pil_and_other_modes(tmp_path):
    buffer = io.BytesIO()
    picture(90, 60).save(buffer, format="JPEG")
    from_bytes = tiling.load_image(buffer.getvalue(), **TINY)
    from_pil = tiling.load_image(Image.open(io.BytesIO(buffer.getvalue())), **TINY)
    assert torch.equal(from_bytes, from_pil)
    grey = tiling.load_image(picture(90, 60).convert("L"), **TINY)  # greyscale -> RGB
    palette = tiling.load_image(picture(90, 60).convert("P"), **TINY)
    assert grey.shape == palette.shape == from_bytes.shape
    # a grey image becomes RGB with three equal channels (equal once the normalisation is undone)
    mean = torch.tensor(tiling.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(tiling.IMAGENET_STD).view(1, 3, 1, 1)
    raw = grey * std + mean
    torch.testing.assert_close(raw[:, 0], raw[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(raw[:, 0], raw[:, 2], atol=1e-5, rtol=0)


def test_image_tokens_follow_the_config():
    tiny = tiling.tiling_from_config(
        {"force_image_size": 64, "min_dynamic_patch": 1, "max_dynamic_patch": 6,
         "use_thumbnail": True, "downsample_ratio": 0.5, "dynamic_image_size": True,
         "vision_config": {"patch_size": 8, "image_size": 64}}
    )
    assert tiny == tiling.Tiling(64, 1, 6, True, 8, 0.5)
    assert tiny.tokens_per_tile == 16
    assert tiny.count_image_tokens(128, 64) == 3 * 16  # 2x1 grid + thumbnail
    assert tiny.load(picture(128, 64)).shape == (3, 3, 64, 64)

    # InternVL2-2B as a transformers-style object with attributes, not a dict
    big = tiling.tiling_from_config(types.SimpleNamespace(
        force_image_size=448, min_dynamic_patch=1, max_dynamic_patch=12, use_thumbnail=True,
        downsample_ratio=0.5, dynamic_image_size=True,
        vision_config=types.SimpleNamespace(patch_size=14, image_size=448)))
    assert big.tokens_per_tile == 256
    assert tiling.count_image_tokens(800, 600) == big.count_image_tokens(800, 600) == 13 * 256

    single = tiling.tiling_from_config(
        {"force_image_size": 448, "dynamic_image_size": False, "max_dynamic_patch": 12,
         "vision_config": {"patch_size": 14}}
    )
    assert single.count_tiles(4000, 3000) == 1


def test_tiling_from_config_reads_config_json(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"force_image_size": 64, "max_dynamic_patch": 6, "vision_config": {"patch_size": 8}}'
    )
    assert tiling.tiling_from_config(tmp_path).max_num == 6
    with pytest.raises(ValueError, match="patch_size"):
        tiling.tiling_from_config({"force_image_size": 64})


# --- bad input -------------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere" / "dish.jpg"
    with pytest.raises(ValueError, match="does not exist") as err:
        tiling.load_image(path, **TINY)
    assert str(path) in str(err.value)


def test_zero_byte_file_is_named(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty") as err:
        tiling.load_image(path, **TINY)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match="empty"):
        tiling.load_image(b"", **TINY)


def test_non_image_is_named(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("肠粉 is a steamed rice noodle roll, not a picture.", encoding="utf-8")
    with pytest.raises(ValueError, match="not an image") as err:
        tiling.load_image(path, **TINY)
    assert str(path) in str(err.value)


def test_truncated_jpeg_is_named(tmp_path):
    buffer = io.BytesIO()
    picture(300, 200).save(buffer, format="JPEG", quality=95)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated") as err:
        tiling.load_image(path, **TINY)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        tiling.load_image(Image.open(path), **TINY)  # opened lazily by the caller


def test_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a file"):
        tiling.load_image(tmp_path, **TINY)


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    # 7000 x 6000 = 42 million pixels of 1-bit black: a file of a few kilobytes.
    Image.new("1", (7000, 6000)).save(path, optimize=True)
    assert path.stat().st_size < 200_000
    with pytest.raises(ValueError, match="above the limit") as err:
        tiling.open_image(path)
    assert str(path) in str(err.value) and "42,000,000" in str(err.value)


def test_pixel_limit_is_configurable(tmp_path):
    path = tmp_path / "small.png"
    picture(100, 100).save(path)
    with pytest.raises(ValueError, match="above the limit of 5,000"):
        tiling.load_image(path, max_pixels=5_000, **TINY)
    with pytest.raises(ValueError, match="above the limit"):
        tiling.load_image(picture(100, 100), max_pixels=5_000, **TINY)
    assert tiling.load_image(path, max_pixels=None, **TINY).shape == (5, 3, 64, 64)  # 2x2 + thumbnail


def test_unsupported_source_type():
    with pytest.raises(ValueError, match="ndarray"):
        tiling.load_image(np.zeros((4, 4, 3), dtype=np.uint8), **TINY)
