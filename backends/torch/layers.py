"""Lowering rules: one class per plan layer kind, each with the three passes
every query is built from: forward (sum- or max-product), flows (top-down
expected counts) and down (top-down choice of active units for MAP and
sampling). No Python loop over nodes: each layer is a few tensor ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .layout import InputLayer, ProductLayer, SumLayer, contiguous_start, same_pattern
from .numerics import underflow_guard
from .sparse import SparseEdges, runs_sparse

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
MAX_CHUNK_ELEMENTS = 1 << 24  # bounds (F, M, C, batch) temporaries of max-product sums
# units per sum layer and pass that a sync-free rule recomputes exactly after underflow (each costs
# one logsumexp over the layer's inputs); a pass with more is run again with the exact, syncing rules
REPAIR_CAPACITY = 1024


@dataclass
class Batch:
    """Evidence on the device, variable-major: category indices (missing -> 0), real values
    (float64 whatever the model's dtype), missing mask; each (V, B)."""

    index: torch.Tensor
    real: torch.Tensor
    missing: torch.Tensor


# Buffers are slot-major, (slots, batch): gathering a slot copies one contiguous row.


class Scratch:
    """Temporaries kept between layers and calls, one flat buffer per name grown as needed: on
    the CPU a fresh tensor of hundreds of MB costs more in page faults than the op that fills it.
    A name's contents live until the next `get` of that name."""

    def __init__(self) -> None:
        self._flat: dict[str, torch.Tensor] = {}
        self._flags: dict[torch.device, torch.Tensor] = {}

    def overflow(self, device: torch.device) -> torch.Tensor:
        """A bool on `device` that sync-free rules set when a pass held more underflowed units than
        they repair (:data:`REPAIR_CAPACITY`); the model reads it once after the pass."""
        flag = self._flags.get(device)
        if flag is None:
            flag = self._flags[device] = torch.zeros((), dtype=torch.bool, device=device)
        return flag

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor,
            dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = like.dtype if dtype is None else dtype
        size = math.prod(shape)
        flat = self._flat.get(name)
        if flat is None or flat.numel() < size or flat.dtype != dtype or flat.device != like.device:
            flat = self._flat[name] = torch.empty(size, dtype=dtype, device=like.device)
        return flat[:size].view(shape)


class InputRule:
    """Leaves of one family and width. Parameters are one table with a row per unit of each
    parameter group; tied leaves read the same rows. Without ties the table is unit by unit
    (one gather over a (nodes, width, K) grid); with them, the nodes that share a table are
    gathered as extra batch columns of it (:class:`_Readers`), so no table is copied per node."""

    def __init__(self, layer: InputLayer, device: torch.device, dtype: torch.dtype, scratch: Scratch | None = None):
        self.layer = layer
        self.scratch = scratch if scratch is not None else Scratch()
        self.start, self.stop = layer.start, layer.stop
        self.var = torch.as_tensor(layer.var, device=device)
        # Gaussian parameters stay float64: x - mean must not cancel (docs/numerics.md)
        precise = torch.float64 if layer.family == "gaussian" else dtype
        self.params = {k: torch.as_tensor(v, device=device, dtype=precise) for k, v in layer.params.items()}
        # every node of the layer has the same width (see the plan), so units form a grid
        self.width = layer.width
        self.group_var = self.var[:: self.width].contiguous()  # (N,): one variable per node
        self.rows = torch.as_tensor(layer.rows, device=device)  # (U,) table row of each unit
        self.readers = _readers(layer, device) if len(layer.tables) < len(layer.groups) else None
        if layer.family == "categorical":
            lp = self.params["log_probs"]
            self.grid = lp.view(-1, self.width, lp.shape[1])  # (tables, width, K)
        self._per_unit()

    def _per_unit(self) -> None:
        """Gaussian parameters unit by unit (U,): a view of the table without ties."""
        if self.layer.family == "gaussian":
            self.mean, self.std = (self.params[k] if self.readers is None else self.params[k][self.rows]
                                   for k in ("mean", "std"))

    def load(self, layer: InputLayer) -> None:
        """Take new parameter values (same layout), in place."""
        for k, v in layer.params.items():
            self.params[k].copy_(torch.as_tensor(v))
        self._per_unit()

    def _unit_missing(self, batch: Batch) -> torch.Tensor | None:
        """(U, B) missing mask of the units, or None when nothing they read is missing."""
        missing = batch.missing[self.group_var]  # (N, B): one variable per node
        return missing.repeat_interleave(self.width, dim=0) if bool(missing.any()) else None

    def values(self, batch: Batch, mode: str, out: torch.Tensor) -> torch.Tensor:
        """(U, B) log-values of the layer's units, written into `out`."""
        if self.layer.family == "categorical":
            lp = self.params["log_probs"]  # (R, K)
            if self.readers is None:
                index = batch.index[self.group_var][:, None, :].expand(-1, self.width, -1)  # (N, width, B)
                torch.gather(self.grid, 2, index, out=out.view(-1, self.width, out.shape[1]))
            else:
                for readers in self.readers:
                    readers.write(self.grid, batch, out, self.scratch)
            free = lp.amax(dim=1) if mode == "max" else torch.zeros_like(lp[:, 0])
            if self.readers is not None:
                free = free[self.rows]
            observed = out
        else:
            mean, std = self.mean[:, None], self.std[:, None]
            z = (batch.real[self.var] - mean) / std
            observed = -0.5 * z * z - torch.log(std) - LOG_SQRT_2PI
            free = (-torch.log(std) - LOG_SQRT_2PI)[:, 0] if mode == "max" else torch.zeros_like(mean[:, 0])
        unit_missing = self._unit_missing(batch)
        if unit_missing is not None:
            observed = torch.where(unit_missing, free[:, None].expand_as(observed), observed)
        if observed.data_ptr() != out.data_ptr():
            out.copy_(observed)
        return out

    def forward(self, buf: torch.Tensor, batch: Batch, mode: str) -> None:
        self.values(batch, mode, out=buf[self.start:self.stop])

    def flows(self, buf: torch.Tensor, flow: torch.Tensor, batch: Batch,
              expected_missing: bool = True) -> dict[str, torch.Tensor]:
        """Statistics per table row (tied leaves' summed): categorical counts (R, K); gaussian
        n, dx, dxx (R,). A missing value counts in expectation (EM's statistics), or, without
        `expected_missing`, not at all (the gradient: its leaf's value is a constant 0)."""
        f = flow[self.start:self.stop]  # (U, B)
        unit_missing = self._unit_missing(batch)
        if self.layer.family == "categorical":
            lp = self.params["log_probs"]
            observed = f if unit_missing is None else f * ~unit_missing  # missing entries add to no category
            counts = torch.zeros(self.grid.shape, dtype=f.dtype, device=f.device)  # (tables, width, K)
            if self.readers is None:
                index = batch.index[self.group_var][:, None, :].expand(-1, self.width, -1)  # (N, width, B)
                counts.scatter_add_(2, index, observed.view(-1, self.width, f.shape[1]))
            else:
                for readers in self.readers:
                    readers.count(counts, observed, batch, self.scratch)
            counts = counts.view(lp.shape)
            if unit_missing is not None and expected_missing:  # a missing value counts in expectation
                counts += self._to_rows((f * unit_missing).sum(dim=1))[:, None] * torch.exp(lp)
            return {"counts": counts}
        # centred on the current mean, in float64: E[x^2] - mean^2 would cancel (docs/numerics.md)
        mean, std = self.mean[:, None], self.std[:, None]
        f = f.to(torch.float64)
        missing = batch.missing[self.var]
        d = torch.where(missing, torch.zeros_like(f), batch.real[self.var] - mean)
        dd = torch.where(missing, (std * std).expand_as(f), d * d)  # a missing value: in expectation
        if not expected_missing:
            f = f.masked_fill(missing, 0.0)
        return {"n": self._to_rows(f.sum(dim=1)), "dx": self._to_rows((f * d).sum(dim=1)),
                "dxx": self._to_rows((f * dd).sum(dim=1))}

    def _to_rows(self, per_unit: torch.Tensor) -> torch.Tensor:
        """Per-unit sums (U,) added up per table row (R,)."""
        if self.readers is None:
            return per_unit
        rows = len(self.layer.tables) * self.width
        return torch.zeros(rows, dtype=per_unit.dtype, device=per_unit.device).index_add_(0, self.rows, per_unit)

    def down(self, active: torch.Tensor, buf: torch.Tensor, batch: Batch, out: torch.Tensor, mode: str,
             gen: torch.Generator | None) -> None:
        """Write a value for each missing variable whose input unit is active (out: (B, V))."""
        pick = (active[self.start:self.stop] > 0) & batch.missing[self.var]
        units, rows = pick.nonzero(as_tuple=True)
        if rows.numel() == 0:
            return
        if self.layer.family == "categorical":
            lp = self.params["log_probs"][self.rows[units]]  # (P, K)
            if mode == "sample":
                lp = lp + _gumbel(lp.shape, lp, gen)
            values = lp.argmax(dim=1).to(out.dtype)
        else:
            values = self.mean[units]
            if mode == "sample":
                noise = torch.randn(values.shape, generator=gen, device=values.device, dtype=values.dtype)
                values = values + self.std[units] * noise
        out[rows, self.var[units]] = values.to(out.dtype)


@dataclass
class _Readers:
    """Tables read by the same number P of nodes. Where those nodes lie side by side, table by
    table (as the plan orders the leaves of tied patch circuits), one gather from the tables
    broadcast over the readers writes them in place; else they are gathered with the readers'
    columns side by side as (T, width, P * B), then put at the readers' units."""

    tables: torch.Tensor | None  # (T,) table indices; None: every table, in order
    var: torch.Tensor  # (T, P) variable of each reading node
    units: torch.Tensor  # (T * width * P,) the layer's unit of (table, unit, reader), in that order
    first: int | None  # the first reading node when node (t, p) is first + t * P + p, else None

    def _index(self, batch: Batch, width: int) -> torch.Tensor:
        return batch.index[self.var.reshape(-1)].view(len(self.var), 1, -1).expand(-1, width, -1)  # (T, width, P * B)

    def write(self, grid: torch.Tensor, batch: Batch, out: torch.Tensor, scratch: Scratch) -> None:
        """Write the log-values of the readers' units into the layer's `out` (U, B)."""
        mine = grid if self.tables is None else grid[self.tables]
        (t, p), width, b = self.var.shape, grid.shape[1], out.shape[1]
        if self.first is not None:
            index = batch.index[self.var.reshape(-1)].view(t, p, 1, b).expand(-1, -1, width, -1)
            rows = out[self.first * width:(self.first + t * p) * width].view(t, p, width, b)
            torch.gather(mine.unsqueeze(1).expand(-1, p, -1, -1), 3, index, out=rows)
            return
        index = self._index(batch, width)
        values = torch.gather(mine, 2, index, out=scratch.get("readers", tuple(index.shape), grid))
        out.index_copy_(0, self.units, values.view(-1, b))

    def count(self, counts: torch.Tensor, observed: torch.Tensor, batch: Batch, scratch: Scratch) -> None:
        """Add the readers' observed flows (U, B) to their tables' counts (tables, width, K)."""
        t, width, k = len(self.var), counts.shape[1], counts.shape[2]
        out = scratch.get("readers", (len(self.units), observed.shape[1]), observed)
        flows = torch.index_select(observed, 0, self.units, out=out).view(t, width, -1)
        index = self._index(batch, width)
        if self.tables is None:
            counts.scatter_add_(2, index, flows)
        else:
            mine = torch.zeros((t, width, k), dtype=counts.dtype, device=counts.device)
            counts.index_add_(0, self.tables, mine.scatter_add_(2, index, flows))


def _readers(layer: InputLayer, device: torch.device) -> list[_Readers]:
    """The layer's tables bucketed by how many nodes read them."""
    table_of = {g: i for i, g in enumerate(layer.tables)}
    readers: list[list[int]] = [[] for _ in layer.tables]
    for node, group in enumerate(layer.groups):
        readers[table_of[group]].append(node)
    width = layer.width
    out = []
    for count in sorted({len(r) for r in readers}):
        tables = [i for i, r in enumerate(readers) if len(r) == count]
        nodes = np.array([readers[i] for i in tables], dtype=np.int64)  # (T, P)
        units = nodes[:, None, :] * width + np.arange(width)[None, :, None]  # (T, width, P)
        every = tables == list(range(len(layer.tables)))
        side_by_side = np.array_equal(nodes.reshape(-1), nodes[0, 0] + np.arange(nodes.size))
        out.append(_Readers(None if every else torch.as_tensor(tables, device=device),
                            torch.as_tensor(layer.var[nodes * width], device=device),
                            torch.as_tensor(units.reshape(-1), device=device),
                            int(nodes[0, 0]) if side_by_side else None))
    return out


class ProductRule:
    def __init__(self, layer: ProductLayer, device: torch.device, dtype: torch.dtype, scratch: Scratch | None = None):
        self.start, self.stop = layer.start, layer.stop
        self.columns = [_Gather(layer.index[:, k], device) for k in range(layer.index.shape[1])]
        self.fan_in = layer.index.shape[1]

    def forward(self, buf: torch.Tensor, batch: Batch, mode: str) -> None:
        out = buf[self.start:self.stop]
        columns = [c.read(buf) for c in self.columns]
        if len(columns) == 1:
            out.copy_(columns[0])
            return
        torch.add(columns[0], columns[1], out=out)
        for column in columns[2:]:
            out.add_(column)

    def load(self, layer: ProductLayer) -> None:
        """Products have no parameters."""

    def _spread(self, target: torch.Tensor, parent: torch.Tensor) -> None:
        """Add each unit's `parent` row to every child it reads, column by column."""
        for column in self.columns:
            column.add_to(target, parent)

    def flows(self, buf: torch.Tensor, flow: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        self._spread(flow, flow[self.start:self.stop])
        return {}

    def down(self, active: torch.Tensor, buf: torch.Tensor, batch: Batch, out: torch.Tensor, mode: str,
             gen: torch.Generator | None) -> None:
        self._spread(active, active[self.start:self.stop])


class SumRule:
    """A fold of sums: one batched matrix product, or, for a layer the plan marks sparse (and
    :func:`.sparse.runs_sparse` takes so), one sparse product over its kept edges."""

    def __init__(self, layer: SumLayer, device: torch.device, dtype: torch.dtype, scratch: Scratch | None = None):
        self.scratch = scratch if scratch is not None else Scratch()
        self._setup(layer, device, dtype)

    def _setup(self, layer: SumLayer, device: torch.device, dtype: torch.dtype) -> None:
        self.layer = layer
        self.start, self.stop = layer.start, layer.stop
        self.index = torch.as_tensor(layer.index, device=device)
        self.flat = self.index.reshape(-1)
        self.gather = _Gather(layer.index, device)
        self.weights = torch.as_tensor(layer.weights, device=device, dtype=dtype)  # (F, M, C)
        self.log_weights = torch.log(self.weights)
        self.fold, self.units, self.inputs = layer.shape
        self.guard = underflow_guard(dtype)
        self.log_guard = math.log(self.guard)
        # on a GPU, reading "did any unit underflow?" back to the host stalls the pass at every
        # layer: there the repair runs on a fixed number of units, chosen on the device
        self.sync_free = device.type != "cpu"
        self.edges = SparseEdges(layer, device) if runs_sparse(layer, device) else None
        self.refresh()

    def load(self, layer: SumLayer) -> None:
        """Take new weights (same layout), in place; new zeros or non-zeros that change the plan's
        sparse edges rebuild the rule."""
        if not same_pattern(self.layer, layer):
            self._setup(layer, self.weights.device, self.weights.dtype)
            return
        self.layer = layer
        self.weights.copy_(torch.as_tensor(layer.weights))
        torch.log(self.weights, out=self.log_weights)
        self.refresh()

    def refresh(self) -> None:
        """Derived state after `weights` and `log_weights` changed in place (the dead inputs, the
        sparse edges' values)."""
        self._dead()
        if self.edges is not None:
            self.edges.load(self.weights, self.log_weights)

    def _dead(self) -> None:
        """Inputs with weight 0 in every unit of their fold (F, C, 1): they never set a shift."""
        dead = (self.weights == 0).all(dim=1)[..., None]
        self.dead = dead if bool(dead.any()) else None

    def _inputs(self, buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (F, C, B) (a view of `buf` where possible: do not write) and the shift of each
        column (F, 1, B): the largest input with a non-zero weight in the fold, finite."""
        x = self.gather.read(buf, self.scratch).view(self.fold, self.inputs, -1)
        live = x if self.dead is None else x.masked_fill(self.dead, -torch.inf)
        m = live.amax(dim=1, keepdim=True).clamp_min_(torch.finfo(x.dtype).min)  # all -inf: stays -inf, no NaN
        return x, m

    def _shifted(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """exp(x - m), at most 1 (an input of a dead column may lie above the shift), in scratch."""
        t = torch.sub(x, m, out=self.scratch.get("shifted", tuple(x.shape), x))
        return (t.clamp_max_(0.0) if self.dead is not None else t).exp_()

    def forward(self, buf: torch.Tensor, batch: Batch, mode: str) -> None:
        out = buf[self.start:self.stop].view(self.fold, self.units, -1)
        if mode == "max" and self.edges is not None:
            x = self.gather.read(buf, self.scratch)
            self.edges.max_product(x, out.view(self.fold * self.units, -1))
            return
        if mode == "max":
            for lo, hi in self._chunks(buf.shape[1]):
                x = buf[:, lo:hi].index_select(0, self.flat).view(self.fold, 1, self.inputs, -1)
                out[:, :, lo:hi] = (self.log_weights[..., None] + x).amax(dim=2)
            return
        x, m = self._inputs(buf)
        e = self._shifted(x, m)
        if self.edges is not None:
            self.edges.mm(e.view(self.fold * self.inputs, -1), out.view(self.fold * self.units, -1))
        else:
            torch.bmm(self.weights, e, out=out)  # log(W @ exp(x - m)) + m
        if self.sync_free:
            lost_mask = torch.lt(out, self.guard, out=self.scratch.get("lost", tuple(out.shape), out, torch.bool))
            out.log_().add_(m)
            self._repair(out, x, lost_mask)
            return
        lost = (out < self.guard).nonzero(as_tuple=True) if bool(out.amin() < self.guard) else None
        out.log_().add_(m)
        if lost is not None:  # underflow may have taken these sums' digits
            out[lost] = self._exact(x, *lost)

    def _lost_units(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """Without a host sync: flat positions of up to REPAIR_CAPACITY set entries of `mask`
        (F, M, B), padded with the first of them (position 0 when none), which of them are found
        rather than padding, and (fold, unit, column) of each. More set entries than that raise
        the scratch's overflow flag."""
        flat = mask.view(-1)
        found = torch.nonzero_static(flat, size=REPAIR_CAPACITY, fill_value=-1).view(-1)
        at = torch.where(found >= 0, found, found[0].clamp_min(0))
        self.scratch.overflow(mask.device).logical_or_(flat.sum() > REPAIR_CAPACITY)
        b = mask.shape[2]
        return at, found >= 0, (at // (self.units * b), at // b % self.units, at % b)

    def _repair(self, out: torch.Tensor, x: torch.Tensor, lost_mask: torch.Tensor) -> None:
        """The sync-free form of forward's repair: every underflowed unit (up to the capacity)
        recomputed exactly. Padding repeats the first lost unit (writing its same exact value) or,
        when none is lost, position 0 (writing back the value it holds)."""
        at, _, where = self._lost_units(lost_mask)
        flat = out.view(-1)
        flat[at] = torch.where(lost_mask.view(-1)[at], self._exact(x, *where), flat[at])

    def _exact(self, x: torch.Tensor, f: torch.Tensor, unit: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """log sum_c w_c exp(x_c) of the units (f, unit) at batch columns col, each shifted by its
        own largest weighted term (torch.logsumexp), in pieces that bound the (P, C) temporaries."""
        step = max(1, MAX_CHUNK_ELEMENTS // self.inputs)
        parts = [torch.logsumexp(self.log_weights[f[i:i + step], unit[i:i + step]]
                                 + x[f[i:i + step], :, col[i:i + step]], dim=1)
                 for i in range(0, f.numel(), step)]
        return torch.cat(parts)

    def _chunks(self, b: int) -> list[tuple[int, int]]:
        step = max(1, MAX_CHUNK_ELEMENTS // max(1, self.fold * self.units * self.inputs))
        return [(i, min(i + step, b)) for i in range(0, b, step)]

    def flows(self, buf: torch.Tensor, flow: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        x, m = self._inputs(buf)
        value = buf[self.start:self.stop].view(self.fold, self.units, -1)
        f = flow[self.start:self.stop].view(self.fold, self.units, -1)
        # units far below their column's shift (the ones forward recomputed) go edge by edge
        gap = torch.sub(m, value, out=self.scratch.get("ratio", tuple(value.shape), value))
        far = torch.gt(gap, -self.log_guard, out=self.scratch.get("far", tuple(value.shape), value, torch.bool))
        any_far = True if self.sync_free else bool(far.any())  # also every unit of value -inf
        # r: the parent's flow per unit of its value, scaled by exp(m); 0 for the far units
        r = gap.exp_().mul_(f)  # (F, M, B)
        if any_far:
            r.masked_fill_(far, 0.0)
        e = self._shifted(x, m)  # (F, C, B)
        if self.edges is not None:
            b = e.shape[2]
            child = self.edges.mm_t(r.view(-1, b)).view(e.shape).mul_(e)
            weights = self.edges.edge_flows(r.view(-1, b), e.view(-1, b), self.weights)
        else:
            child = torch.bmm(self.weights.transpose(1, 2), r, out=self.scratch.get("child", tuple(e.shape), e)).mul_(e)
            weights = self.weights * torch.bmm(r, e.transpose(1, 2))  # (F, M, C)
        if self.sync_free:  # the same, on a fixed number of units (padding adds flows of 0)
            _, hit, at = self._lost_units(far & torch.isfinite(value) & (f != 0))
            self._exact_flows(x, value, f, at, child, weights, hit)
        elif any_far:  # units far below their column's shift (the ones forward recomputed) go edge by edge
            at = (far & torch.isfinite(value) & (f != 0)).nonzero(as_tuple=True)
            if at[0].numel():
                self._exact_flows(x, value, f, at, child, weights)
        self.gather.add_to(flow, child.view(self.fold * self.inputs, -1))
        return {"weights": weights}

    def _exact_flows(self, x: torch.Tensor, value: torch.Tensor, f: torch.Tensor,
                     at: tuple[torch.Tensor, ...], child: torch.Tensor, weights: torch.Tensor,
                     keep: torch.Tensor | None = None) -> None:
        """Edge flows f_m w_mc exp(x_c - value_m) of the units `at` (fold, unit, column), each at
        most f_m: added to the child flows (F, C, B) and the weight flows (F, M, C); where `keep`
        (P,) is given, the units it marks False add nothing."""
        fold, unit, col = at
        step = max(1, MAX_CHUNK_ELEMENTS // self.inputs)
        for i in range(0, fold.numel(), step):
            fi, ui, ci = fold[i:i + step], unit[i:i + step], col[i:i + step]
            edge = f[fi, ui, ci, None] * torch.exp(self.log_weights[fi, ui] + x[fi, :, ci]
                                                   - value[fi, ui, ci, None])  # (P, C)
            if keep is not None:
                edge = torch.where(keep[i:i + step, None], edge, 0.0)
            inputs = torch.arange(self.inputs, device=edge.device).expand_as(edge)
            child.index_put_((fi[:, None].expand_as(edge), inputs, ci[:, None].expand_as(edge)), edge,
                             accumulate=True)
            weights.index_put_((fi, ui), edge, accumulate=True)

    def down(self, active: torch.Tensor, buf: torch.Tensor, batch: Batch, out: torch.Tensor, mode: str,
             gen: torch.Generator | None) -> None:
        """Activate, for each active sum unit, its best (map) or a drawn (sample) input."""
        a = active[self.start:self.stop].view(self.fold, self.units, -1) > 0
        any_active = a.any(dim=1)  # (F, B): at most one active unit per group in a valid circuit
        unit = a.to(torch.uint8).argmax(dim=1)  # (F, B)
        fold = torch.arange(self.fold, device=buf.device)[:, None].expand_as(unit)
        x = self.gather.read(buf).view(self.fold, self.inputs, -1).transpose(1, 2)  # (F, B, C)
        scores = self.log_weights[fold, unit] + x
        if mode == "sample":
            scores = scores + _gumbel(scores.shape, scores, gen)
        slot = self.index[fold, scores.argmax(dim=2)]  # (F, B)
        active.scatter_add_(0, slot, any_active.to(active.dtype))


class _Gather:
    """Reads rows `index` of a slot-major buffer: a view when they are consecutive (the plan
    orders nodes to make them so), else a gather."""

    def __init__(self, index: np.ndarray, device: torch.device):
        self.start = contiguous_start(index)
        self.count = index.size
        self.index = torch.as_tensor(index.reshape(-1), device=device)
        self.limit = int(index.max()) + 1 if index.size else 0  # the rows lie below this one

    def read(self, buf: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor:
        """The rows (a view, or a copy: into `scratch` when given)."""
        if self.start is not None:
            return buf[self.start:self.start + self.count]
        if scratch is None:
            return buf.index_select(0, self.index)
        out = scratch.get("gathered", (self.count, *buf.shape[1:]), buf)
        return torch.index_select(buf, 0, self.index, out=out)

    def add_to(self, target: torch.Tensor, rows: torch.Tensor) -> None:
        """target[index] += rows, each repeated row adding its share (`rows` may be rows of
        `target` above the indexed ones: a layer's flows going to the layers below it)."""
        if self.start is not None:  # consecutive rows: no row repeats
            target[self.start:self.start + self.count].add_(rows)
        else:
            target[:self.limit].index_add_(0, self.index, rows)


def _gumbel(shape: torch.Size | tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(shape, generator=gen, device=like.device, dtype=like.dtype)
    tiny = torch.finfo(like.dtype).tiny
    exponential = -torch.log(u.clamp_min(tiny))
    return -torch.log(exponential.clamp_min(tiny))


RULES = {InputLayer: InputRule, ProductLayer: ProductRule, SumLayer: SumRule}
