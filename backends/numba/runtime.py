"""A compiled circuit on the numba kernels: evidence in, query results out.

A circuit is a handful of flat arrays (``ARRAYS`` says what each holds); the
kernels in ``kernels.py`` run any circuit from them, so nothing is compiled per
circuit. This module needs only numpy and numba: ``pcdsl compile --backend
numba`` copies it, with ``kernels.py``, next to the emitted circuit.
"""

from __future__ import annotations

import functools
import math
import sys
import threading
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import numba
import numpy as np

from . import kernels, scaled
from .live import Live, live_masks, whole_masks

# One query at a time per process: queries share scratch buffers, and each already uses every
# thread. (A process that runs torch too is better off with NUMBA_THREADING_LAYER=workqueue: the
# OpenMP threads of numba and of torch spin beside each other and slow both down many times over.)
_LOCK = threading.RLock()
_Query = TypeVar("_Query", bound=Callable[..., Any])


def _serialised(query: _Query) -> _Query:
    """Run the query under _LOCK: one query at a time per process."""
    @functools.wraps(query)
    def run(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return query(*args, **kwargs)
    return run  # type: ignore[return-value]


ARRAYS = {
    "cat": "(U, 4) int64: per categorical input unit its slot, variable, offset in lp, cardinality "
           "(tied units share an offset)",
    "lp": "(sum of R * width,) log-probabilities, one row per parameter row (padded with -inf)",
    "gauss": "(G, 2) int64: per gaussian input unit its slot and variable",
    "gmean": "(G,) gaussian means (float64 whatever the dtype)",
    "gstd": "(G,) gaussian standard deviations (float64)",
    "ops": "(L, 9) int64: per product/sum/sparse-sum layer kind, start, A, B, C, index offset, weight offset, "
           "fold offset, row-pointer offset (sparse sums)",
    "pindex": "product inputs, each layer's (units, fan-in) block flattened",
    "sindex": "sum inputs, each layer's (folds, inputs) block flattened",
    "weights": "sum weights, each layer's (folds, units, inputs) block flattened; a sparse sum's kept edges",
    "sptr": "sparse sums' edge ranges: per layer (folds * units + 1,) offsets into its edges",
    "scol": "sparse sums' inputs: per edge (like weights) the input of its fold it reads",
}
PARAMETERS = ("lp", "gmean", "gstd", "weights")
DTYPES = {"float32": np.float32, "float64": np.float64}
# log_prob and flows run a large batch in pieces whose value buffer (slots x samples) holds at most
# this many values (at least one tile per thread), so memory stays bounded on circuits of a million
# slots; the results are those of one piece, per sample (log_prob) or summed in float64 (flows).
BUFFER_VALUES = 1 << 27
# Dense sum folds with at least this many edges per sample (units x inputs) take their products
# through BLAS's gemm (kernels.gemm), when SciPy is there: below it the call costs more than it saves.
BLAS_EDGES = 256
# Samples per tile: at most TILE (a wider tile pays each fold's fixed costs, its gemm calls and its
# weight-flow updates, once for more samples; 256 against 128: flows 2-5% faster at HCLT-16/32 and
# quad-tree-16/32 over batches of 512-2048, log_prob the same), halved down to MIN_TILE while a
# batch would leave a thread without a tile.
TILE, MIN_TILE = 256, 32
# log_prob and flows run in scaled probabilities (scaled.py) unless its tables (one row of
# probabilities per categorical unit) would hold more values than this; then in logs.
SCALED_TABLE_VALUES = 1 << 28


class Circuit:
    """Queries on (batch, variables) data in the column order of ``variables``; -1 marks a missing
    discrete value, NaN a missing real one (marginalised). Results are numpy arrays."""

    def __init__(self, arrays: dict[str, np.ndarray], variables: tuple[str, ...],
                 cardinalities: tuple[int | None, ...], root: int, num_slots: int, dtype: str = "float64",
                 tile: int = TILE, buffer_values: int = BUFFER_VALUES):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if tile < 1:
            raise ValueError(f"tile must be at least 1, got {tile}")
        self.variables, self.cardinalities = tuple(variables), tuple(cardinalities)
        self.root, self.num_slots, self.tile = int(root), int(num_slots), int(tile)
        self.buffer_values = int(buffer_values)
        self.dtype = np.dtype(DTYPES[dtype])
        self.cat = np.ascontiguousarray(arrays["cat"], dtype=np.int64).reshape(-1, 4)
        self.gauss = np.ascontiguousarray(arrays["gauss"], dtype=np.int64).reshape(-1, 2)
        self.ops = np.ascontiguousarray(arrays["ops"], dtype=np.int64).reshape(-1, kernels.OPS_COLUMNS)
        self.pindex = np.ascontiguousarray(arrays["pindex"], dtype=np.int64)
        self.sindex = np.ascontiguousarray(arrays["sindex"], dtype=np.int64)
        self.sptr = np.ascontiguousarray(arrays["sptr"], dtype=np.int64)
        self.scol = np.ascontiguousarray(arrays["scol"], dtype=np.int64)
        self.slive = _live_inputs(self.ops, self.sindex, self.sptr, self.scol)
        sums = self.ops[self.ops[:, kernels.KIND] != kernels.PRODUCT]
        self.widest = int(max(1, sums[:, kernels.C].max(initial=1)))
        self.most = int(max(1, sums[:, kernels.B].max(initial=1)))
        self.num_folds = int(sums[:, kernels.A].sum())
        self.corder, self.crows, self.crow = _rows_of(self.cat)
        # log_prob and flows run the units the root reaches (pruning leaves others); MAP and sampling all
        self.live = live_masks(self.ops, self.pindex, self.sindex, self.sptr, self.scol, self.slive, self.cat,
                               self.gauss, self.corder, self.crows, self.root, self.num_slots)
        self.whole = self.live if self.live.everything else whole_masks(self.ops, self.sindex, self.slive, self.cat,
                                                                        self.corder, self.crows, self.num_slots)
        self.skip = True  # whether log_prob and flows skip dead units (False: the same results, slower)
        # the entries of counts input_counts never writes (lp's padding, dead units' rows), by `skip`
        self._unwritten = {skip: _uncovered(self.cat[k.corder], len(arrays["lp"]))
                           for skip, k in ((True, self.live), (False, self.whole))}
        self.discrete = np.array([c is not None for c in self.cardinalities])
        self.limits = np.array([c if c is not None else 0 for c in self.cardinalities])
        self._buffers: dict[str, np.ndarray] = {}
        # the kernels' `blas` argument: folds of this many edges or more go through gemm (-1: none)
        self.blas = BLAS_EDGES if kernels.BLAS else -1
        self.groups = _scale_groups(self.cat, self.gauss, self.ops, self.pindex, self.sindex, self.num_slots)
        # whether log_prob and flows run scaled.py's kernels (kernels.py's, all in logs, otherwise)
        self.scaled = int(self.cat[:, 3].sum()) <= SCALED_TABLE_VALUES
        self.set_arrays({k: arrays[k] for k in PARAMETERS})

    @_serialised
    def set_arrays(self, params: dict[str, np.ndarray]) -> None:
        """New parameter arrays (``PARAMETERS``, same layout as at construction)."""
        self.lp = np.ascontiguousarray(params["lp"], dtype=self.dtype)
        # Gaussian parameters stay float64: x - mean must not cancel (docs/numerics.md)
        self.gmean = np.ascontiguousarray(params["gmean"], dtype=np.float64)
        self.gstd = np.ascontiguousarray(params["gstd"], dtype=np.float64)
        self.weights = np.ascontiguousarray(params["weights"], dtype=self.dtype)
        with np.errstate(divide="ignore"):
            self.logw = np.log(self.weights)
        self._lp_extremes()
        self._scaled_tables()

    @_serialised
    def set_slices(self, parts: dict[str, list[tuple[int, np.ndarray]]]) -> None:
        """Replace parts of the parameter arrays (``PARAMETERS``) in place: (offset, values) pieces."""
        for name, pieces in parts.items():
            array = getattr(self, name)
            for start, values in pieces:
                array[start:start + len(values)] = values
                if name == "weights":
                    with np.errstate(divide="ignore"):
                        self.logw[start:start + len(values)] = np.log(array[start:start + len(values)])
        if parts.get("lp"):
            self._lp_extremes()
            self._scaled_tables()

    def _lp_extremes(self) -> None:
        """lpmax and lpbest: each categorical unit's largest log-probability and its category."""
        first = self.cat[self.corder[self.crows[:-1]]]  # one unit of each row of lp
        rowmax = np.empty(len(first), dtype=self.dtype)
        rowbest = np.empty(len(first), dtype=np.int64)
        for size in np.unique(first[:, 3]):  # rows of one cardinality form a (rows, size) grid
            rows = np.flatnonzero(first[:, 3] == size)
            values = self.lp[first[rows, 2][:, None] + np.arange(size)]
            rowmax[rows] = values.max(axis=1)
            rowbest[rows] = values.argmax(axis=1)
        self.lpmax, self.lpbest = rowmax[self.crow], rowbest[self.crow]

    def _scaled_tables(self) -> None:
        """scaled.py's input tables from lp: gmax, each input group's largest log-probability of
        each value (-inf where all its units give the value probability 0), and ltab, each
        categorical unit's exp(lp - gmax) over its values (0 where lp is -inf)."""
        if not self.scaled:
            return
        g = self.groups
        cards = self.cat[:, 3]
        self.ltab = np.zeros(int(cards.sum()), dtype=self.dtype)
        self.gmax = np.full(g.gmax_size, -np.inf)
        for size in np.unique(cards):
            units = np.flatnonzero(cards == size)  # a group's units: one cardinality, a run of `cat`
            rows = self.lp[self.cat[units, 2][:, None] + np.arange(size)].astype(np.float64)
            ids = g.cat_group[units]
            first = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            top = np.maximum.reduceat(rows, first, axis=0)
            self.gmax[g.gmax_off[ids[first]][:, None] + np.arange(size)] = top
            top = np.repeat(top, np.diff(np.r_[first, len(units)]), axis=0)
            with np.errstate(invalid="ignore"):
                table = np.exp(rows - top)
            self.ltab[g.ltab_off[units][:, None] + np.arange(size)] = np.nan_to_num(table, nan=0.0)

    # ---- evidence ------------------------------------------------------------------------
    def _evidence(self, x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(index, real, rows, n): variable-major (V, tiles * T) category indices (-1 missing) and
        real values (NaN missing), padded with missing columns; the rows as float64 (n, V)."""
        rows = _rows(x)
        if rows.ndim != 2 or rows.shape[1] != len(self.variables):
            raise ValueError(f"data must have shape (batch, {len(self.variables)}), got {np.shape(x)}")
        rows = np.ascontiguousarray(rows)
        n = len(rows)
        tile = self._tile_for(n)
        width = max(1, math.ceil(n / tile)) * tile
        index = np.empty((len(self.variables), width), dtype=np.int64)
        real = np.empty((len(self.variables), width if len(self.gauss) else 0))  # only gaussian units read it
        bad = kernels.evidence(rows, self.discrete, self.limits, index, real)
        if bad >= 0:
            r, v = divmod(int(bad), len(self.variables))
            raise ValueError(f"value {rows[r, v]:g} of variable '{self.variables[v]}' is not one of "
                             f"0..{self.limits[v] - 1} (missing values are -1)")
        return index, real, rows, n

    def _buffer(self, name: str, columns: int, dtype: np.dtype, zeros: bool = False,
                rows: int | None = None) -> np.ndarray:
        """A (tiles, rows, T) buffer (rows: the slots unless given) kept between calls (fresh ones
        this size cost page faults): the first tiles of the largest one asked for so far; a new one
        holds zeros if `zeros`."""
        tile = self._tile_for(columns)  # the tile `_evidence` chose: the same for the padded width
        tiles = columns // tile
        rows = self.num_slots if rows is None else rows
        buf = self._buffers.get(name)
        if buf is None or len(buf) < tiles or buf.dtype != dtype or buf.shape[1:] != (rows, tile):
            make = np.zeros if zeros else np.empty
            buf = self._buffers[name] = make((tiles, rows, tile), dtype=dtype)
        return buf[:tiles]

    def _stats(self, name: str, shape: tuple[int, ...], unwritten: np.ndarray | None = None) -> np.ndarray:
        """A float64 array for the kernels' statistics, kept between calls: fresh arrays of this
        size fault a page per 4 KiB inside the kernels' threads. ``flows`` hands these arrays out
        (no copy); one comes back into use only once nothing outside holds it (nor a view of it:
        a view holds its base), else a fresh one (zeros) takes its place. The kernels zero what
        they add to; the entries they never write (`unwritten`) are zeroed here on reuse, as a
        caller may have written to an array before letting it go."""
        array = self._buffers.get(name)
        # references: the dict, `array` and getrefcount's argument (CPython counts them exactly)
        if array is None or array.shape != shape or sys.getrefcount(array) > 3:
            array = self._buffers[name] = np.zeros(shape)
        elif unwritten is not None:
            array[unwritten] = 0.0
        return array

    def _tile_for(self, n: int) -> int:
        """Samples per tile for a batch of n: `tile`, halved (not below MIN_TILE) while the batch
        would fill fewer tiles than there are threads."""
        threads, tile = numba.get_num_threads(), self.tile
        while tile > MIN_TILE and math.ceil(n / tile) < threads:
            tile //= 2
        return tile

    @property
    def _live(self) -> Live:
        """The units log_prob and flows run: the live ones, unless `skip` is off."""
        return self.live if self.skip else self.whole

    def _forward(self, index: np.ndarray, real: np.ndarray, mode: int, whole: bool = False) -> np.ndarray:
        """kernels.forward over the live units (every unit when `whole`: MAP and sampling)."""
        buf = self._buffer("values", index.shape[1], self.dtype)
        k = self.whole if whole else self._live
        kernels.forward(buf, index, real, self.cat, self.lp, self.lpmax, self.gauss, self.gmean, self.gstd,
                        self.ops, self.pindex, self.sindex, self.sptr, self.scol, k.slive, self.weights, self.logw,
                        self.widest, mode, self._chunks(buf), self.blas, k.cunits, k.slots, k.folds)
        return buf

    def _forward_scaled(self, index: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """scaled.py's forward: (values, scales, lost) for `_log_root` and scaled.flows."""
        g, k = self.groups, self._live
        buf = self._buffer("values", index.shape[1], self.dtype)
        scale = self._buffer("scales", index.shape[1], np.dtype(np.float64), rows=g.groups)
        lost = np.zeros(len(buf), dtype=np.uint8)
        scaled.forward(buf, scale, lost, self.root, index, real, self.cat, self.lp, self.ltab, g.ltab_off, g.inputs,
                       self.gmax, self.gauss, g.gauss_group, self.gmean, self.gstd, self.ops, self.pindex,
                       self.sindex, self.sptr, self.scol, k.slive, self.weights, self.logw, g.slot_group,
                       g.direct, g.product_first, g.product_ptr, self.widest, self.most, self._chunks(buf), self.blas,
                       k.cunits, k.slots, k.folds, k.inputs)
        return buf, scale, lost

    def _log_root(self, values: np.ndarray, scale: np.ndarray, lost: np.ndarray, n: int) -> np.ndarray:
        """The root's log-likelihoods from scaled.forward's results (the lost tiles hold logs)."""
        root = values[:, self.root, :].astype(np.float64)
        scaled_tiles = lost == 0
        with np.errstate(divide="ignore"):
            root[scaled_tiles] = np.log(root[scaled_tiles]) + scale[scaled_tiles, self.groups.slot_group[self.root]]
        return root.reshape(-1)[:n]

    @staticmethod
    def _chunks(buf: np.ndarray) -> int:
        """One chunk of tiles per thread (numba's current thread count)."""
        return max(1, min(numba.get_num_threads(), buf.shape[0]))

    def _root(self, buf: np.ndarray, n: int) -> np.ndarray:
        return buf[:, self.root, :].reshape(-1)[:n].astype(np.float64)

    def _pieces(self, n: int) -> list[slice]:
        """Rows of a batch of n in pieces of at most `buffer_values` // slots samples, rounded down to
        whole tiles (at least one tile per thread)."""
        threads = numba.get_num_threads()  # whole tiles for every thread: pieces keep all threads busy
        tiles = max(threads, self.buffer_values // (self.num_slots * self.tile) // threads * threads)
        size = tiles * self.tile
        return [slice(lo, min(lo + size, n)) for lo in range(0, max(n, 1), size)]

    # ---- queries --------------------------------------------------------------------------------
    @_serialised
    def log_prob(self, x: Any) -> np.ndarray:
        """log p(x) per row; missing entries are marginalised."""
        rows = _rows(x)
        parts = []
        for piece in self._pieces(len(rows)):
            index, real, _, n = self._evidence(rows[piece])
            if self.scaled:
                parts.append(self._log_root(*self._forward_scaled(index, real), n))
            else:
                parts.append(self._root(self._forward(index, real, kernels.SUM_MODE), n))
        return np.concatenate(parts)

    @_serialised
    def conditional(self, x: Any, query: Any) -> np.ndarray:
        """log p(x_Q | x_E): Q the query variables (indices, names or a mask), E the other observed
        ones. NaN where p(x_E) = 0: the conditional is undefined there."""
        rows = np.array(x, dtype=np.float64, ndmin=2)
        columns = self._columns(query)
        evidence = rows.copy()
        evidence[:, columns] = np.where(self.discrete[columns], -1.0, np.nan)
        with np.errstate(invalid="ignore"):
            return self.log_prob(rows) - self.log_prob(evidence)

    def _columns(self, query: Any) -> np.ndarray:
        q = np.asarray(query)
        if q.dtype == bool:
            return np.flatnonzero(q)
        if q.dtype.kind in "US":
            names = {name: i for i, name in enumerate(self.variables)}
            return np.array([names[str(name)] for name in q.reshape(-1)], dtype=np.int64)
        return q.reshape(-1).astype(np.int64)

    def _down(self, x: Any, mode: int, seed: int) -> np.ndarray:
        index, real, rows, n = self._evidence(x)
        buf = self._forward(index, real, kernels.MAX_MODE if mode == kernels.MAP_DOWN else kernels.SUM_MODE, True)
        active = self._buffer("active", index.shape[1], np.dtype(np.uint8))
        out = rows.copy()
        rng = np.random.default_rng(seed)
        width = index.shape[1]
        if mode == kernels.SAMPLE_DOWN:
            # drawn for the n real samples only, so the samples do not depend on the tile size
            sum_draws = _padded(rng.random((self.num_folds, n)), width)
            var_draws = _padded(rng.random((len(self.variables), n)), width)
            normal_draws = (_padded(rng.standard_normal((len(self.variables), n)), width) if len(self.gauss)
                            else np.zeros((1, 1)))
        else:
            sum_draws = var_draws = normal_draws = np.zeros((1, 1))
        kernels.down(buf, active, n, self.root, index, real, out, self.cat, self.lp, self.lpbest, self.gauss,
                     self.gmean, self.gstd, self.ops, self.pindex, self.sindex, self.sptr, self.scol, self.weights,
                     self.logw, mode,
                     sum_draws, var_draws, normal_draws, self._chunks(buf))
        # evidence of probability zero has no completion: NaN in its missing entries
        impossible = self._root(buf, n) == -np.inf
        missing = np.isnan(rows) | (self.discrete & (rows == -1))
        out[impossible[:, None] & missing] = np.nan
        return out

    @_serialised
    def map(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """Complete missing entries by max-product and backtracking; return (completion, its log p).

        The completion is the exact MPE for deterministic circuits; otherwise it is the
        max-product (Viterbi) approximation. The log-probability is exact either way. Rows whose
        evidence has probability zero get NaN in their missing entries and log p = -inf."""
        completed = self._down(x, kernels.MAP_DOWN, 0)
        return self._typed(completed), self.log_prob(completed)

    @_serialised
    def sample(self, n: int, evidence: Any = None, seed: int = 0) -> np.ndarray:
        """n ancestral samples; with evidence (one row: n samples from it; n rows: one each), from
        p(missing | observed). Where the evidence has probability zero (undefined), the missing
        entries are NaN (-1 in the integer results of a circuit whose variables are all discrete)."""
        if evidence is None:
            rows = np.full((n, len(self.variables)), np.nan)
        else:
            rows = np.array(evidence, dtype=np.float64, ndmin=2)
            if len(rows) not in (1, n):
                raise ValueError(f"evidence has {len(rows)} rows, but n = {n}: give one row (n samples from it) "
                                 "or n rows (one sample each)")
            rows = np.repeat(rows, n, axis=0) if len(rows) == 1 else rows
        return self._typed(self._down(rows, kernels.SAMPLE_DOWN, seed))

    def _typed(self, out: np.ndarray) -> np.ndarray:
        """Integers (int64; -1 where undefined) when every variable is discrete."""
        if self.discrete.all():
            return np.nan_to_num(out, nan=-1.0).astype(np.int64)
        return out

    @_serialised
    def flows(self, x: Any) -> dict[str, Any]:
        """Expected sufficient statistics, summed over the batch, laid out like the parameter
        arrays: ``weights`` (like weights), ``counts`` (like lp; a missing value counts
        probs * flow), ``gaussian`` (G, 3): flow, flow * (x - mean), flow * (x - mean)^2 (centred on
        the unit's mean; a missing value counts in expectation: 0 and std^2); and
        ``log_likelihood``, the batch's summed log-likelihood."""
        data = _rows(x)
        # weight flows and counts go into arrays kept between calls (`_stats`), zeroed by the
        # kernels on the first piece (`clear`); counts and the summed weight flows are handed out
        wflow = self._stats("wflow", (numba.get_num_threads(), len(self.weights)))
        counts = self._stats("counts", (len(self.lp),), self._unwritten[self.skip])
        missing = np.zeros(len(self.crows) - 1)
        g = np.zeros((len(self.gauss), 4))
        log_likelihood = 0.0
        used = 0  # rows of wflow the kernels have written
        for i, piece in enumerate(self._pieces(len(data))):  # the kernels add each piece's flows to the same arrays
            index, real, _, n = self._evidence(data[piece])
            flow = self._buffer("flows", index.shape[1], self.dtype, zeros=True)  # the kernels keep it so
            if self.scaled:
                buf, scale, lost = self._forward_scaled(index, real)
                log_likelihood += float(self._log_root(buf, scale, lost, n).sum())
            else:  # every tile in logs: scaled.flows runs the log kernels on each
                buf = self._forward(index, real, kernels.SUM_MODE)
                scale, lost = np.zeros((len(buf), 1, 1)), np.ones(len(buf), dtype=np.uint8)
                log_likelihood += float(self._root(buf, n).sum())
            chunks = self._chunks(buf)
            wflow[used:chunks] = 0.0  # rows a later piece adds to but the first did not clear
            k = self._live
            scaled.flows(buf, scale, lost, flow, n, self.root, self.ops, self.pindex, self.sindex, self.sptr,
                         self.scol, k.slive, self.weights, self.logw, self.groups.slot_group, self.groups.direct,
                         self.widest, self.most, wflow[:chunks], self.blas, i == 0, k.slots, k.folds, k.inputs)
            used = max(used, chunks)
            kernels.input_counts(flow, index, real, self.cat, k.corder, k.crows, self.gauss, self.gmean,
                                 counts, missing, g, i == 0)
        weights = np.sum(wflow[:used], axis=0, out=self._stats("weights", (len(self.weights),)))
        if missing.any():  # a missing value counts in expectation: probs * flow (one row of lp each)
            first = self.cat[self.corder[self.crows[:-1]]]
            for size in np.unique(first[:, 3]):
                hit = np.flatnonzero((first[:, 3] == size) & (missing != 0))
                at = first[hit, 2][:, None] + np.arange(size)
                counts[at] += missing[hit, None] * np.exp(self.lp[at].astype(np.float64))
        gaussian = np.stack([g[:, 0] + g[:, 3], g[:, 1], g[:, 2] + g[:, 3] * self.gstd**2], axis=1)
        return {"log_likelihood": log_likelihood, "weights": weights,
                "counts": counts, "gaussian": gaussian}


class ScaleGroups(NamedTuple):
    """The groups of slots that share a log scale in scaled.py (see there), as flat arrays."""
    groups: int  # how many, the constant slots' group 0 included
    slot_group: np.ndarray  # (slots,) each slot's group
    cat_group: np.ndarray  # (U,) each categorical unit's group (its variable's units: a run of `cat`)
    inputs: np.ndarray  # (I, 3) per input group: its group, variable, offset of its row of gmax
    gmax_size: int  # entries of gmax: the input groups' cardinalities added up
    gmax_off: np.ndarray  # (groups,) where a group's row of gmax starts (input groups only)
    ltab_off: np.ndarray  # (U,) where each categorical unit's row of ltab starts
    gauss_group: np.ndarray  # (G,) each gaussian unit's group (one each)
    product_first: np.ndarray  # the product groups' first units (in their layer), layer by layer
    product_ptr: np.ndarray  # (L + 1,) layer l's product groups: product_first[ptr[l]:ptr[l + 1]]
    direct: np.ndarray  # (folds,) uint8: 1 where a sum fold's inputs are consecutive slots of one group


def _scale_groups(cat: np.ndarray, gauss: np.ndarray, ops: np.ndarray, pindex: np.ndarray, sindex: np.ndarray,
                  num_slots: int) -> ScaleGroups:
    """Group the slots for scaled.py: the constants; each variable's run of categorical units;
    each gaussian unit; runs of product units whose children lie in the same groups; sum folds."""
    slot_group = np.zeros(num_slots, dtype=np.int64)
    var, card = cat[:, 1], cat[:, 3]
    new = np.r_[True, (var[1:] != var[:-1]) | (card[1:] != card[:-1])] if len(cat) else np.zeros(0, dtype=bool)
    cat_group = np.cumsum(new).astype(np.int64)  # groups 1, 2, ...
    count = 1 + int(new.sum())
    slot_group[cat[:, 0]] = cat_group
    first = np.flatnonzero(new)
    sizes = card[first]
    gmax_off = np.zeros(count, dtype=np.int64)
    gmax_off[cat_group[first]] = np.cumsum(sizes) - sizes
    inputs = np.stack([cat_group[first], var[first], gmax_off[cat_group[first]]], axis=1).reshape(-1, 3)
    ltab_off = (np.cumsum(card) - card).astype(np.int64)
    gauss_group = np.arange(count, count + len(gauss), dtype=np.int64)
    slot_group[gauss[:, 0]] = gauss_group
    count += len(gauss)
    product_first: list[np.ndarray] = []
    product_ptr = np.zeros(len(ops) + 1, dtype=np.int64)
    for layer, op in enumerate(ops):
        start = int(op[kernels.START])
        if op[kernels.KIND] == kernels.PRODUCT:
            units, fan_in, off = int(op[kernels.A]), int(op[kernels.B]), int(op[kernels.INDEX])
            kids = slot_group[pindex[off:off + units * fan_in]].reshape(units, fan_in)
            runs = np.r_[True, (kids[1:] != kids[:-1]).any(axis=1)]
            slot_group[start:start + units] = count + np.cumsum(runs) - 1
            count += int(runs.sum())
            product_first.append(np.flatnonzero(runs))
            product_ptr[layer + 1] = product_ptr[layer] + int(runs.sum())
        else:
            folds, units = int(op[kernels.A]), int(op[kernels.B])
            slot_group[start:start + folds * units] = count + np.repeat(np.arange(folds), units)
            count += folds
            product_ptr[layer + 1] = product_ptr[layer]
    sums = ops[ops[:, kernels.KIND] != kernels.PRODUCT]
    direct = np.zeros(int(sums[:, kernels.A].sum()), dtype=np.uint8)
    for op in sums:
        folds, width, off, fold = (int(op[k]) for k in (kernels.A, kernels.C, kernels.INDEX, kernels.FOLD))
        slots = sindex[off:off + folds * width].reshape(folds, width)
        groups = slot_group[slots]
        direct[fold:fold + folds] = (np.diff(slots, axis=1) == 1).all(axis=1) & (groups == groups[:, :1]).all(axis=1)
    return ScaleGroups(count, slot_group, cat_group, inputs, int(sizes.sum()), gmax_off, ltab_off, gauss_group,
                       np.concatenate(product_first).astype(np.int64) if product_first else np.zeros(0, np.int64),
                       product_ptr, direct)


def _rows(x: Any) -> np.ndarray:
    """Data as float64 rows (no copy when it is already); one row may come as a 1-D array."""
    rows = np.asarray(x, dtype=np.float64)
    return rows.reshape(1, -1) if rows.ndim == 1 else rows


def _live_inputs(ops: np.ndarray, sindex: np.ndarray, sptr: np.ndarray, scol: np.ndarray) -> np.ndarray:
    """Like sindex, 1 for each input of a sparse sum's fold that a unit of two or more edges reads,
    else 0: the kernels take exp(x - shift) of those only (a unit of one edge adds its log weight
    to x; an input no unit reads costs nothing)."""
    live = np.zeros(len(sindex), dtype=np.uint8)
    for op in ops[ops[:, kernels.KIND] == kernels.SPARSE]:
        units, inputs, rows = int(op[kernels.B]), int(op[kernels.C]), int(op[kernels.ROWS])
        indptr = sptr[rows:rows + int(op[kernels.A]) * units + 1]
        fan_in = np.diff(indptr)
        unit = np.repeat(np.arange(len(fan_in)), fan_in)  # each edge's row f * units + m
        wide = fan_in[unit] >= 2
        cols = scol[indptr[0]:indptr[-1]]
        live[op[kernels.INDEX] + (unit[wide] // units) * inputs + cols[wide]] = 1
    return live


def _uncovered(cat: np.ndarray, size: int) -> np.ndarray:
    """The entries of lp (of `size`) that no row of the categorical units `cat` covers."""
    edges = np.zeros(size + 1, dtype=np.int64)
    np.add.at(edges, cat[:, 2], 1)
    np.add.at(edges, cat[:, 2] + cat[:, 3], -1)
    return np.flatnonzero(np.cumsum(edges[:-1]) == 0)


def _padded(draws: np.ndarray, width: int) -> np.ndarray:
    """Draws (rows, n) padded with zeros to (rows, width): the padding columns of the last tile."""
    out = np.zeros((len(draws), width))
    out[:, :draws.shape[1]] = draws
    return out


def _rows_of(cat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows of lp that categorical units read (tied units read one row): (order, starts,
    row): the units sorted by row, where each row's units start in that order (R + 1,), and
    each unit's row (U,)."""
    order = np.argsort(cat[:, 2], kind="stable")
    offsets = cat[order, 2]
    new = np.ones(len(order), dtype=bool)
    new[1:] = offsets[1:] != offsets[:-1]
    starts = np.append(np.flatnonzero(new), len(order)).astype(np.int64)
    row = np.empty(len(order), dtype=np.int64)
    row[order] = np.cumsum(new) - 1
    return order.astype(np.int64), starts, row
