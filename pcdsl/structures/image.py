"""Image region graphs: Poon-Domingos rectangles and quad trees over a 2-D variable array.

A region is an axis-aligned rectangle ``(r0, r1, c0, c1)`` (rows ``[r0, r1)``, columns
``[c0, c1)``), named ``r{r0}-{r1}c{c0}-{c1}``. Single pixels are input groups; every other
region is a sum group of ``units`` units (the whole image: the 1-unit ``{prefix}/root``).
Products are hadamard, so a pixel that feeds one is first lifted to ``units`` units by a
sum ``r..c...sum`` when ``input_units != units``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pcdsl.diagnostics import NO_SPAN, Span
from pcdsl.ir.graph import CircuitGraph
from pcdsl.structures._common import Builder, check_variables, positive_int

Rect = tuple[int, int, int, int]


def rect_name(rect: Rect) -> str:
    r0, r1, c0, c1 = rect
    return f"r{r0}-{r1}c{c0}-{c1}"


def _is_pixel(rect: Rect) -> bool:
    return rect[1] - rect[0] == 1 and rect[3] - rect[2] == 1


@dataclass(frozen=True)
class _Regions:
    """What every region of one image template shares."""

    b: Builder
    grid: np.ndarray
    units: int
    input_units: int

    def pixel(self, rect: Rect, root: bool) -> str:
        leaf = self.b.input(int(self.grid[rect[0], rect[2]]), self.input_units)
        if root:
            return self.b.sum("root", (leaf,), 1)
        if self.input_units == self.units:
            return leaf
        return self.b.sum(f"{rect_name(rect)}.sum", (leaf,), self.units)

    def region(self, rect: Rect, children: tuple[str, ...], root: bool) -> str:
        if root:
            return self.b.sum("root", children, 1)
        return self.b.sum(f"{rect_name(rect)}.sum", children, self.units)


def _regions(graph: CircuitGraph, variables: np.ndarray, prefix: str, span: Span,
             units: int, input_units: int | None) -> _Regions:
    grid = check_variables(graph, variables, ndim=2)
    units = positive_int("units", units)
    inputs = units if input_units is None else positive_int("input_units", input_units)
    return _Regions(Builder(graph, prefix, span), grid, units, inputs)


def _split(rect: Rect, axis: int, pos: int) -> tuple[Rect, Rect]:
    r0, r1, c0, c1 = rect
    if axis == 0:
        return (r0, pos, c0, c1), (pos, r1, c0, c1)
    return (r0, r1, c0, pos), (r0, r1, pos, c1)


# ---- Poon-Domingos ----------------------------------------------------------------------

def poon_domingos(graph: CircuitGraph, variables: np.ndarray, *, prefix: str, span: Span = NO_SPAN,
                  delta: int | list[int] | None = None, units: int = 16,
                  input_units: int | None = None) -> str:
    """The Poon-Domingos (2011) decomposition of an (H, W) image, as used by EiNets.

    Each rectangle is split in two at every multiple of each ``delta`` that lies strictly
    inside it, along both axes (a hadamard product ``{rect}.cutr{row}`` or
    ``{rect}.cutc{column}`` per split); a rectangle no delta can split is halved along its
    longer side (rows on a tie). Rectangles are shared between the partitions using them.
    """
    regions = _regions(graph, variables, prefix, span, units, input_units)
    deltas = _deltas(delta)
    h, w = regions.grid.shape
    return _pd_region(regions, (0, h, 0, w), deltas, {}, root=True)


def _deltas(delta: object) -> tuple[int, ...]:
    if delta is None:
        raise ValueError("needs 'delta' (an int or a list of ints)")
    values = list(delta) if isinstance(delta, (list, tuple, np.ndarray)) else [delta]
    if not values:
        raise ValueError("'delta' must not be empty")
    return tuple(positive_int("delta", d) for d in values)


def _pd_region(regions: _Regions, rect: Rect, deltas: tuple[int, ...], memo: dict[Rect, str],
               root: bool = False) -> str:
    if rect in memo:  # a rectangle reached by several partitions is built once
        return memo[rect]
    if _is_pixel(rect):
        node = regions.pixel(rect, root)
    else:
        parts = []
        for axis, pos in _pd_cuts(rect, deltas):
            first, second = _split(rect, axis, pos)
            kids = (_pd_region(regions, first, deltas, memo), _pd_region(regions, second, deltas, memo))
            parts.append(regions.b.product(f"{rect_name(rect)}.cut{'rc'[axis]}{pos}", kids))
        node = regions.region(rect, tuple(parts), root)
    memo[rect] = node
    return node


def _pd_cuts(rect: Rect, deltas: tuple[int, ...]) -> list[tuple[int, int]]:
    """(axis, position) of every split of ``rect``, sorted."""
    bounds = ((rect[0], rect[1]), (rect[2], rect[3]))
    cuts = {(axis, pos) for d in deltas for axis, (lo, hi) in enumerate(bounds)
            for pos in range((lo // d + 1) * d, hi, d)}
    if cuts:
        return sorted(cuts)
    lengths = [hi - lo for lo, hi in bounds]
    axis = 0 if lengths[0] >= lengths[1] else 1
    return [(axis, bounds[axis][0] + lengths[axis] // 2)]


# ---- quad tree ----------------------------------------------------------------------------

def quad_tree(graph: CircuitGraph, variables: np.ndarray, *, prefix: str, span: Span = NO_SPAN,
              units: int = 16, input_units: int | None = None) -> str:
    """Recursive quadrants of an (H, W) image: a region is a sum over one hadamard product
    ``{rect}.prod`` of its (up to) 4 quadrants, 2 halves when one side has length 1."""
    regions = _regions(graph, variables, prefix, span, units, input_units)
    h, w = regions.grid.shape
    return _qt_region(regions, (0, h, 0, w), root=True)


def _qt_region(regions: _Regions, rect: Rect, root: bool = False) -> str:
    if _is_pixel(rect):
        return regions.pixel(rect, root)
    kids = tuple(_qt_region(regions, q) for q in _quadrants(rect))
    product = regions.b.product(f"{rect_name(rect)}.prod", kids)
    return regions.region(rect, (product,), root)


def _quadrants(rect: Rect) -> list[Rect]:
    """Row-major quadrants; a side of length 1 is not split."""
    r0, r1, c0, c1 = rect
    rows = [(r0, r1)] if r1 - r0 == 1 else [(r0, (r0 + r1) // 2), ((r0 + r1) // 2, r1)]
    cols = [(c0, c1)] if c1 - c0 == 1 else [(c0, (c0 + c1) // 2), ((c0 + c1) // 2, c1)]
    return [(a, b, c, d) for a, b in rows for c, d in cols]
