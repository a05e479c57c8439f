"""Which slots of a circuit the root can reach: pruned circuits skip the rest.

A pruned circuit keeps each unit's top edges, but a unit that no live unit reads still costs its
evaluation. A slot is *live* when the root reaches it: the root is; a live product's children
are; a live dense fold's inputs are (its product, a gemm, reads them all); a live sparse unit's
kept edges' inputs are. Liveness follows the structure only (``ops``, ``pindex``, ``sindex``,
``sptr``, ``scol``), never the weights' values: a sparse layer's kept edges are those of its
pattern (a weight set to 0 later still reads its input, as log 0 + x), and the runtime is rebuilt
when the pattern changes. Dead slots are never written nor read by the kernels that take the
masks: their values are whatever the buffer held, and their flows stay 0.

This module needs only numpy: ``pcdsl compile --backend numba`` copies it with the kernels.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .kernels import INDEX, KIND, PRODUCT, ROWS, SPARSE, START, A, B, C


class Live(NamedTuple):
    """The masks and lists the kernels skip dead units by (uint8 masks: 1 live)."""
    everything: bool  # no unit is dead: the masks are all ones
    slots: np.ndarray  # (slots,) each slot
    folds: np.ndarray  # (folds,) each sum fold: 1 where one of its units is live
    inputs: np.ndarray  # like sindex: each input of a fold that a live unit reads
    slive: np.ndarray  # like sindex: the runtime's slive (inputs the log kernels exponentiate) of live units
    cunits: np.ndarray  # the live categorical units (rows of `cat`), ascending
    corder: np.ndarray  # like the runtime's corder without the dead units (crows' rows then
    crows: np.ndarray  # list only live units; a row without any is empty)


def reach(ops: np.ndarray, pindex: np.ndarray, sindex: np.ndarray, sptr: np.ndarray, scol: np.ndarray, root: int,
          num_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """(slots,) bool, the slots the root reaches (the constant slots 0 and 1 count as live), and
    (like sindex) uint8, the fold inputs that live units read."""
    live = np.zeros(num_slots, dtype=bool)
    live[[0, 1, root]] = True
    read = np.zeros(len(sindex), dtype=np.uint8)
    for op in ops[::-1]:  # layers read only earlier slots: top down, a layer's liveness is final when reached
        start, off = int(op[START]), int(op[INDEX])
        if op[KIND] == PRODUCT:
            units, fan_in = int(op[A]), int(op[B])
            kids = pindex[off:off + units * fan_in].reshape(units, fan_in)
            live[kids[live[start:start + units]]] = True
            continue
        folds, units, width = int(op[A]), int(op[B]), int(op[C])
        alive = live[start:start + folds * units]
        if op[KIND] == SPARSE:  # a live unit's kept edges
            indptr = sptr[int(op[ROWS]):int(op[ROWS]) + folds * units + 1]
            unit = np.repeat(np.arange(folds * units), np.diff(indptr))  # each edge's row f * units + m
            edges = alive[unit]
            read[off + unit[edges] // units * width + scol[indptr[0]:indptr[-1]][edges]] = 1
        else:  # every input of a live fold
            read[off:off + folds * width] = np.repeat(alive.reshape(folds, units).any(axis=1), width)
        span = slice(off, off + folds * width)
        live[sindex[span][read[span] != 0]] = True
    return live, read


def live_masks(ops: np.ndarray, pindex: np.ndarray, sindex: np.ndarray, sptr: np.ndarray, scol: np.ndarray,
               slive: np.ndarray, cat: np.ndarray, gauss: np.ndarray, corder: np.ndarray, crows: np.ndarray,
               root: int, num_slots: int) -> Live:
    """The masks of `Live` for a circuit's flat arrays (``runtime.ARRAYS``; slive, corder and crows
    as the runtime makes them); `whole_masks` when no unit is dead."""
    live, read = reach(ops, pindex, sindex, sptr, scol, root, num_slots)
    holds = np.zeros(num_slots, dtype=bool)  # the slots that hold a unit (the plan may leave gaps)
    holds[cat[:, 0]] = holds[gauss[:, 0]] = True
    for op in ops:
        size = int(op[A]) * (1 if op[KIND] == PRODUCT else int(op[B]))
        holds[int(op[START]):int(op[START]) + size] = True
    if live[holds].all():
        return whole_masks(ops, sindex, slive, cat, corder, crows, num_slots)
    sums = ops[ops[:, KIND] != PRODUCT]
    folds = [live[int(op[START]):int(op[START]) + int(op[A]) * int(op[B])].reshape(int(op[A]), -1).any(axis=1)
             for op in sums]
    fold_mask = np.concatenate(folds) if folds else np.zeros(0, dtype=bool)
    cunits = np.flatnonzero(live[cat[:, 0]]).astype(np.int64)
    keep = live[cat[corder, 0]]  # the units in corder's order that stay
    crows_live = np.zeros(len(crows), dtype=np.int64)
    np.cumsum(np.add.reduceat(keep.astype(np.int64), crows[:-1]) if len(corder) else [], out=crows_live[1:])
    return Live(False, live.astype(np.uint8), fold_mask.astype(np.uint8), read, slive & read, cunits,
                corder[keep].astype(np.int64), crows_live)


def whole_masks(ops: np.ndarray, sindex: np.ndarray, slive: np.ndarray, cat: np.ndarray, corder: np.ndarray,
                crows: np.ndarray, num_slots: int) -> Live:
    """Masks under which every unit runs (MAP and sampling, and circuits without dead units)."""
    sums = ops[ops[:, KIND] != PRODUCT]
    return Live(True, np.ones(num_slots, dtype=np.uint8), np.ones(int(sums[:, A].sum()), dtype=np.uint8),
                np.ones(len(sindex), dtype=np.uint8), slive, np.arange(len(cat), dtype=np.int64), corder, crows)
