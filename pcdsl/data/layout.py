"""How a circuit's variables lay out as an image, so that image files can be scored and samples
drawn as pictures.

An *image model* is a circuit whose variables are one array ``x[H, W]`` (greyscale) or
``x[H, W, C]`` / ``x[C, H, W]`` with C in (1, 3), declared in that order (``var x[28, 28] :
categorical(256)``), or a flat ``x[N]`` whose N is a square (greyscale) or three times a
square (RGB, pixels row-major with channels adjacent).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from pcdsl.ir.graph import CircuitGraph

_INDEXED = re.compile(r"^([A-Za-z_][\w.]*)\[(\d+(?:,\s*\d+)*)\]$")


def variable_shape(graph: CircuitGraph) -> tuple[int, ...] | None:
    """The shape of the one array the circuit's variables form, in declaration (row-major)
    order; None when they are not a single complete array."""
    names, positions = set(), []
    for v in graph.variables:
        match = _INDEXED.match(v.name)
        if match is None:
            return None
        names.add(match.group(1))
        positions.append(tuple(int(p) for p in match.group(2).split(",")))
    if len(names) != 1 or len({len(p) for p in positions}) != 1:
        return None
    shape = tuple(max(p[d] for p in positions) + 1 for d in range(len(positions[0])))
    expected = np.indices(shape).reshape(len(shape), -1).T
    if len(positions) != len(expected) or not np.array_equal(np.array(positions), expected):
        return None
    return shape


def image_layout(shape: tuple[int, ...] | None) -> tuple[int, int, int, bool] | None:
    """(H, W, C, channel_first) of an image model's variable array, or None for other arrays."""
    if shape is None:
        return None
    if len(shape) == 2:
        return (shape[0], shape[1], 1, False)
    if len(shape) == 3 and shape[2] in (1, 3):
        return (shape[0], shape[1], shape[2], False)
    if len(shape) == 3 and shape[0] in (1, 3):
        return (shape[1], shape[2], shape[0], True)
    if len(shape) == 1:
        for channels in (1, 3):
            side = math.isqrt(shape[0] // channels)
            if side * side * channels == shape[0]:
                return (side, side, channels, False)
    return None


def images_as_rows(images: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Images (N, H, W, C) as int64 rows, one per image, in a circuit's variable order.

    ``shape`` is the circuit's variable array (:func:`variable_shape`): (H, W), (H, W, C) or a
    flat (H*W*C,) take the pixels row-major with channels adjacent; (C, H, W) takes the channel
    planes one after another. None keeps the (H, W, C) order.
    """
    n, h, w, c = images.shape
    target = None if shape is None else tuple(shape)
    if target in (None, (h, w, c), (h * w * c,)) or (c == 1 and target == (h, w)):
        return images.reshape(n, h * w * c).astype(np.int64)
    if target == (c, h, w):
        return images.transpose(0, 3, 1, 2).reshape(n, h * w * c).astype(np.int64)
    raise ValueError(f"the images are {h}x{w} with {c} channel{'s' if c != 1 else ''}, but the circuit's "
                     f"variables form an array of shape {target}")


def rows_to_images(rows: np.ndarray, graph: CircuitGraph, colour: str = "identity") -> np.ndarray:
    """Samples (N, variables) of an image model as uint8 images (N, H, W, C).

    With ``colour = "identity"`` a variable of k < 256 values is stretched to 0..255 (value
    * 255 // (k - 1)); other colour transforms (``ycocg_r``, ``ycbcr``) are inverted to RGB.
    """
    from pcdsl.distill.colour import inverse

    layout = image_layout(variable_shape(graph))
    if layout is None:
        raise ValueError(f"circuit '{graph.name}' is not an image model: its variables do not form one array "
                         "x[H, W], x[H, W, C] or x[C, H, W] (C = 1 or 3)")
    h, w, c, channel_first = layout
    rows = np.asarray(rows)
    if rows.dtype.kind == "f" and np.isnan(rows).any():
        raise ValueError("samples have missing values")
    values = rows.astype(np.int64).reshape(len(rows), *((c, h, w) if channel_first else (h, w, c)))
    images = values.transpose(0, 2, 3, 1) if channel_first else values
    if colour != "identity":
        return inverse(colour, images)
    sizes = np.array([v.domain.size or 0 for v in graph.variables])
    if (sizes < 2).any() or (sizes > 256).any():
        raise ValueError("image models draw pictures of discrete variables of 2..256 values; "
                         f"these have {int(sizes.min())}..{int(sizes.max())}")
    top = (sizes.reshape(c, h, w).transpose(1, 2, 0) if channel_first else sizes.reshape(h, w, c)) - 1
    return (images * 255 // top).astype(np.uint8)


def write_sample_grid(path: str | Path, rows: np.ndarray, graph: CircuitGraph, colour: str = "identity",
                      scale: int = 1) -> Path:
    """Samples of an image model as a PNG grid (see :func:`pcdsl.io.png.write_png_grid`)."""
    from pcdsl.io.png import write_png_grid

    return write_png_grid(path, rows_to_images(rows, graph, colour), scale=scale)
