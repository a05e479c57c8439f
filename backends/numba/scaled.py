"""Likelihoods and flows in scaled probabilities: the fast path of ``log_prob`` and ``flows``.

``kernels.py`` keeps every value as a log, so a sum fold pays an exp per input and a log per
unit for each sample: at 32 units that costs as much as the fold's matrix product. Here a value
is a probability in two parts: ``buf[tile, slot, t]`` holds it relative to its *group*, and
``scale[tile, group, t]`` (float64) holds the group's log scale, so value = log(buf) + scale.
The groups (``sgroup``: each slot's group, built by the runtime):

- group 0: the constant slots (1 and 0), scale 0;
- an input group: the categorical units of one variable (consecutive in ``cat``); its scale is
  the largest log-probability of the observed value among its units (``gmax``), so the units
  read exp(lp - gmax) from a table made once per parameter update (``ltab``); no exp per sample;
  a gaussian unit is a group of its own (scale its log-density, value 1);
- a product group: consecutive units of a product layer whose children lie in the same groups
  (``pgroups``); value = product of the children's values, scale = sum of their groups' scales;
- a sum fold: its units; e_c = value_c exp(scale_c - mx) with mx the largest scale among its
  inputs' groups (one exp per input group and sample, not per input), z = W @ e (BLAS gemm for
  wide folds), and the fold is renormalised: value = z / max_m z, scale = mx + log max_m z (one
  log per fold and sample, not per unit).

A group's scale is -inf when all its values are 0 (its factor in a sum is then 0).

Exactness. Terms that underflow (a product of small values, a factor exp(scale_c - mx) of a
group far below the largest) are at most the dtype's smallest normal number relative to the
fold's shift; they are negligible while max_m z stays at or above ``kernels.guard`` (2^-100 in
float32, 2^-960 in float64: 2^-26 and 2^-62 of the total), and the root's value too. A tile
where either fails is recomputed in logs by ``kernels.tile_layers`` (``lost[tile]`` = 1), and
its flows by ``kernels.tile_flows``: the results are those of the log kernels to rounding.
MAP and sampling need log values of every node: they run ``kernels.forward``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .kernels import (
    FAST,
    FAST_REDUCE,
    FOLD,
    INDEX,
    KIND,
    PRODUCT,
    ROWS,
    SPARSE,
    START,
    SUM_MODE,
    WEIGHT,
    A,
    B,
    C,
    _edges_sum,
    _fold_flows,
    _fold_sums,
    _product,
    _product_flows,
    _seed,
    categorical_row,
    flow_scratch,
    gaussian_row,
    guard,
    sexp,
    slog,
    tile_flows,
    tile_layers,
)

# ---- one tile, one layer ----------------------------------------------------------------------


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _inputs(b, s, sgroup, sindex, row, inputs, e, mx, fac, read):  # type: ignore[no-untyped-def]
    """e[c] = value_c exp(scale_c - mx) for the inputs of one fold that live units read (read[row
    + c] != 0; the others' rows of e are left as they are), mx (float64, T) the largest finite
    scale among their groups (0 if none): one exp per run of inputs in one group."""
    t_size = b.shape[1]
    for t in range(t_size):
        mx[t] = -np.inf
    last = -1
    for c in range(inputs):
        if not read[row + c]:
            continue
        group = sgroup[sindex[row + c]]
        if group != last:
            last = group
            for t in range(t_size):
                mx[t] = max(mx[t], s[group, t])
    for t in range(t_size):
        mx[t] = mx[t] if mx[t] > -np.inf else 0.0
    last = -1
    for c in range(inputs):
        if not read[row + c]:
            continue
        child = sindex[row + c]
        group = sgroup[child]
        if group != last:
            last = group
            for t in range(t_size):
                fac[t] = s[group, t] - mx[t]  # <= 0, rounded to the buffer's dtype: its exp vectorises
            for t in range(t_size):
                fac[t] = sexp(fac[t])
        for t in range(t_size):
            e[c, t] = b[child, t] * fac[t]


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _terms(b, s, sgroup, sindex, row, inputs, e, mx, fac, direct, read):  # type: ignore[no-untyped-def]
    """A fold's input terms (inputs, T) and shift mx: where its inputs are consecutive slots of one
    group (`direct`), the slots themselves and that group's scale (no copy, no exp), else e
    filled by `_inputs` (the inputs live units read: `read`)."""
    if direct:
        first = sindex[row]
        scale = s[sgroup[first]]
        for t in range(b.shape[1]):
            mx[t] = scale[t] if scale[t] > -np.inf else 0.0
        return b[first:first + inputs]
    _inputs(b, s, sgroup, sindex, row, inputs, e, mx, fac, read)
    return e


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _renormalise(out, scale, mx, top, small, live):  # type: ignore[no-untyped-def]
    """One fold's sums out (units, T; its rows of the buffer; only the rows with live[m] != 0 count
    and change) keep the inputs' shift (scale = mx)
    while every column's max lies within [small^0.2, small^-0.2] (2^-20 to 2^20 in float32:
    products of such values stay far from underflow); otherwise they are divided by their
    column max, in place, and scale = mx + log max. False (the tile goes back to logs) when a
    column's max is below `small`."""
    t_size = out.shape[1]
    for t in range(t_size):
        top[t] = 0.0
    for m in range(out.shape[0]):
        if not live[m]:
            continue
        a = out[m]
        for t in range(t_size):
            top[t] = max(top[t], a[t])
    low = 0
    for t in range(t_size):
        low += top[t] < small
    if low:
        return False
    lo = small ** 0.2
    hi = 1.0 / lo
    far = 0
    for t in range(t_size):
        far += (top[t] < lo) | (top[t] > hi)
    if far == 0:
        for t in range(t_size):
            scale[t] = mx[t]
        return True
    for t in range(t_size):
        scale[t] = mx[t] + slog(top[t])  # top is normal: the buffer dtype's log, vectorised
        top[t] = 1.0 / top[t]
    for m in range(out.shape[0]):
        if not live[m]:
            continue
        a = out[m]
        for t in range(t_size):
            a[t] *= top[t]
    return True


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _product_layer(b, s, op, pindex, sgroup, pgroups, lo, hi, live):  # type: ignore[no-untyped-def]
    """Values of the live units multiply (`kernels._product`); each product group's scale (groups
    pgroups[lo:hi], by first unit: its units' children lie in the same groups) is the sum of its
    children's groups' scales (right wherever the group has a live unit)."""
    _product(b, op, pindex, True, live)
    start, fan_in, off = op[START], op[B], op[INDEX]
    t_size = b.shape[1]
    for p in range(lo, hi):
        u = pgroups[p]
        row = off + u * fan_in
        out, first = s[sgroup[start + u]], s[sgroup[pindex[row]]]
        for t in range(t_size):
            out[t] = first[t]
        for k in range(1, fan_in):
            child = s[sgroup[pindex[row + k]]]
            for t in range(t_size):
                out[t] += child[t]


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _sum(b, s, op, sindex, sgroup, direct, weights, e, mx, fac, top, blas, live, flive, read):  # type: ignore[no-untyped-def]
    """A dense sum layer: per live fold (flive) its terms (`_terms`), W @ terms written into the
    fold's rows (`kernels._fold_sums`), renormalised there. False when a fold's column max fell
    below `guard` (the tile goes back to logs)."""
    start, folds, units, inputs = op[START], op[A], op[B], op[C]
    small = guard(b[0, 0])
    wide = 0 <= blas <= units * inputs
    for f in range(folds):
        if not flive[op[FOLD] + f]:
            continue
        row = op[INDEX] + f * inputs
        terms = _terms(b, s, sgroup, sindex, row, inputs, e, mx, fac, direct[op[FOLD] + f], read)
        first = start + f * units
        out = b[first:first + units]
        _fold_sums(weights, op[WEIGHT] + f * units * inputs, units, inputs, terms, out, wide)
        if not _renormalise(out, s[sgroup[first]], mx, top, small, live[first:first + units]):
            return False
    return True


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _sparse_sum(b, s, op, sindex, sgroup, direct, sptr, scol, weights, e, mx, fac, top, live, flive, read):  # type: ignore[no-untyped-def]
    """A sparse sum layer (see kernels.py for sptr and scol): each live unit adds its kept edges'
    terms, four per pass; then as `_sum`."""
    start, folds, units, inputs = op[START], op[A], op[B], op[C]
    small = guard(b[0, 0])
    w = op[WEIGHT] - sptr[op[ROWS]]  # edge j's weight: weights[w + j]
    for f in range(folds):
        if not flive[op[FOLD] + f]:
            continue
        row = op[INDEX] + f * inputs
        rows = op[ROWS] + f * units
        terms = _terms(b, s, sgroup, sindex, row, inputs, e, mx, fac, direct[op[FOLD] + f], read)
        first = start + f * units
        for m in range(units):
            if live[first + m]:
                _edges_sum(b[first + m], weights, w, scol, sptr[rows + m], sptr[rows + m + 1], terms)
        if not _renormalise(b[first:first + units], s[sgroup[first]], mx, top, small, live[first:first + units]):
            return False
    return True


@njit(fastmath=FAST_REDUCE, error_model="numpy", cache=True)
def _ratios(b, s, fl, first, units, group, mx, fac, r, live):  # type: ignore[no-untyped-def]
    """r[m] = flow_m / z_m for one fold's units, z_m = value_m exp(scale - mx) its sum relative to
    the inputs' shift mx (0 where the flow is 0, and for dead units: live[first + m] = 0, whose
    rows are not read); then the units' flow rows are emptied."""
    t_size = b.shape[1]
    scale = s[group]
    for t in range(t_size):
        fac[t] = mx[t] - scale[t]  # at most -log guard
    for t in range(t_size):
        fac[t] = sexp(fac[t])  # 1 / max_m z_m
    for m in range(units):
        v, f, rm = b[first + m], fl[first + m], r[m]
        if not live[first + m]:
            rm[:] = 0.0
            continue
        for t in range(t_size):
            rm[t] = f[t] * fac[t] / v[t] if f[t] != 0.0 else 0.0
            f[t] = 0.0


@njit(fastmath=FAST_REDUCE, error_model="numpy", cache=True)
def _sum_flows(b, s, fl, op, sindex, sgroup, direct, weights, wflow, e, mx, fac, r, z, zc, g, blas, live, flive,
               read):  # type: ignore[no-untyped-def]
    """A dense sum layer's flows: the log kernels' products (`kernels._fold_flows`) on this
    module's terms and ratios (no exp or log per input or unit); dead folds have none."""
    start, folds, units, inputs = op[START], op[A], op[B], op[C]
    wide = 0 <= blas <= units * inputs
    for f in range(folds):
        if not flive[op[FOLD] + f]:
            continue
        row = op[INDEX] + f * inputs
        first = start + f * units
        terms = _terms(b, s, sgroup, sindex, row, inputs, e, mx, fac, direct[op[FOLD] + f], read)
        _ratios(b, s, fl, first, units, sgroup[first], mx, fac, r, live)
        _fold_flows(fl, sindex, row, inputs, weights, wflow, op[WEIGHT] + f * units * inputs, units, terms, r, z,
                    zc, g, wide)


@njit(fastmath=FAST_REDUCE, error_model="numpy", cache=True)
def _sparse_flows(b, s, fl, op, sindex, sgroup, direct, sptr, scol, weights, wflow, e, mx, fac, r, zc, live, flive,
                  read):  # type: ignore[no-untyped-def]
    """A sparse sum layer's flows: zc[c] gathers sum_m W[m, c] r_m edge by edge over the live
    units, then input c's flow += term_c zc[c] (the inputs live units read); edge j's weight
    flow += W_j sum_t r_m term_c."""
    start, folds, units, inputs = op[START], op[A], op[B], op[C]
    t_size = b.shape[1]
    w = op[WEIGHT] - sptr[op[ROWS]]
    for f in range(folds):
        if not flive[op[FOLD] + f]:
            continue
        row = op[INDEX] + f * inputs
        rows = op[ROWS] + f * units
        first = start + f * units
        terms = _terms(b, s, sgroup, sindex, row, inputs, e, mx, fac, direct[op[FOLD] + f], read)
        _ratios(b, s, fl, first, units, sgroup[first], mx, fac, r, live)
        for c in range(inputs):
            for t in range(t_size):
                zc[c, t] = 0.0
        for m in range(units):
            if not live[first + m]:
                continue
            rm = r[m]
            for j in range(sptr[rows + m], sptr[rows + m + 1]):
                a, c = weights[w + j], scol[j]
                ec, zcc = terms[c], zc[c]
                d = 0.0
                for t in range(t_size):
                    zcc[t] += a * rm[t]
                    d += rm[t] * ec[t]
                wflow[w + j] += a * d
        for c in range(inputs):
            if not read[row + c]:
                continue
            child = fl[sindex[row + c]]
            for t in range(t_size):
                child[t] += terms[c, t] * zc[c, t]


# ---- one tile in logs (the fallback) ----------------------------------------------------------


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _log_inputs(b, col, idx, real, cat, lp, gauss, gmean, gstd, cunits):  # type: ignore[no-untyped-def]
    """The input slots of one tile (samples col..col + T; the categorical units `cunits`) as log
    values, as `kernels.forward` writes them."""
    t_size = b.shape[1]
    for i in range(cunits.shape[0]):
        u = cunits[i]
        slot, var, off, size = cat[u, 0], cat[u, 1], cat[u, 2], cat[u, 3]
        categorical_row(b[slot], lp[off:off + size], idx[var, col:col + t_size], 0.0)
    for u in range(gauss.shape[0]):
        slot, var = gauss[u, 0], gauss[u, 1]
        gaussian_row(b[slot], real[var, col:col + t_size], gmean[u], gstd[u], 0.0)


# ---- passes over the whole batch ---------------------------------------------------------------


@njit(parallel=True, fastmath=FAST, error_model="numpy", cache=True)
def forward(buf, scale, lost, root, idx, real, cat, lp, ltab, loff, lgroups, gmax, gauss, ggroup, gmean, gstd, ops,
            pindex, sindex, sptr, scol, slive, weights, logw, sgroup, direct, pgroups, pgptr, widest, most,
            chunks, blas, cunits, live, flive, read):  # type: ignore[no-untyped-def]
    """Fill buf (tiles, slots, T) and scale (tiles, groups, T) bottom-up (log-likelihoods).

    ltab: one row per categorical unit u, from loff[u]: exp(lp - gmax) over its values, gmax its
    group's largest log-probability of each value; lgroups (I, 3): per input group its group
    id, variable and the offset of its row of gmax; ggroup (G,): each gaussian unit's group. pgroups: the
    product groups' first units, layer l's from pgptr[l] to pgptr[l + 1]. lost (tiles,) uint8
    comes back 1 for the tiles recomputed in logs (their buf holds log values).

    Only the live units run (live.py): the categorical units `cunits` (rows of cat), the product
    and sparse units of the slot mask `live`, the folds of the mask `flive`; `read` (like sindex)
    marks the fold inputs live units read, and slive must leave out those only dead units read.
    Dead slots keep whatever they held; no live unit reads them."""
    tiles, _, t_size = buf.shape
    for i in prange(cunits.shape[0]):
        u = cunits[i]
        slot, var, size = cat[u, 0], cat[u, 1], cat[u, 3]
        for tile in range(tiles):
            categorical_row(buf[tile, slot], ltab[loff[u]:loff[u] + size], idx[var, tile * t_size:(tile + 1) * t_size],
                            1.0)
    for i in prange(lgroups.shape[0]):
        group, var, off = lgroups[i, 0], lgroups[i, 1], lgroups[i, 2]
        for tile in range(tiles):
            categorical_row(scale[tile, group], gmax[off:], idx[var, tile * t_size:(tile + 1) * t_size], 0.0)
    for u in prange(gauss.shape[0]):  # its own group: the log-density is the scale, the value 1
        slot, var, group = gauss[u, 0], gauss[u, 1], ggroup[u]
        for tile in range(tiles):
            density = scale[tile, group]
            gaussian_row(density, real[var, tile * t_size:(tile + 1) * t_size], gmean[u], gstd[u], 0.0)
            for t in range(t_size):
                buf[tile, slot, t] = 1.0 if density[t] > -np.inf else 0.0  # a group of scale -inf holds 0
    for chunk in prange(chunks):
        e = np.empty((widest, t_size), dtype=buf.dtype)
        acc = np.empty((max(4, most), t_size), dtype=buf.dtype)
        fac = np.empty(t_size, dtype=buf.dtype)
        mx = np.empty(t_size)
        top = np.empty(t_size, dtype=buf.dtype)
        for tile in range(chunk, tiles, chunks):
            b, s = buf[tile], scale[tile]
            ok = _tile(b, s, root, ops, pindex, sindex, sptr, scol, weights, sgroup, direct, pgroups, pgptr, e, mx,
                       fac, top, blas, live, flive, read)
            lost[tile] = not ok
            if not ok:
                _log_inputs(b, tile * t_size, idx, real, cat, lp, gauss, gmean, gstd, cunits)
                tile_layers(b, ops, pindex, sindex, sptr, scol, slive, weights, logw, SUM_MODE, e, top, acc, blas,
                            live, flive)


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _tile(b, s, root, ops, pindex, sindex, sptr, scol, weights, sgroup, direct, pgroups, pgptr, e, mx, fac, top,
          blas, live, flive, read):  # type: ignore[no-untyped-def]
    """Every layer of one tile in scaled values; False where the tile must go back to logs."""
    b[0, :] = 1.0  # the constant slots (group 0, scale 0): 1 and 0
    b[1, :] = 0.0
    s[0, :] = 0.0
    for layer in range(ops.shape[0]):
        op = ops[layer]
        if op[KIND] == PRODUCT:
            _product_layer(b, s, op, pindex, sgroup, pgroups, pgptr[layer], pgptr[layer + 1], live)
        elif op[KIND] == SPARSE:
            if not _sparse_sum(b, s, op, sindex, sgroup, direct, sptr, scol, weights, e, mx, fac, top, live, flive,
                               read):
                return False
        elif not _sum(b, s, op, sindex, sgroup, direct, weights, e, mx, fac, top, blas, live, flive, read):
            return False
    small = guard(b[0, 0])
    low = 0
    for t in range(b.shape[1]):
        low += b[root, t] < small
    return low == 0


@njit(parallel=True, fastmath=FAST_REDUCE, error_model="numpy", cache=True)
def flows(buf, scale, lost, flow, n, root, ops, pindex, sindex, sptr, scol, slive, weights, logw, sgroup, direct,
          widest, most, wflow, blas, clear, live, flive, read):  # type: ignore[no-untyped-def]
    """Top-down flows of every layer from a buffer filled by this module's `forward`: tiles with
    lost[tile] = 1 hold logs (sent back there, or every tile of a buffer from `kernels.forward`
    in SUM_MODE, scale then unread) and run `kernels.tile_flows`. `widest`, `most`: the largest
    fan-in and unit count of a sum layer; `blas` as in `forward`. The input units' flows stay in
    `flow` for `kernels.input_counts`. Live units only (live, flive, read as in `forward`): dead
    slots' flows stay 0.

    `flow` (like `buf`) must hold zeros (but in the constant slots 0 and 1) and is left so once
    `input_counts` has run: each layer empties the rows it read once it has passed their flow
    down, the inputs theirs once counted. Zeroing the whole buffer per pass would cost a pass
    over memory of its own.

    Output (added to; zeroed first when `clear`): wflow (chunks, weights) the sum-weight flows of
    each chunk of tiles (one chunk per thread; the caller adds them up)."""
    tiles, _, t_size = buf.shape
    chunks = wflow.shape[0]
    for chunk in prange(chunks):
        if clear:
            wflow[chunk, :] = 0.0
        scratch = flow_scratch(widest, most, t_size, buf.dtype)
        e, r, _, z, zc, g = scratch
        fac = np.empty(t_size, dtype=buf.dtype)
        mx = np.empty(t_size)
        for tile in range(chunk, tiles, chunks):
            b, s, fl = buf[tile], scale[tile], flow[tile]
            _seed(fl, root, tile * t_size, n, False)
            if lost[tile]:
                tile_flows(b, fl, ops, pindex, sindex, sptr, scol, slive, weights, logw, wflow[chunk], scratch, blas,
                           live, flive)
                continue
            for layer in range(ops.shape[0] - 1, -1, -1):
                op = ops[layer]
                if op[KIND] == SPARSE:
                    _sparse_flows(b, s, fl, op, sindex, sgroup, direct, sptr, scol, weights, wflow[chunk], e, mx, fac,
                                  r, zc, live, flive, read)
                elif op[KIND] == PRODUCT:
                    _product_flows(fl, op, pindex, live)
                else:
                    _sum_flows(b, s, fl, op, sindex, sgroup, direct, weights, wflow[chunk], e, mx, fac, r, z, zc, g,
                               blas, live, flive, read)
