"""Patch grids, colour transforms (YCoCg-R on every 24-bit colour) and PNG grids."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from pcdsl.distill.images import PatchError, PatchGrid, inverse, levels, transform, write_png_grid
from pcdsl.io.png import BORDER, png_grid

# ---- patches ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("image", "patch"), [((28, 28, 1), (4, 4)), ((28, 28, 1), (7, 14)), ((16, 16, 3), (4, 4)),
                                              ((6, 9, 3), (3, 1)), ((5, 5, 2), (5, 5)), ((8, 8), (2, 4))])
def test_patch_round_trip_and_columns(image: tuple[int, ...], patch: tuple[int, int]) -> None:
    grid = PatchGrid(image, patch)  # type: ignore[arg-type]
    h, w = image[:2]
    c = image[2] if len(image) == 3 else 1
    assert grid.image == (h, w, c)
    assert grid.count == (h // patch[0]) * (w // patch[1]) and grid.dims == patch[0] * patch[1] * c
    images = np.random.default_rng(0).integers(0, 256, size=(3, h, w, c), dtype=np.uint8)
    patches = grid.to_patches(images)
    assert patches.shape == (3, grid.count, grid.dims)
    np.testing.assert_array_equal(grid.from_patches(patches), images)
    flat = images.reshape(3, -1)
    seen = np.concatenate([grid.pixel_columns(i) for i in range(grid.count)])
    assert sorted(seen.tolist()) == list(range(h * w * c))  # the patches partition the pixels
    for i in range(grid.count):
        np.testing.assert_array_equal(flat[:, grid.pixel_columns(i)], patches[:, i])


def test_patch_order_is_row_major_then_channel() -> None:
    grid = PatchGrid((4, 6, 2), (2, 3))
    image = np.arange(4 * 6 * 2).reshape(1, 4, 6, 2)
    patches = grid.to_patches(image)
    assert (grid.rows, grid.cols) == (2, 2)
    # patch 1 is grid row 0, column 1: image rows 0..1, columns 3..5; channels adjacent
    expected = [image[0, y, x, ch] for y in (0, 1) for x in (3, 4, 5) for ch in (0, 1)]
    assert patches[0, 1].tolist() == expected
    columns = [(y * 6 + x) * 2 + ch for y in (2, 3) for x in (0, 1, 2) for ch in (0, 1)]
    assert grid.pixel_columns(2).tolist() == columns


def test_patch_grid_that_does_not_tile() -> None:
    with pytest.raises(PatchError, match=r"5x4 patches do not tile 28x28 images: the image height 28 is not a "
                       r"multiple of 5 \(patch heights that fit: 1, 2, 4, 7, 14, 28\)"):
        PatchGrid((28, 28, 1), (5, 4))
    with pytest.raises(PatchError, match="image width 32 is not a multiple of 3"):
        PatchGrid((32, 32, 3), (4, 3))
    with pytest.raises(PatchError, match="positive sizes"):
        PatchGrid((28, 28, 1), (0, 4))
    grid = PatchGrid((4, 4, 1), (2, 2))
    with pytest.raises(PatchError, match=r"expected images of shape \(N, 4, 4, 1\)"):
        grid.to_patches(np.zeros((2, 4, 5, 1)))
    with pytest.raises(PatchError, match=r"outside 0\.\.3"):
        grid.pixel_columns(4)


# ---- colour ----------------------------------------------------------------------------------------


def all_colours(first_red: int, reds: int) -> np.ndarray:
    """Every colour whose red value lies in first_red .. first_red + reds - 1, as (N, 3) uint8."""
    codes = np.arange(first_red << 16, (first_red + reds) << 16, dtype=np.uint32)
    return np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], axis=-1).astype(np.uint8)


def test_ycocg_r_is_exact_on_every_24_bit_colour() -> None:
    seen_low, seen_high = np.full(3, 1 << 20), np.full(3, -1)
    for first in range(0, 256, 64):  # 2^24 colours in four vectorised chunks
        rgb = all_colours(first, 64)
        ycc, top = transform("ycocg_r", rgb)
        assert top == (256, 511, 511) and ycc.dtype == np.uint16
        np.testing.assert_array_equal(inverse("ycocg_r", ycc), rgb)
        seen_low, seen_high = np.minimum(seen_low, ycc.min(0)), np.maximum(seen_high, ycc.max(0))
    assert seen_low.tolist() == [0, 0, 0] and seen_high.tolist() == [255, 510, 510]  # every level used


def test_ycocg_r_known_values() -> None:
    rgb = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255], [10, 20, 30]], dtype=np.uint8)
    ycc, _ = transform("ycocg_r", rgb)
    # Co = R - B, t = B + (Co >> 1), Cg = G - t, Y = t + (Cg >> 1); stored with Co, Cg + 255
    assert ycc.tolist() == [[0, 255, 255], [255, 255, 255], [63, 510, 128], [63, 0, 128], [20, 235, 255]]


def test_ycbcr_is_close_but_lossy_and_images_keep_their_shape() -> None:
    rgb = all_colours(0, 256)[::97]
    ycc, top = transform("ycbcr", rgb)
    assert top == (256, 256, 256)
    back = inverse("ycbcr", ycc)
    assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 1
    assert (back != rgb).any()  # lossy: documented as such
    images = np.random.default_rng(0).integers(0, 256, size=(2, 4, 4, 3), dtype=np.uint8)
    assert transform("ycbcr", images)[0].shape == images.shape
    # grey stays grey: Y = the grey level, Cb = Cr = 128
    grey = np.array([[100, 100, 100]], dtype=np.uint8)
    assert transform("ycbcr", grey)[0].tolist() == [[100, 128, 128]]


def test_identity_and_bad_requests() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    same, top = transform("identity", grey[..., :1])
    assert top == (256,) and np.array_equal(same, grey[..., :1])
    with pytest.raises(ValueError, match="3 channels"):
        transform("ycocg_r", grey[..., :1])
    with pytest.raises(ValueError, match="unknown colour transform 'hsv'"):
        transform("hsv", grey)
    with pytest.raises(ValueError, match=r"outside the categories of 'ycocg_r' \(levels \(256, 511, 511\)\)"):
        inverse("ycocg_r", np.array([[0, 511, 0]]))
    assert levels("ycocg_r", 3) == (256, 511, 511)


# ---- PNG -------------------------------------------------------------------------------------------


def decode_png(data: bytes) -> np.ndarray:
    """A minimal PNG reader for 8-bit grey/RGB, filter 0 (what write_png_grid writes); checks CRCs."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    channels = {0: 1, 2: 3}[colour]
    assert depth == 8 and b"IEND" in chunks
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + width * channels)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(height, width, channels)


@pytest.mark.parametrize("channels", [1, 3])
def test_png_grid_layout(tmp_path: Path, channels: int) -> None:
    images = np.random.default_rng(0).integers(0, 200, size=(5, 3, 4, channels), dtype=np.uint8)
    path = write_png_grid(tmp_path / "g.png", images, columns=2, scale=2)
    picture = decode_png(path.read_bytes())
    # 3 rows x 2 columns of 6x8 cells, 1-pixel borders between and around
    assert picture.shape == (3 * 7 + 1, 2 * 9 + 1, channels)
    for i in range(5):
        top, left = 1 + (i // 2) * 7, 1 + (i % 2) * 9
        np.testing.assert_array_equal(picture[top:top + 6:2, left:left + 8:2], images[i])
        np.testing.assert_array_equal(picture[top + 1:top + 6:2, left + 1:left + 8:2], images[i])
    assert (picture[0] == BORDER).all() and (picture[:, 9] == BORDER).all()
    assert (picture[15:, 10:] == BORDER).all()  # the empty sixth cell
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]  # no temporary file left behind


def test_png_matches_pillow_when_installed(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    images = np.random.default_rng(1).integers(0, 256, size=(4, 5, 6, 3), dtype=np.uint8)
    path = write_png_grid(tmp_path / "g.png", images)
    with image_module.open(path) as opened:
        np.testing.assert_array_equal(np.asarray(opened.convert("RGB")), png_grid(images))


def test_png_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8 images"):
        png_grid(np.zeros((2, 3, 3, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8 images"):
        png_grid(np.zeros((2, 3, 3, 3)))
    with pytest.raises(ValueError, match="'scale' must be an integer >= 1"):
        png_grid(np.zeros((1, 2, 2), dtype=np.uint8), scale=0)
    assert png_grid(np.zeros((1, 2, 2), dtype=np.uint8)).shape == (4, 4, 1)  # (N, H, W) is grey
