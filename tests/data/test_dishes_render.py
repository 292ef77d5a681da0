"""The dish table and the procedural renderer: names, held-back dishes, determinism, sizes."""

import hashlib

import pytest
from PIL import Image

from labkit.data import dishes, paint as render, pieces as piece_painters
from labkit.tiling import count_tiles


def test_table_has_the_course_dishes_and_held_back_ones():
    names = dishes.dish_names()
    assert len(names) >= 12 and len(set(names)) == len(names)
    assert "肠粉" in dishes.held_back_names()
    assert 3 <= len(dishes.held_back_names()) <= 4  # 肠粉 and two or three others
    assert set(dishes.known_names()).isdisjoint(dishes.held_back_names())
    assert set(dishes.known_names()) | set(dishes.held_back_names()) == set(names)
    for dish in dishes.DISHES:
        assert dish.cuisine.endswith("菜") and len(dish.description) >= 10


def test_lookup_by_name_and_key():
    assert dishes.get_dish("肠粉") is dishes.get_dish("cheung_fun")
    assert dishes.is_held_back("肠粉") and not dishes.is_held_back("叉烧")
    with pytest.raises(KeyError, match="known dishes are"):
        dishes.get_dish("披萨")


def test_held_back_dishes_look_unlike_every_known_dish():
    """A held-back dish shares neither its piece shape nor its container with a known dish."""
    known = [d.look for d in dishes.DISHES if not d.held_back]
    for dish in dishes.DISHES:
        if dish.held_back:
            assert all(dish.look.piece != k.piece for k in known), dish.name
            assert all(dish.look.container != k.container for k in known), dish.name
    pieces = [d.look.piece for d in dishes.DISHES]
    assert len(set(pieces)) == len(pieces)  # every dish has its own piece painter
    assert set(pieces) <= set(piece_painters.PIECE_PAINTERS)
    assert {d.look.container for d in dishes.DISHES} <= set(render.CONTAINER_PAINTERS)
    assert {d.look.arrangement for d in dishes.DISHES} <= set(render.ARRANGERS)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_dish_and_seed_give_the_same_jpeg_bytes(tmp_path):
    size = render.render_to_file("肠粉", 7, tmp_path / "a.jpg")
    assert render.render_to_file("肠粉", 7, tmp_path / "b.jpg") == size
    assert _sha(tmp_path / "a.jpg") == _sha(tmp_path / "b.jpg")
    render.render_to_file("肠粉", 8, tmp_path / "c.jpg")
    render.render_to_file("饺子", 7, tmp_path / "d.jpg")
    hashes = {_sha(tmp_path / n) for n in ("a.jpg", "c.jpg", "d.jpg")}
    assert len(hashes) == 3
    with Image.open(tmp_path / "a.jpg") as img:
        assert img.format == "JPEG" and img.size == size


def test_sizes_stay_small_and_cover_one_to_six_tiles():
    tiles = set()
    for seed in range(60):
        image = render.render_dish("烧卖", seed)
        w, h = image.size
        assert 64 <= min(w, h) <= 160 and max(w, h) <= 400
        assert 1 / 3.3 <= w / h <= 3.3
        tiles.add(count_tiles(w, h, 1, 6, 64, use_thumbnail=False))
    assert tiles == {1, 2, 3, 4, 6}


def test_pictures_vary_but_keep_their_size_argument():
    a = render.render_dish("月饼", 1, size=(120, 80))
    b = render.render_dish("月饼", 2, size=(120, 80))
    assert a.size == b.size == (120, 80)
    assert a.tobytes() != b.tobytes()


def test_contact_sheet_shows_every_dish(tmp_path):
    path = render.contact_sheet(tmp_path / "sheet.png", seeds=range(2), cell=80)
    with Image.open(path) as sheet:
        assert sheet.height >= len(dishes.DISHES) * 80
        colours = sheet.convert("RGB").getcolors(1 << 20)
    assert colours is not None and len(colours) > 1000  # real pictures, not a blank page
