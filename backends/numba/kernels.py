"""numba kernels that run a layered plan in logs, compiled once for every circuit.

``log_prob`` and ``flows`` run ``scaled.py`` (values as probabilities relative to a log scale per
group of slots, no exp or log per input or unit), which falls back to these kernels tile by tile
where underflow would take digits; MAP and sampling run these.

A circuit reaches the kernels as flat arrays (see ``runtime.py``), so the same
machine code runs any circuit: nothing is compiled per circuit, and
``cache=True`` keeps the compiled kernels on disk between processes.

Layout: the batch is cut into tiles of T samples; each tile owns a value buffer
``buf[tile]`` of shape (slots, T), so a layer reads and writes rows of T
contiguous values and the inner loops run over the tile (SIMD). Tiles are
shared among threads (``prange`` over chunks of tiles, one per thread: chunk i
takes tiles i, i + chunks, ...). Input units run first, unit by unit over the
whole batch (a unit's row of log-probabilities stays in cache; in the flows
pass each unit owns its counts). Sum-weight flows are accumulated per chunk
and summed afterwards, so no two threads write the same memory.

Layers (one row of ``ops`` each, in plan order):

- product: ``out[u] = sum_k buf[pindex[u, k]]``;
- sum: per fold f, ``out[f, m] = log sum_c W[f, m, c] exp(x_c - mx) + mx`` with
  ``x_c = buf[sindex[f, c]]`` and ``mx`` the column max, or, in max mode,
  ``max_c log W[f, m, c] + x_c``;
- sparse sum: the same over the kept edges only: unit (f, m) reads edges
  ``sptr[R + f * M + m] .. sptr[R + f * M + m + 1]`` (R the layer's ROWS column; offsets into
  the sparse edges of all layers), edge j reads input ``scol[j]`` of its fold
  and has weight ``weights[j + W - sptr[R]]`` (W the layer's WEIGHT column). A unit of one
  edge is ``log W + x`` (no exp or log: pruned circuits keep many such units), and only the
  inputs that units of two or more edges read (``slive``, like sindex) are exponentiated.

Dense folds of at least ``blas`` edges per sample (an argument of ``forward`` and
``flows``) take their products through BLAS's gemm (numba's ``np.dot``, SciPy's
sgemm/dgemm) when SciPy is installed: the forward's W @ e and the flows' W^T r and
r e^T. Without SciPy every fold runs the kernels' own loops.

``fexp`` and ``flog`` are written with arithmetic and bit operations only, so
LLVM vectorises the loops that call them (``math.exp`` would be a scalar call
per element here: there is no vector math library). On float64 values they
are accurate to a few units in the last place; on float32 values (a float32
model) they run in float32 arithmetic, about three times as fast, to 1e-7.

This module needs only numpy and numba: ``pcdsl compile --backend numba``
copies it next to the emitted circuit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

PRODUCT, SUM, SPARSE = 0, 1, 2
# columns of `ops`; product: A units, B fan-in; sum: A folds, B units, C inputs; ROWS: a sparse
# sum's offset in sptr
KIND, START, A, B, C, INDEX, WEIGHT, FOLD, ROWS = range(9)
OPS_COLUMNS = 9
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
SUM_MODE, MAX_MODE = 0, 1
MAP_DOWN, SAMPLE_DOWN = 0, 1

# No fastmath "nnan"/"ninf": log 0 = -inf is a value these kernels rely on. error_model="numpy":
# a division by zero gives inf/NaN instead of raising, which lets LLVM vectorise loops that divide.
FAST = {"contract", "nsz", "arcp"}
FAST_REDUCE = {"contract", "nsz", "arcp", "reassoc"}  # lets LLVM vectorise dot products

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_SQRT2 = 1.4142135623730951
_EXP64 = tuple(1.0 / math.factorial(k) for k in range(12, -1, -1))  # Taylor: 1/12!, ..., 1/1!, 1
_LOG64 = tuple(1.0 / k for k in range(21, 0, -2))  # atanh series: 1/21, 1/19, ..., 1/3, 1
_TINY = 2.2250738585072014e-308  # smallest normal float64


@njit(fastmath=FAST, error_model="numpy", cache=True)
def exp64(x: float) -> float:
    """exp(x) for float64 x (-inf gives 0): 2^n * e^r with |r| <= ln2/2, Taylor to r^12."""
    y = min(max(x, -708.0), 709.0)
    n = np.floor(y * _LOG2E + 0.5)
    r = y - n * _LN2_HI - n * _LN2_LO
    p = 0.0
    for c in _EXP64:
        p = p * r + c
    scale = np.int64((np.int64(n) + 1023) << 52).view(np.float64)
    return p * scale if x > -708.0 else 0.0


@njit(fastmath=FAST, error_model="numpy", cache=True)
def log64(x: float) -> float:
    """log(x) for float64 x >= 0 (0 gives -inf): e ln2 + log m, m in [sqrt(1/2), sqrt(2)),
    log m = 2 atanh(s) as an odd series in s = (m - 1) / (m + 1), |s| <= 0.172."""
    small = x < _TINY
    z = x * 18014398509481984.0 if small else x  # 2^54: subnormals become normal
    bits = np.float64(z).view(np.int64)
    e = (bits >> 52) - 1023 - (54 if small else 0)
    m = np.int64((bits & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000).view(np.float64)
    big = m > _SQRT2
    m = m * 0.5 if big else m
    e = e + 1 if big else e
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    q = 0.0
    for c in _LOG64:
        q = q * s2 + c
    ef = float(e)
    result = ef * _LN2_HI + (ef * _LN2_LO + 2.0 * s * q)
    return result if x > 0.0 else -np.inf


_F = np.float32
_LOG2E_F, _LN2_HI_F, _LN2_LO_F = _F(1.44269504088896341), _F(0.693359375), _F(-2.12194440e-4)
# polynomial coefficients, highest power first (Horner); numba unrolls loops over these tuples
_EXP32 = tuple(_F(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                               1.6666665459e-1, 5.0000001201e-1))
_LOG32 = tuple(_F(c) for c in (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
                               1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
                               3.3333331174e-1))
_SQRT_HALF_F = _F(0.70710678118654752)
_TINY_F = _F(1.17549435e-38)  # smallest normal float32


@njit(fastmath=FAST, error_model="numpy", cache=True)
def exp32(x: Any) -> Any:
    """exp(x) in float32 arithmetic (-inf gives 0): 2^n * e^r, a degree-7 polynomial in r
    (the coefficients of Cephes' expf); relative error below 1e-7."""
    y = min(max(x, _F(-87.0)), _F(88.0))
    n = np.floor(y * _LOG2E_F + _F(0.5))
    r = y - n * _LN2_HI_F - n * _LN2_LO_F
    p = _F(0.0)
    for c in _EXP32:
        p = p * r + c
    p = p * r * r + r + _F(1.0)
    scale = np.int32((np.int32(n) + np.int32(127)) << np.int32(23)).view(np.float32)
    return p * scale if x > _F(-87.0) else _F(0.0)


@njit(fastmath=FAST, error_model="numpy", cache=True)
def log32(x: Any) -> Any:
    """log(x) in float32 arithmetic (0 gives -inf): e ln2 + log(1 + z), z in [sqrt(1/2) - 1,
    sqrt(2) - 1), a polynomial in z (Cephes' logf); absolute error below 1e-6."""
    small = x < _TINY_F
    scaled = x * _F(33554432.0) if small else x  # 2^25: subnormals become normal
    bits = np.float32(scaled).view(np.int32)
    e = (bits >> np.int32(23)) - np.int32(126) - (np.int32(25) if small else np.int32(0))
    m = np.int32((bits & np.int32(0x007FFFFF)) | np.int32(0x3F000000)).view(np.float32)  # [1/2, 1)
    low = m < _SQRT_HALF_F
    e = e - np.int32(1) if low else e
    z = m + m - _F(1.0) if low else m - _F(1.0)
    z2 = z * z
    p = _F(0.0)
    for c in _LOG32:
        p = p * z + c
    fe = np.float32(e)
    y = p * z * z2 + fe * _LN2_LO_F - _F(0.5) * z2
    result = z + y + fe * _LN2_HI_F
    return result if x > _F(0.0) else _F(-np.inf)


_MAGIC_F = _F(12582912.0 + 127.0)  # 1.5 * 2^23 (adding it rounds to an integer) + the exponent bias
_OFFSET = np.int32(0x3F3504F3)  # the bits of sqrt(1/2): mantissas from it on map to [sqrt(1/2), sqrt(2))


@njit(fastmath=FAST, error_model="numpy", cache=True)
def exp_shift32(x: Any) -> Any:
    """exp32 for x <= 88 (the shifted inputs of a sum: x - mx <= 0, or a flow's ratio, at most
    -log guard), with fewer operations: n comes out of the float's bits (adding 1.5 * 2^23 rounds
    to it), and only the lower clamp remains. Same polynomial, same accuracy; -inf gives 0."""
    y = max(x, _F(-87.0))
    t = y * _LOG2E_F + _MAGIC_F  # its low mantissa bits hold n + 127, n = round(y / ln 2)
    n = t - _MAGIC_F
    r = y - n * _LN2_HI_F - n * _LN2_LO_F
    p = _EXP32[0]
    for c in _EXP32[1:]:
        p = p * r + c
    p = p * r * r + r + _F(1.0)
    scale = np.int32(np.float32(t).view(np.int32) << np.int32(23)).view(np.float32)  # 2^n
    return p * scale if x > _F(-87.0) else _F(0.0)


@njit(fastmath=FAST, error_model="numpy", cache=True)
def log_normal32(x: Any) -> Any:
    """log32 for normal positive x only (a sum's shifted total: those below `guard` are recomputed
    anyway), without its branches: subtracting sqrt(1/2)'s bits splits x into 2^k * z with z in
    [sqrt(1/2), sqrt(2)). Same polynomial, same accuracy."""
    bits = np.float32(x).view(np.int32)
    k = (bits - _OFFSET) >> np.int32(23)
    z = np.int32(bits - (k << np.int32(23))).view(np.float32)
    f = z - _F(1.0)
    f2 = f * f
    p = _LOG32[0]
    for c in _LOG32[1:]:
        p = p * f + c
    fk = np.float32(k)
    return f + (p * f * f2 + fk * _LN2_LO_F - _F(0.5) * f2) + fk * _LN2_HI_F


def fexp(x: float) -> float:
    """exp inside kernels: exp32 for float32 values (buffers of a float32 model), else exp64."""
    return math.exp(x)


def flog(x: float) -> float:
    """log inside kernels: log32 for float32 values, else log64."""
    return math.log(x) if x > 0 else -math.inf


def sexp(x: float) -> float:
    """exp of a shifted input (x <= 88) inside kernels: exp_shift32 for float32 values, else exp64."""
    return math.exp(x)


def slog(x: float) -> float:
    """log of a shifted sum (normal, positive) inside kernels: log_normal32 for float32, else log64."""
    return math.log(x)


def _by_dtype(generic: Any, single: Any, double: Any) -> None:
    """Give numba `generic` as `single` on float32 values and as `double` on any other."""
    @overload(generic)
    def _typed(x):  # type: ignore[no-untyped-def]
        if x == types.float32:
            return lambda x: single(x)
        return lambda x: double(x)


_by_dtype(fexp, exp32, exp64)
_by_dtype(flog, log32, log64)
_by_dtype(sexp, exp_shift32, exp64)
_by_dtype(slog, log_normal32, log64)


def guard(x: float) -> float:
    """The smallest shifted sum trusted in x's dtype (pcdsl.numerics.underflow_guard): 2^-100 in
    float32, 2^-960 in float64. Below it, underflow may have taken the sum's digits."""
    return 2.0**-100 if isinstance(x, np.float32) else 2.0**-960


@overload(guard)
def _guard(x):  # type: ignore[no-untyped-def]
    if x == types.float32:
        return lambda x: _F(2.0**-100)
    return lambda x: 2.0**-960


def _blas_available() -> bool:
    """Whether numba's np.dot can reach a BLAS (it calls SciPy's sgemm/dgemm)."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401
    except ImportError:
        return False
    return True


# Wide folds (units x inputs >= the kernels' `blas` argument) take their products through BLAS's
# gemm: its register-blocked AVX-512 kernels run several times faster than the loops LLVM makes here.
BLAS = _blas_available()
# At most this many multiply-adds per gemm call: OpenBLAS runs larger products on its own threads,
# which would compete with the kernels' (on a loaded machine such a call can run 100x slower).
GEMM_CHUNK = 1 << 18


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a @ b (2-D arrays, contiguous in C or F order): BLAS where SciPy is installed."""
    np.dot(a, b, out)


@overload(gemm)
def _gemm(a, b, out):  # type: ignore[no-untyped-def]
    if BLAS:
        return lambda a, b, out: np.dot(a, b, out)

    def loops(a, b, out):  # type: ignore[no-untyped-def]  # never run: the runtime passes blas=-1
        for i in range(a.shape[0]):
            out[i, :] = 0.0
            for k in range(a.shape[1]):
                for j in range(b.shape[1]):
                    out[i, j] += a[i, k] * b[k, j]
    return loops


@njit(fastmath=FAST, error_model="numpy", cache=True)
def exact_sum(b, sindex, row, inputs, logw, w, t):  # type: ignore[no-untyped-def]
    """log sum_c W[c] exp(x_c) for one unit and sample, shifted by its largest weighted term
    max_c log W[c] + x_c (zero weights never set it), in float64."""
    best = -np.inf
    for c in range(inputs):
        best = max(best, float(logw[w + c]) + float(b[sindex[row + c], t]))
    if best == -np.inf:
        return best
    total = 0.0
    for c in range(inputs):
        total += exp64(float(logw[w + c]) + float(b[sindex[row + c], t]) - best)
    return log64(total) + best


# ---- one tile, one layer ----------------------------------------------------------------------


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _product(b, op, pindex, multiply, live):  # type: ignore[no-untyped-def]
    """A product layer: each live unit (live: a mask over slots) adds its children's logs, or
    multiplies their values when `multiply` (scaled.py; a constant at every call, so the loops
    carry no branch)."""
    start, units, fan_in, off = op[START], op[A], op[B], op[INDEX]
    t_size = b.shape[1]
    for u in range(units):
        if not live[start + u]:
            continue
        row = off + u * fan_in
        out, first = b[start + u], b[pindex[row]]
        for t in range(t_size):
            out[t] = first[t]
        for k in range(1, fan_in):
            child = b[pindex[row + k]]
            if multiply:
                for t in range(t_size):
                    out[t] *= child[t]
            else:
                for t in range(t_size):
                    out[t] += child[t]


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _shifted(b, sindex, row, inputs, e, mx):  # type: ignore[no-untyped-def]
    """e[c] = exp(x_c - mx) for the inputs of one fold, mx their column max (0 if all -inf)."""
    t_size = b.shape[1]
    for t in range(t_size):
        mx[t] = -np.inf
    for c in range(inputs):
        child = sindex[row + c]
        for t in range(t_size):
            mx[t] = max(mx[t], b[child, t])
    for t in range(t_size):
        mx[t] = mx[t] if mx[t] > -np.inf else 0.0
    for c in range(inputs):
        child = sindex[row + c]
        for t in range(t_size):
            e[c, t] = sexp(b[child, t] - mx[t])


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _fold_sums(weights, w, units, inputs, e, acc, wide):  # type: ignore[no-untyped-def]
    """acc[m] = sum_c W[m, c] e[c] for one fold's units (W[m, c] = weights[w + m * inputs + c];
    acc at least (units, T)): through `gemm` when `wide` (blocks of units, each call within
    GEMM_CHUNK), else four units per pass, so each row of e is loaded once per four."""
    t_size = acc.shape[1]
    if wide:
        step = max(1, GEMM_CHUNK // (inputs * t_size))
        for lo in range(0, units, step):
            hi = min(units, lo + step)
            gemm(weights[w + lo * inputs:w + hi * inputs].reshape(hi - lo, inputs), e[:inputs], acc[lo:hi])
        return
    m = 0
    while m + 4 <= units:
        a0, a1, a2, a3 = acc[m], acc[m + 1], acc[m + 2], acc[m + 3]
        for t in range(t_size):
            a0[t] = a1[t] = a2[t] = a3[t] = 0.0
        w0 = w + m * inputs
        for c in range(inputs):
            b0, b1 = weights[w0 + c], weights[w0 + inputs + c]
            b2, b3 = weights[w0 + 2 * inputs + c], weights[w0 + 3 * inputs + c]
            for t in range(t_size):
                ec = e[c, t]
                a0[t] += b0 * ec
                a1[t] += b1 * ec
                a2[t] += b2 * ec
                a3[t] += b3 * ec
        m += 4
    while m < units:
        a0 = acc[m]
        for t in range(t_size):
            a0[t] = 0.0
        w0 = w + m * inputs
        for c in range(inputs):
            b0 = weights[w0 + c]
            for t in range(t_size):
                a0[t] += b0 * e[c, t]
        m += 1


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _sum(b, op, sindex, weights, logw, e, mx, acc, blas, flive):  # type: ignore[no-untyped-def]
    """acc (at least (units, T)) takes each live fold's (flive: a mask over folds) shifted sums
    (`_fold_sums`; folds of `blas` or more edges per sample, blas >= 0, through gemm), then
    out = log acc + mx. A unit whose shifted sum falls below `guard` (its weighted terms lie far
    below the column's shift) is recomputed with its own shift by `exact_sum`."""
    start, folds, units, inputs = op[START], op[A], op[B], op[C]
    t_size = b.shape[1]
    small = guard(b[0, 0])
    wide = 0 <= blas <= units * inputs
    for f in range(folds):
        if not flive[op[FOLD] + f]:
            continue
        row = op[INDEX] + f * inputs
        _shifted(b, sindex, row, inputs, e, mx)
        first = start + f * units
        w = op[WEIGHT] + f * units * inputs
        _fold_sums(weights, w, units, inputs, e, acc, wide)
        lost = 0
        for m in range(units):
            out, a = b[first + m], acc[m]
            for t in range(t_size):
                out[t] = slog(a[t]) + mx[t]
                lost += a[t] < small
        if lost:
            _repair(b, sindex, row, inputs, logw, w, first, units, acc, small)


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _lost(acc, rows, small):  # type: ignore[no-untyped-def]
    """How many of acc's first `rows` rows' entries lie below `small` (a count: the loop vectorises)."""
    count = 0
    for j in range(rows):
        for t in range(acc.shape[1]):
            count += acc[j, t] < small
    return count


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _repair(b, sindex, row, inputs, logw, w0, out, count, acc, small):  # type: ignore[no-untyped-def]
    """Recompute, with their own shifts, the `count` units from slot `out` whose shifted sums in
    acc fell below `small` (weights of unit j start at w0 + j * inputs)."""
    for j in range(count):
        for t in range(b.shape[1]):
            if acc[j, t] < small:
                b[out + j, t] = exact_sum(b, sindex, row, inputs, logw, w0 + j * inputs, t)


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _sum_max(b, op, sindex, logw, acc):  # type: ignore[no-untyped-def]
    start, folds, units, inputs = op[START], op[A], op[B], op[C]
    t_size = b.shape[1]
    for f in range(folds):
        row = op[INDEX] + f * inputs
        for m in range(units):
            w = op[WEIGHT] + (f * units + m) * inputs
            for t in range(t_size):
                acc[0, t] = -np.inf
            for c in range(inputs):
                lw, child = logw[w + c], sindex[row + c]
                for t in range(t_size):
                    acc[0, t] = max(acc[0, t], lw + b[child, t])
            out = start + f * units + m
            for t in range(t_size):
                b[out, t] = acc[0, t]


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _live_shifted(b, sindex, row, live, e, mx):  # type: ignore[no-untyped-def]
    """`_shifted` over the live inputs of a fold only (live[c] != 0: those a unit of two or more
    edges reads; mx their column max, 0 if all -inf)."""
    t_size = b.shape[1]
    for t in range(t_size):
        mx[t] = -np.inf
    for c in range(live.shape[0]):
        if live[c]:
            child = sindex[row + c]
            for t in range(t_size):
                mx[t] = max(mx[t], b[child, t])
    for t in range(t_size):
        mx[t] = mx[t] if mx[t] > -np.inf else 0.0
    for c in range(live.shape[0]):
        if live[c]:
            child = sindex[row + c]
            for t in range(t_size):
                e[c, t] = fexp(b[child, t] - mx[t])


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _edges_sum(acc, weights, w, scol, j, hi, e):  # type: ignore[no-untyped-def]
    """acc = sum of weights[w + k] * e[scol[k]] over the edges k = j .. hi - 1 of one unit, four
    edges per pass (one load and store of acc per four rows of e)."""
    for t in range(acc.shape[0]):
        acc[t] = 0.0
    while j + 4 <= hi:
        a0, a1, a2, a3 = weights[w + j], weights[w + j + 1], weights[w + j + 2], weights[w + j + 3]
        e0, e1, e2, e3 = e[scol[j]], e[scol[j + 1]], e[scol[j + 2]], e[scol[j + 3]]
        for t in range(acc.shape[0]):
            acc[t] += a0 * e0[t] + a1 * e1[t] + a2 * e2[t] + a3 * e3[t]
        j += 4
    while j < hi:
        a0, e0 = weights[w + j], e[scol[j]]
        for t in range(acc.shape[0]):
            acc[t] += a0 * e0[t]
        j += 1


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _sparse_sum(b, op, sindex, sptr, scol, slive, weights, logw, e, mx, live, flive):  # type: ignore[no-untyped-def]
    """`_sum` over the kept edges of each live unit (live, flive: masks over slots and folds). A
    unit of one edge is log W + x (no exp, no log: it costs what a product does), one of none
    log 0; the others add their edges' exps, taken only of the inputs they read (`slive`). Units
    that fall below `guard` go to `_sparse_repair`."""
    start, folds, units, inputs = op[START], op[A], op[B], op[C]
    t_size = b.shape[1]
    small = guard(b[0, 0])
    w = op[WEIGHT] - sptr[op[ROWS]]  # edge j's weight: weights[w + j]
    sums = np.empty((units, t_size), dtype=b.dtype)
    for f in range(folds):
        if not flive[op[FOLD] + f]:
            continue
        row = op[INDEX] + f * inputs
        rows = op[ROWS] + f * units
        read = slive[row:row + inputs]
        if read.any():
            _live_shifted(b, sindex, row, read, e, mx)
        first = start + f * units
        for m in range(units):
            if not live[first + m]:
                continue
            j, hi = sptr[rows + m], sptr[rows + m + 1]
            out = b[first + m]
            if hi - j <= 1:
                if hi == j:
                    out[:] = -np.inf
                else:
                    lw, child = logw[w + j], b[sindex[row + scol[j]]]
                    for t in range(t_size):
                        out[t] = lw + child[t]
                continue
            acc = sums[m]
            _edges_sum(acc, weights, w, scol, j, hi, e)
            for t in range(t_size):
                out[t] = flog(acc[t]) + mx[t]
            if _lost(sums[m:m + 1], 1, small):
                _sparse_repair(b, sindex, row, scol, logw[w:], sptr[rows + m], hi, first + m, sums[m:m + 1], small)


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _sparse_exact(b, sindex, row, scol, logw, lo, hi, t):  # type: ignore[no-untyped-def]
    """`exact_sum` over the edges lo..hi of one unit (inputs scol[j] of the fold at `row`, log
    weights logw[j])."""
    best = -np.inf
    for j in range(lo, hi):
        best = max(best, float(logw[j]) + float(b[sindex[row + scol[j]], t]))
    if best == -np.inf:
        return best
    total = 0.0
    for j in range(lo, hi):
        total += exp64(float(logw[j]) + float(b[sindex[row + scol[j]], t]) - best)
    return log64(total) + best


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _sparse_repair(b, sindex, row, scol, logw, lo, hi, out, acc, small):  # type: ignore[no-untyped-def]
    """Recompute with its own shift the unit at slot `out` where its shifted sum fell below `small`."""
    for t in range(b.shape[1]):
        if acc[0, t] < small:
            b[out, t] = _sparse_exact(b, sindex, row, scol, logw, lo, hi, t)


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _sparse_max(b, op, sindex, sptr, scol, logw, acc):  # type: ignore[no-untyped-def]
    start, folds, units, inputs = op[START], op[A], op[B], op[C]
    t_size = b.shape[1]
    w = op[WEIGHT] - sptr[op[ROWS]]
    for f in range(folds):
        row = op[INDEX] + f * inputs
        for m in range(units):
            at = op[ROWS] + f * units + m
            for t in range(t_size):
                acc[0, t] = -np.inf
            for j in range(sptr[at], sptr[at + 1]):
                lw, child = logw[w + j], sindex[row + scol[j]]
                for t in range(t_size):
                    acc[0, t] = max(acc[0, t], lw + b[child, t])
            out = start + f * units + m
            for t in range(t_size):
                b[out, t] = acc[0, t]


# ---- passes over the whole batch ---------------------------------------------------------------


@njit(parallel=True, cache=True)
def evidence(rows, discrete, limits, index, real):  # type: ignore[no-untyped-def]
    """Rows (n, V) of float64 data into variable-major index (V, width) (categories, -1 where
    missing or not discrete) and, unless it has no columns, real (V, width) (values, NaN where
    missing); columns n.. of both pad (missing). Missing: NaN, or -1 for a discrete variable.
    Returns the flat position r * V + v of the first discrete value that is not one of
    0..limits[v] - 1 (-1 if none). Blocks of 64 rows, variable by variable: each variable's
    row of index is written 64 columns at a time."""
    n, num_vars = rows.shape
    width = index.shape[1]
    with_real = real.shape[1] > 0
    blocks = (width + 63) // 64
    first_bad = np.full(blocks, -1, dtype=np.int64)
    for block in prange(blocks):
        lo, hi = block * 64, min(width, block * 64 + 64)
        for v in range(num_vars):
            disc, limit = discrete[v], limits[v]
            for r in range(lo, hi):
                x = rows[r, v] if r < n else np.nan
                missing = np.isnan(x) or (disc and x == -1.0)
                if with_real:
                    real[v, r] = np.nan if missing else x
                index[v, r] = -1
                if disc and not missing:
                    if 0.0 <= x < limit and x == np.floor(x):
                        index[v, r] = np.int64(x)
                    elif first_bad[block] < 0 or r * num_vars + v < first_bad[block]:
                        first_bad[block] = r * num_vars + v
    for block in range(blocks):
        if first_bad[block] >= 0:
            return first_bad[block]
    return -1


@njit(fastmath=FAST, error_model="numpy", cache=True)
def categorical_row(out, row, values, free):  # type: ignore[no-untyped-def]
    """out[t] = row[values[t]], or `free` where the value is missing (-1)."""
    for t in range(out.shape[0]):
        x = values[t]
        out[t] = row[x] if x >= 0 else free


@njit(error_model="numpy", cache=True)
def gaussian_row(out, xs, mean, std, free):  # type: ignore[no-untyped-def]
    """out[t] = log N(xs[t]; mean, std) (-inf where (x - mean) / std squared overflows), or `free`
    where the value is missing (NaN)."""
    top = -math.log(std) - LOG_SQRT_2PI
    for t in range(out.shape[0]):
        x = xs[t]
        z = (x - mean) / std
        out[t] = free if np.isnan(x) else top - 0.5 * z * z


@njit(cache=True)
def _most_units(ops):  # type: ignore[no-untyped-def]
    """The most units of a dense sum layer's fold."""
    most = 1
    for layer in range(ops.shape[0]):
        if ops[layer, KIND] == SUM:
            most = max(most, ops[layer, B])
    return most


@njit(parallel=True, fastmath=FAST, error_model="numpy", cache=True)
def forward(buf, idx, real, cat, lp, lpmax, gauss, gmean, gstd, ops, pindex, sindex, sptr, scol, slive, weights, logw,
            widest, mode, chunks, blas, cunits, live, flive):  # type: ignore[no-untyped-def]
    """Fill buf (tiles, slots, T) bottom-up; mode SUM_MODE (log-likelihood) or MAX_MODE.
    `widest`: the largest fan-in of a sum layer; `chunks`: how many threads share the tiles;
    `blas`: dense folds of at least this many edges per sample take `gemm` (-1: none).
    Only the categorical units `cunits` (rows of cat), the product and sparse units of the slot
    mask `live` and the folds of the mask `flive` run (see live.py; slive must leave out inputs
    that only dead units read); the other slots are left as they are."""
    tiles, _, t_size = buf.shape
    # Inputs unit by unit over the whole batch, so a unit's row of lp stays in cache.
    for i in prange(cunits.shape[0]):
        u = cunits[i]
        slot, var, off, size = cat[u, 0], cat[u, 1], cat[u, 2], cat[u, 3]
        free = lpmax[u] if mode == MAX_MODE else 0.0
        for tile in range(tiles):
            categorical_row(buf[tile, slot], lp[off:off + size], idx[var, tile * t_size:(tile + 1) * t_size], free)
    for u in prange(gauss.shape[0]):
        slot, var = gauss[u, 0], gauss[u, 1]
        free = -math.log(gstd[u]) - LOG_SQRT_2PI if mode == MAX_MODE else 0.0
        for tile in range(tiles):
            gaussian_row(buf[tile, slot], real[var, tile * t_size:(tile + 1) * t_size], gmean[u], gstd[u], free)
    # Then the layers, tile by tile.
    for chunk in prange(chunks):
        e = np.empty((widest, t_size), dtype=buf.dtype)
        mx = np.empty(t_size, dtype=buf.dtype)
        acc = np.empty((max(4, _most_units(ops)), t_size), dtype=buf.dtype)
        for tile in range(chunk, tiles, chunks):
            tile_layers(buf[tile], ops, pindex, sindex, sptr, scol, slive, weights, logw, mode, e, mx, acc, blas,
                        live, flive)


@njit(fastmath=FAST, error_model="numpy", cache=True)
def tile_layers(b, ops, pindex, sindex, sptr, scol, slive, weights, logw, mode, e, mx, acc, blas, live,
                flive):  # type: ignore[no-untyped-def]
    """Every layer of one tile b (slots, T) whose input slots are filled (scratch: e (widest, T),
    mx (T,), acc (at least (4, T) and a fold's units)): the live units and folds (`forward`)."""
    b[0, :] = 0.0  # the constant slots: log 1 and log 0
    b[1, :] = -np.inf
    for layer in range(ops.shape[0]):
        op = ops[layer]
        if op[KIND] == PRODUCT:
            _product(b, op, pindex, False, live)
        elif op[KIND] == SPARSE:
            if mode == MAX_MODE:
                _sparse_max(b, op, sindex, sptr, scol, logw, acc)
            else:
                _sparse_sum(b, op, sindex, sptr, scol, slive, weights, logw, e, mx, live, flive)
        elif mode == MAX_MODE:
            _sum_max(b, op, sindex, logw, acc)
        else:
            _sum(b, op, sindex, weights, logw, e, mx, acc, blas, flive)


@njit(error_model="numpy", cache=True)
def _seed(rows, root, col, n, clear):  # type: ignore[no-untyped-def]
    """Start a top-down pass over one tile: 1 at the root for the tile's real samples (columns
    col + t < n; the rest pad the last tile), 0 everywhere else when `clear` (else the rows are
    0 already, but for the constant slots, which no layer empties)."""
    if clear:
        rows[:, :] = 0
    rows[0, :] = 0
    rows[1, :] = 0
    for t in range(rows.shape[1]):
        rows[root, t] = 1 if col + t < n else 0


@njit(fastmath=FAST_REDUCE, error_model="numpy", cache=True)
def _ratios(b, fl, first, units, mx, r, low):  # type: ignore[no-untyped-def]
    """r[m] = flow_m exp(mx - value_m) for the units from slot `first` (0 for units far below the
    shift); returns how many (unit, sample) pairs with flow lie that far below it."""
    t_size = b.shape[1]
    for m in range(units):
        for t in range(t_size):
            v = b[first + m, t]
            r[m, t] = fl[first + m, t] * sexp(mx[t] - v) if v > -np.inf and v - mx[t] >= low else 0.0
    far = 0  # rare, so counted first (a loop that vectorises) and sent edge by edge only when some
    for m in range(units):
        for t in range(t_size):
            v = b[first + m, t]
            far += 1 if v - mx[t] < low and v > -np.inf and fl[first + m, t] != 0.0 else 0
    return far


@njit(fastmath=FAST_REDUCE, error_model="numpy", cache=True)
def _sparse_ratios(b, fl, first, sptr, rows, units, mx, r, low, live):  # type: ignore[no-untyped-def]
    """`_ratios` for the live units of two or more edges (from sptr[rows]); the others are left out."""
    t_size = b.shape[1]
    far = 0
    for m in range(units):
        if sptr[rows + m + 1] - sptr[rows + m] < 2 or not live[first + m]:
            continue
        for t in range(t_size):
            v = b[first + m, t]
            r[m, t] = fl[first + m, t] * fexp(mx[t] - v) if v > -np.inf and v - mx[t] >= low else 0.0
        for t in range(t_size):
            v = b[first + m, t]
            far += 1 if v - mx[t] < low and v > -np.inf and fl[first + m, t] != 0.0 else 0
    return far


@njit(fastmath=FAST_REDUCE, error_model="numpy", cache=True)
def _sparse_flows(b, fl, op, sindex, sptr, scol, slive, weights, logw, wflow, e, mx, r, zc, live, flive):  # type: ignore[no-untyped-def]
    """`_sum_flows` over the kept edges of the live units (dead ones have no flow: skipped). A
    unit of one edge passes its flow on whole (its value is log W + x: the edge carries all of
    it); for the others zc[c] (widest, T) gathers sum_m W[m, c] r_m edge by edge, then each live
    input's flow is e_c * zc[c]."""
    start, folds, units, inputs = op[START], op[A], op[B], op[C]
    t_size = b.shape[1]
    low = math.log(guard(b[0, 0]))
    w = op[WEIGHT] - sptr[op[ROWS]]  # edge j's weight: weights[w + j]
    for f in range(folds):
        if not flive[op[FOLD] + f]:
            continue
        row = op[INDEX] + f * inputs
        rows = op[ROWS] + f * units
        first = start + f * units
        read = slive[row:row + inputs]
        if read.any():
            _live_shifted(b, sindex, row, read, e, mx)
            far = _sparse_ratios(b, fl, first, sptr, rows, units, mx, r, low, live)
            if far:
                _sparse_exact_flows(b, fl, sindex, sptr, scol, logw[w:], wflow[w:], row, first, rows, units, mx, low)
            for c in range(inputs):
                if read[c]:
                    for t in range(t_size):
                        zc[c, t] = 0.0
            for m in range(units):
                lo, hi = sptr[rows + m], sptr[rows + m + 1]
                if hi - lo < 2 or not live[first + m]:
                    continue
                for j in range(lo, hi):
                    a, c = weights[w + j], scol[j]
                    d = 0.0
                    for t in range(t_size):
                        rm = r[m, t]
                        zc[c, t] += a * rm
                        d += rm * e[c, t]
                    wflow[w + j] += a * d
            for c in range(inputs):
                if read[c]:
                    child = sindex[row + c]
                    for t in range(t_size):
                        fl[child, t] += e[c, t] * zc[c, t]
        for m in range(units):
            if not live[first + m]:
                continue
            lo, hi = sptr[rows + m], sptr[rows + m + 1]
            if hi - lo == 1:
                parent, value, child = fl[first + m], b[first + m], fl[sindex[row + scol[lo]]]
                d = 0.0
                for t in range(t_size):
                    edge = parent[t] if value[t] > -np.inf else 0.0
                    child[t] += edge
                    d += edge
                wflow[w + lo] += d
            for t in range(t_size):  # consumed: leave the rows empty for the next pass (see `flows`)
                fl[first + m, t] = 0.0


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _sparse_exact_flows(b, fl, sindex, sptr, scol, logw, wflow, row, first, rows, units, mx, low):  # type: ignore[no-untyped-def]
    """`_exact_flows` over the kept edges of the units of two or more edges (unit m's from
    sptr[rows + m]; edge j's log weight logw[j], its flow wflow[j])."""
    for m in range(units):
        lo, hi = sptr[rows + m], sptr[rows + m + 1]
        if hi - lo < 2:
            continue
        for t in range(b.shape[1]):
            v, parent = b[first + m, t], fl[first + m, t]
            if v > -np.inf and v - mx[t] < low and parent != 0.0:
                for j in range(lo, hi):
                    child = sindex[row + scol[j]]
                    edge = parent * exp64(float(logw[j]) + float(b[child, t]) - float(v))
                    fl[child, t] += edge
                    wflow[j] += edge


@njit(fastmath=FAST_REDUCE, error_model="numpy", cache=True)
def _sum_flows(b, fl, op, sindex, weights, logw, wflow, e, mx, r, z, zc, g, blas, flive):  # type: ignore[no-untyped-def]
    """Flows of one sum layer for one tile: child flow += e_c * sum_m W[m, c] r_m and weight flow
    += W[m, c] * sum_t r_m e_c, with r_m = flow_m exp(mx - value_m) (`_fold_flows`; z and zc
    (widest, T), g (most * widest,) scratch). Units far below the column's shift (those `_sum`
    recomputed) go edge by edge (`_exact_flows`). Dead folds (flive 0) have no flow: skipped."""
    start, folds, units, inputs = op[START], op[A], op[B], op[C]
    t_size = b.shape[1]
    low = math.log(guard(b[0, 0]))
    wide = 0 <= blas <= units * inputs
    for f in range(folds):
        if not flive[op[FOLD] + f]:
            continue
        row = op[INDEX] + f * inputs
        _shifted(b, sindex, row, inputs, e, mx)
        first = start + f * units
        far = _ratios(b, fl, first, units, mx, r, low)
        w = op[WEIGHT] + f * units * inputs
        if far:
            _exact_flows(b, fl, sindex, logw, wflow, row, first, w, units, inputs, mx, low)
        for m in range(units):  # consumed: leave the rows empty for the next pass (see `flows`)
            for t in range(t_size):
                fl[first + m, t] = 0.0
        _fold_flows(fl, sindex, row, inputs, weights, wflow, w, units, e, r, z, zc, g, wide)


@njit(fastmath=FAST_REDUCE, error_model="numpy", cache=True)
def _fold_flows(fl, sindex, row, inputs, weights, wflow, w, units, e, r, z, zc, g, wide):  # type: ignore[no-untyped-def]
    """One fold's flows from its inputs' terms e (inputs, T) and its units' ratios r (units, T):
    child c's flow += e_c * sum_m W[m, c] r_m, weight flow += W[m, c] * sum_t r_m e_c. Through
    `_flows_gemm` when `wide`, else four inputs per pass."""
    if wide:
        _flows_gemm(fl, sindex, row, inputs, weights, wflow, w, units, e, r, z, zc, g)
        return
    t_size = fl.shape[1]
    c = 0
    while c + 4 <= inputs:
        z[:4, :] = 0.0
        for m in range(units):
            at = w + m * inputs + c
            w0, w1, w2, w3 = weights[at], weights[at + 1], weights[at + 2], weights[at + 3]
            d0 = d1 = d2 = d3 = 0.0
            for t in range(t_size):
                rm = r[m, t]
                z[0, t] += w0 * rm
                z[1, t] += w1 * rm
                z[2, t] += w2 * rm
                z[3, t] += w3 * rm
                d0 += rm * e[c, t]
                d1 += rm * e[c + 1, t]
                d2 += rm * e[c + 2, t]
                d3 += rm * e[c + 3, t]
            wflow[at] += w0 * d0
            wflow[at + 1] += w1 * d1
            wflow[at + 2] += w2 * d2
            wflow[at + 3] += w3 * d3
        for j in range(4):
            child = sindex[row + c + j]
            for t in range(t_size):
                fl[child, t] += e[c + j, t] * z[j, t]
        c += 4
    while c < inputs:
        z[0, :] = 0.0
        for m in range(units):
            at = w + m * inputs + c
            w0 = weights[at]
            d0 = 0.0
            for t in range(t_size):
                z[0, t] += w0 * r[m, t]
                d0 += r[m, t] * e[c, t]
            wflow[at] += w0 * d0
        child = sindex[row + c]
        for t in range(t_size):
            fl[child, t] += e[c, t] * z[0, t]
        c += 1


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _flows_gemm(fl, sindex, row, inputs, weights, wflow, w, units, e, r, z, zc, g):  # type: ignore[no-untyped-def]
    """`_sum_flows` of one fold as two products: zc = W^T r (the inputs' flows, e_c * zc[c]) and
    g = r e^T (the weights', W[m, c] * g[m, c]); in blocks of units so each gemm call stays within
    GEMM_CHUNK (the blocks of zc add up through z)."""
    t_size = fl.shape[1]
    wm = weights[w:w + units * inputs].reshape(units, inputs)
    step = max(1, GEMM_CHUNK // (inputs * t_size))
    for lo in range(0, units, step):
        hi = min(units, lo + step)
        gemm(wm[lo:hi].T, r[lo:hi], zc[:inputs] if lo == 0 else z[:inputs])
        if lo > 0:
            for c in range(inputs):
                for t in range(t_size):
                    zc[c, t] += z[c, t]
        gemm(r[lo:hi], e[:inputs].T, g[lo * inputs:hi * inputs].reshape(hi - lo, inputs))
    for c in range(inputs):
        child = fl[sindex[row + c]]
        for t in range(t_size):
            child[t] += e[c, t] * zc[c, t]
    for j in range(units * inputs):
        wflow[w + j] += weights[w + j] * g[j]


@njit(fastmath=FAST, error_model="numpy", cache=True)
def _exact_flows(b, fl, sindex, logw, wflow, row, first, w, units, inputs, mx, low):  # type: ignore[no-untyped-def]
    """Edge flows flow_m W[m, c] exp(x_c - value_m) (each at most flow_m) of the units whose value
    lies more than -low below the column's shift mx."""
    for m in range(units):
        for t in range(b.shape[1]):
            v, parent = b[first + m, t], fl[first + m, t]
            if v > -np.inf and v - mx[t] < low and parent != 0.0:
                at = w + m * inputs
                for c in range(inputs):
                    child = sindex[row + c]
                    edge = parent * exp64(float(logw[at + c]) + float(b[child, t]) - float(v))
                    fl[child, t] += edge
                    wflow[at + c] += edge


@njit(cache=True)
def flow_scratch(widest, most, t_size, dtype):  # type: ignore[no-untyped-def]
    """A thread's scratch for `tile_flows`: e, zc (widest, T); r (most, T); mx (T,); z; g."""
    return (np.empty((widest, t_size), dtype=dtype), np.empty((most, t_size), dtype=dtype),
            np.empty(t_size, dtype=dtype), np.empty((max(4, widest), t_size), dtype=dtype),
            np.empty((widest, t_size), dtype=dtype), np.empty(most * widest, dtype=dtype))


@njit(fastmath=FAST_REDUCE, error_model="numpy", cache=True)
def _product_flows(fl, op, pindex, live):  # type: ignore[no-untyped-def]
    """A product layer passes each live unit's flow whole to its children, then empties its rows
    (dead units have no flow)."""
    start, units, fan_in, off = op[START], op[A], op[B], op[INDEX]
    t_size = fl.shape[1]
    for u in range(units):
        if not live[start + u]:
            continue
        for k in range(fan_in):
            child = pindex[off + u * fan_in + k]
            for t in range(t_size):
                fl[child, t] += fl[start + u, t]
        for t in range(t_size):
            fl[start + u, t] = 0.0


@njit(fastmath=FAST_REDUCE, error_model="numpy", cache=True)
def tile_flows(b, fl, ops, pindex, sindex, sptr, scol, slive, weights, logw, wflow, scratch, blas, live,
               flive):  # type: ignore[no-untyped-def]
    """Every layer's flows, top down, for one seeded tile (b values, fl flows: (slots, T)); the
    live units and folds only (see `forward`)."""
    e, r, mx, z, zc, g = scratch
    for layer in range(ops.shape[0] - 1, -1, -1):
        op = ops[layer]
        if op[KIND] == SUM:
            _sum_flows(b, fl, op, sindex, weights, logw, wflow, e, mx, r, z, zc, g, blas, flive)
        elif op[KIND] == SPARSE:
            _sparse_flows(b, fl, op, sindex, sptr, scol, slive, weights, logw, wflow, e, mx, r, zc, live, flive)
        else:
            _product_flows(fl, op, pindex, live)


@njit(fastmath=FAST_REDUCE, error_model="numpy", cache=True)
def _count4(flow, idx, cat, units, counts, missing):  # type: ignore[no-untyped-def]
    """`input_counts` for four units, each alone in its row of lp, side by side."""
    tiles, _, t_size = flow.shape
    u0, u1, u2, u3 = units[0], units[1], units[2], units[3]
    row0 = counts[cat[u0, 2]:cat[u0, 2] + cat[u0, 3]]
    row1 = counts[cat[u1, 2]:cat[u1, 2] + cat[u1, 3]]
    row2 = counts[cat[u2, 2]:cat[u2, 2] + cat[u2, 3]]
    row3 = counts[cat[u3, 2]:cat[u3, 2] + cat[u3, 3]]
    m0 = m1 = m2 = m3 = 0.0
    for tile in range(tiles):
        cols = slice(tile * t_size, (tile + 1) * t_size)
        f0, f1, f2, f3 = flow[tile, cat[u0, 0]], flow[tile, cat[u1, 0]], flow[tile, cat[u2, 0]], flow[tile, cat[u3, 0]]
        x0, x1, x2, x3 = idx[cat[u0, 1], cols], idx[cat[u1, 1], cols], idx[cat[u2, 1], cols], idx[cat[u3, 1], cols]
        for t in range(t_size):
            if x0[t] >= 0:
                row0[x0[t]] += f0[t]
            else:
                m0 += f0[t]
            if x1[t] >= 0:
                row1[x1[t]] += f1[t]
            else:
                m1 += f1[t]
            if x2[t] >= 0:
                row2[x2[t]] += f2[t]
            else:
                m2 += f2[t]
            if x3[t] >= 0:
                row3[x3[t]] += f3[t]
            else:
                m3 += f3[t]
            f0[t] = f1[t] = f2[t] = f3[t] = 0.0
    missing[0] += m0
    missing[1] += m1
    missing[2] += m2
    missing[3] += m3


@njit(parallel=True, fastmath=FAST_REDUCE, error_model="numpy", cache=True)
def input_counts(flow, idx, real, cat, corder, crows, gauss, gmean, counts, cat_missing, gstats, clear):  # type: ignore[no-untyped-def]
    """The input units' flows (left in `flow` by `flows`) into their statistics, emptying their rows.

    Categorical units reading one row of lp (tied leaves) are listed together: row r's units are
    corder[crows[r]:crows[r + 1]], so each row of counts has one writer (a row may list none: the
    runtime leaves out units the root does not reach, whose flow is 0).

    Outputs (added to; where counts' rows are counted in, zeroed first when `clear`: the padding
    of lp's rows is left as it is): counts (lp size,) categorical
    flows of observed values; cat_missing (rows of lp,) flows that reached a row's units where
    their variable is missing; gstats (gaussian units, 4): flow, flow * d, flow * d^2 over observed values, d = x - mean
    (centred on the unit's mean: raw moments would cancel), and flow over missing ones."""
    tiles, _, t_size = flow.shape
    # Rows of lp in blocks of four: each row's units add to it in turn (no two threads write one
    # row). Four rows of one unit each run side by side: a row's adds wait on each other where
    # samples repeat a value (a background pixel), four rows' do not.
    rows = crows.shape[0] - 1
    for block in prange((rows + 3) // 4):
        lo = block * 4
        hi = min(rows, lo + 4)
        for r in range(lo, hi):
            if clear and crows[r + 1] > crows[r]:  # its units' entries (tied units: cardinalities may differ)
                size = 0
                for j in range(crows[r], crows[r + 1]):
                    size = max(size, cat[corder[j], 3])
                off = cat[corder[crows[r]], 2]
                counts[off:off + size] = 0.0
        if hi - lo == 4 and crows[lo + 1] - crows[lo] == crows[lo + 2] - crows[lo + 1] == 1 and \
                crows[lo + 3] - crows[lo + 2] == crows[hi] - crows[lo + 3] == 1:
            _count4(flow, idx, cat, corder[crows[lo]:crows[hi]], counts, cat_missing[lo:hi])
            continue
        for r in range(lo, hi):
            for j in range(crows[r], crows[r + 1]):
                u = corder[j]
                slot, var, off = cat[u, 0], cat[u, 1], cat[u, 2]
                row = counts[off:off + cat[u, 3]]
                for tile in range(tiles):
                    f, values = flow[tile, slot], idx[var, tile * t_size:(tile + 1) * t_size]
                    for t in range(t_size):
                        x = values[t]
                        if x >= 0:
                            row[x] += f[t]
                        else:
                            cat_missing[r] += f[t]
                        f[t] = 0.0
    for u in prange(gauss.shape[0]):
        slot, var = gauss[u, 0], gauss[u, 1]
        for tile in range(tiles):
            col = tile * t_size
            for t in range(t_size):
                x, f_t = real[var, col + t], flow[tile, slot, t]
                flow[tile, slot, t] = 0.0
                if np.isnan(x):
                    gstats[u, 3] += f_t
                else:
                    d = x - gmean[u]
                    gstats[u, 0] += f_t
                    gstats[u, 1] += f_t * d
                    gstats[u, 2] += f_t * d * d


@njit(parallel=True, error_model="numpy", cache=True)
def down(buf, active, n, root, idx, real, out, cat, lp, lpbest, gauss, gmean, gstd, ops, pindex, sindex, sptr,
         scol, weights, logw, mode, sum_draws, var_draws, normal_draws, chunks):  # type: ignore[no-untyped-def]
    """Top-down: pick, for each active sum unit, its best (MAP_DOWN, over a MAX_MODE buffer) or a
    drawn (SAMPLE_DOWN, over a SUM_MODE buffer) input; then write a value into `out` (samples,
    variables) for each missing variable whose input unit is active. Draws: sum_draws (folds,
    samples) and var_draws (variables, samples) uniform in [0, 1), normal_draws standard normal."""
    tiles, _, t_size = buf.shape
    for chunk in prange(chunks):
        for tile in range(chunk, tiles, chunks):
            b, act = buf[tile], active[tile]
            col = tile * t_size
            _seed(act, root, col, n, True)
            for layer in range(ops.shape[0] - 1, -1, -1):
                op = ops[layer]
                start = op[START]
                if op[KIND] == PRODUCT:
                    units, fan_in, off = op[A], op[B], op[INDEX]
                    for u in range(units):
                        for t in range(t_size):
                            if act[start + u, t]:
                                for k in range(fan_in):
                                    act[pindex[off + u * fan_in + k], t] = 1
                    continue
                folds, units, inputs = op[A], op[B], op[C]
                for f in range(folds):
                    row = op[INDEX] + f * inputs
                    for t in range(t_size):
                        m = 0
                        while m < units and not act[start + f * units + m, t]:
                            m += 1
                        if m == units:
                            continue  # no active unit in this fold for this sample
                        # the unit's edges j in lo..hi: weights[j], input c of the fold
                        sparse = op[KIND] == SPARSE
                        at = op[ROWS] + f * units + m
                        if sparse:
                            lo = op[WEIGHT] + sptr[at] - sptr[op[ROWS]]
                            hi = lo + sptr[at + 1] - sptr[at]
                        else:
                            lo = op[WEIGHT] + (f * units + m) * inputs
                            hi = lo + inputs
                        chosen = 0
                        if mode == MAP_DOWN:
                            best = -np.inf
                            for j in range(lo, hi):
                                c = scol[j - lo + sptr[at]] if sparse else j - lo
                                score = logw[j] + b[sindex[row + c], t]
                                if score > best:
                                    best, chosen = score, c
                        else:
                            value = b[start + f * units + m, t]
                            target = sum_draws[op[FOLD] + f, col + t]
                            total = 0.0
                            for j in range(lo, hi):
                                c = scol[j - lo + sptr[at]] if sparse else j - lo
                                total += weights[j] * math.exp(b[sindex[row + c], t] - value)
                            target *= total
                            chosen = -1
                            for j in range(lo, hi):
                                c = scol[j - lo + sptr[at]] if sparse else j - lo
                                p = weights[j] * math.exp(b[sindex[row + c], t] - value)
                                if p > 0.0:
                                    chosen = c
                                    target -= p
                                    if target < 0.0:
                                        break
                            chosen = max(chosen, 0)
                        act[sindex[row + chosen], t] = 1
            for u in range(cat.shape[0]):
                slot, var, off, size = cat[u, 0], cat[u, 1], cat[u, 2], cat[u, 3]
                for t in range(t_size):
                    if col + t < n and act[slot, t] and idx[var, col + t] < 0:
                        if mode == MAP_DOWN:
                            out[col + t, var] = lpbest[u]
                        else:
                            target = var_draws[var, col + t]
                            chosen = -1
                            for k in range(size):
                                p = math.exp(lp[off + k])
                                if p > 0.0:
                                    chosen = k
                                    target -= p
                                    if target < 0.0:
                                        break
                            out[col + t, var] = max(chosen, 0)
            for u in range(gauss.shape[0]):
                slot, var = gauss[u, 0], gauss[u, 1]
                for t in range(t_size):
                    if col + t < n and act[slot, t] and np.isnan(real[var, col + t]):
                        noise = normal_draws[var, col + t] if mode == SAMPLE_DOWN else 0.0
                        out[col + t, var] = gmean[u] + gstd[u] * noise
