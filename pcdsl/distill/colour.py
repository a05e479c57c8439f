"""Colour transforms of RGB images into non-negative integer categories, and back.

- ``identity``: the pixels as they are (any number of channels), 256 levels per channel.
- ``ycocg_r``: the lossless lifting transform YCoCg-R (Malvar & Sullivan 2003) on 8-bit RGB::

      Co = R - B;  t = B + (Co >> 1);  Cg = G - t;  Y = t + (Cg >> 1)

  (``>>`` floors). Y lies in 0..255 and Co, Cg in -255..255, stored as categories
  ``(Y, Co + 255, Cg + 255)``: levels (256, 511, 511), dtype uint16. The inverse undoes the
  lifting steps exactly, so every 24-bit colour comes back unchanged. The map is injective but
  not onto: of the 256 x 511 x 511 triples, 2^24 are colours. A model over these categories
  gives each RGB image the probability of its triple, so its bits per dimension are a valid
  (if slightly loose: mass on non-colours is wasted) figure for the RGB images themselves;
  ``inverse`` clips a triple that is no colour to the nearest 0..255 values.
- ``ycbcr``: the rounded YCbCr of the released LVD-PG code (BT.709 weights; Y, Cb + 128,
  Cr + 128, each rounded half-to-even and clipped to 0..255; levels 256 each, dtype uint8).
  **Lossy**: distinct colours can share a triple and the inverse is only approximate (within a
  few levels), so bits per dimension measured in this space are for the rounded YCbCr images,
  not for the RGB images. Never the default; state it beside any figure.
"""

from __future__ import annotations

import numpy as np

TRANSFORMS = ("identity", "ycocg_r", "ycbcr")
_OFFSET = 255  # Co and Cg lie in -255..255
# BT.709 rows for Y, Cb, Cr as in the released LVD-PG code (exps/progressive_growing/parallel_PG.jl)
_YCBCR = np.array([[0.2126, 0.7152, 0.0722], [-0.1146, -0.3854, 0.5], [0.5, -0.4542, -0.0458]])
_YCBCR_INVERSE = np.linalg.inv(_YCBCR)


def levels(name: str, channels: int) -> tuple[int, ...]:
    """The number of categories of each channel after transform ``name``."""
    _check(name, channels)
    if name == "ycocg_r":
        return (256, 2 * _OFFSET + 1, 2 * _OFFSET + 1)
    return (256,) * channels


def transform(name: str, images: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """``images`` (..., C) uint8 in colour space ``name``; returns the categories (same shape,
    non-negative integers) and the number of levels of each channel."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"colour transforms take uint8 pixels, got {images.dtype}")
    out_levels = levels(name, images.shape[-1])
    if name == "identity":
        return images.copy(), out_levels
    if name == "ycocg_r":
        return _ycocg_r(images), out_levels
    return _ycbcr(images), out_levels


def inverse(name: str, array: np.ndarray) -> np.ndarray:
    """Categories of colour space ``name`` back to uint8 pixels (clipped to 0..255)."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"colour categories must be integers, got {array.dtype}")
    top = levels(name, array.shape[-1])
    if array.size and (array.min() < 0 or np.any(array.max(axis=tuple(range(array.ndim - 1))) >= top)):
        raise ValueError(f"values outside the categories of '{name}' (levels {top})")
    if name == "identity":
        return array.astype(np.uint8)
    if name == "ycocg_r":
        return _ycocg_r_inverse(array)
    return _ycbcr_inverse(array)


def _check(name: str, channels: int) -> None:
    if name not in TRANSFORMS:
        raise ValueError(f"unknown colour transform '{name}' (known: {', '.join(TRANSFORMS)})")
    if name != "identity" and channels != 3:
        raise ValueError(f"'{name}' transforms RGB images (3 channels), these have {channels}")


def _ycocg_r(images: np.ndarray) -> np.ndarray:
    rgb = images.astype(np.int16)  # differences reach -255..255
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    co = r - b
    t = b + (co >> 1)
    cg = g - t
    y = t + (cg >> 1)
    return np.stack((y, co + _OFFSET, cg + _OFFSET), axis=-1).astype(np.uint16)


def _ycocg_r_inverse(array: np.ndarray) -> np.ndarray:
    ycc = array.astype(np.int16)
    y, co, cg = ycc[..., 0], ycc[..., 1] - _OFFSET, ycc[..., 2] - _OFFSET
    t = y - (cg >> 1)
    g = cg + t
    b = t - (co >> 1)
    r = b + co
    return np.clip(np.stack((r, g, b), axis=-1), 0, 255).astype(np.uint8)


def _ycbcr(images: np.ndarray) -> np.ndarray:
    ycc = images.astype(np.float64) @ _YCBCR.T + np.array([0.0, 128.0, 128.0])
    return np.rint(np.clip(ycc, 0, 255)).astype(np.uint8)


def _ycbcr_inverse(array: np.ndarray) -> np.ndarray:
    rgb = (array.astype(np.float64) - np.array([0.0, 128.0, 128.0])) @ _YCBCR_INVERSE.T
    return np.rint(np.clip(rgb, 0, 255)).astype(np.uint8)
