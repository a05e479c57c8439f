"""PNG pictures of image grids, written with zlib and struct only (no imaging library)."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np

from pcdsl.io.atomic import write_atomic

BORDER = 255  # white lines between the cells
_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_png_grid(path: str | Path, images: np.ndarray, columns: int | None = None, scale: int = 1) -> Path:
    """Write ``images`` (N, H, W, C) uint8, C = 1 (grey) or 3 (RGB), as one PNG grid.

    Cells are laid out row-major, ``columns`` per row (default: ceil(sqrt(N))); each image is
    enlarged ``scale`` times (pixel repetition); a 1-pixel white border separates the cells and
    surrounds the grid. (N, H, W) is read as greyscale. The file is written atomically.
    """
    grid = png_grid(images, columns, scale)
    write_atomic(path, encode_png(grid))
    return Path(path)


def png_grid(images: np.ndarray, columns: int | None = None, scale: int = 1) -> np.ndarray:
    """The grid picture (rows, cols, C) uint8 that :func:`write_png_grid` writes."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8 or not len(images):
        raise ValueError(f"a PNG grid takes uint8 images (N >= 1, H, W, C = 1 or 3), got {images.dtype} "
                         f"{tuple(images.shape)}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"'scale' must be an integer >= 1, got {scale!r}")
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    if columns < 1:
        raise ValueError(f"'columns' must be >= 1, got {columns}")
    rows = math.ceil(n / columns)
    cells = images.repeat(scale, axis=1).repeat(scale, axis=2)
    ch, cw = h * scale, w * scale
    grid = np.full((rows * (ch + 1) + 1, columns * (cw + 1) + 1, c), BORDER, dtype=np.uint8)
    for i in range(n):
        top, left = 1 + (i // columns) * (ch + 1), 1 + (i % columns) * (cw + 1)
        grid[top:top + ch, left:left + cw] = cells[i]
    return grid


def encode_png(picture: np.ndarray) -> bytes:
    """An 8-bit greyscale (C = 1) or RGB (C = 3) picture (rows, cols, C) as PNG bytes."""
    height, width, channels = picture.shape
    colour_type = {1: 0, 3: 2}[channels]
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    # every scanline starts with filter type 0 (none)
    scanlines = np.concatenate([np.zeros((height, 1), np.uint8), picture.reshape(height, width * channels)],
                               axis=1)
    return (_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6))
            + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
