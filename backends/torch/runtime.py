"""A compiled circuit on torch: evidence in, query results out.

:class:`Circuit` runs a layered plan (the records of ``layout.py``) with the lowering rules of
``layers.py``. Every query is built from three passes over the layers: forward (sum- or
max-product), flows (top-down expected counts) and down (top-down choice of active units). Loops
run over layers, never over nodes.

This module and the ones it imports need only torch and numpy (and safetensors for :func:`read`):
``pcdsl compile -o`` copies them, as they are, into the emitted package, and pcdsl's in-process
model (``pcdsl.backends.torch.TorchModel``) wraps the same class, so emitted code runs the
in-process algorithms.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .layers import RULES, Batch, InputRule, Scratch, SumRule
from .layout import ONE, ZERO, LayeredPlan, plan_from_arrays

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# log_prob, conditional and flows run a large batch in pieces whose value buffer (slots x samples)
# holds at most this many values, so memory stays bounded on circuits of a million slots; results are
# per sample (log_prob) or summed over the pieces (flows). Twice numba's bound: every piece costs
# torch one batched matrix product per sum layer, whose per-matrix overhead grows with the pieces.
BUFFER_VALUES = 1 << 28


@dataclass
class Leaves:
    """Input units whose values the caller gives (neural leaves): their slots (U,), their
    log-likelihoods (U, B), and after a flow pass the flows that reached them (U, B)."""

    slots: torch.Tensor
    values: torch.Tensor
    flows: torch.Tensor | None = None


def add_stats(totals: list[dict[str, torch.Tensor]], more: list[dict[str, torch.Tensor]]) -> None:
    """Add one piece's per-rule statistics to the running totals, in place."""
    for total, stats in zip(totals, more, strict=True):
        for key, value in stats.items():
            total[key] = total[key] + value if key in total else value


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """float32 or float64, by name or as a torch dtype."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[name]


def read(path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
         buffer_values: int = BUFFER_VALUES) -> Circuit:
    """The circuit stored in a ``.safetensors`` file by ``pcdsl compile -o`` (its arrays and, in
    the header, its layout)."""
    from safetensors import safe_open

    dtype = as_dtype(dtype)
    with safe_open(str(path), framework="numpy") as stored:
        header = (stored.metadata() or {}).get("plan")
        if header is None:
            raise ValueError(f"{path}: not a circuit written by pcdsl compile (no 'plan' in its header)")
        arrays = {key: stored.get_tensor(key) for key in stored.keys()}
    return Circuit(plan_from_arrays(arrays, header), device, dtype, buffer_values)


class Circuit:
    """Queries on (batch, variables) data in the column order of ``variables``: numpy arrays or
    tensors; -1 marks a missing discrete value, NaN a missing real one (marginalised). Results come
    back in the type they were given (tensors on this circuit's device)."""

    def __init__(self, plan: LayeredPlan, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
                 buffer_values: int = BUFFER_VALUES):
        self.plan = plan
        self.device, self.dtype = torch.device(device), as_dtype(dtype)
        self.piece = max(1, buffer_values // plan.num_slots)  # samples per piece of a batch
        self.scratch = Scratch()  # temporaries the rules share, kept between calls
        self.rules = [RULES[type(layer)](layer, self.device, self.dtype, self.scratch) for layer in plan.layers]
        self._buffers: dict[str, torch.Tensor] = {}
        self.discrete = torch.tensor([c is not None for c in plan.cardinalities], device=self.device)
        big = torch.iinfo(torch.long).max  # real variables: no bound on the (unused) index
        self.limits = torch.tensor([c if c is not None else big for c in plan.cardinalities], device=self.device)

    @property
    def variables(self) -> tuple[str, ...]:
        return self.plan.variables

    @property
    def cardinalities(self) -> tuple[int | None, ...]:
        """Each variable's number of categories; None for a real variable."""
        return self.plan.cardinalities

    def __repr__(self) -> str:
        return f"Circuit({self.plan.summary()}; {str(self.dtype).removeprefix('torch.')} {self.device})"

    def load(self, plan: LayeredPlan, layers: list[int] | None = None) -> None:
        """Take the parameters of `plan` (the same structure) for `layers` (None: every layer), in place."""
        self.plan = plan
        for i in range(len(self.rules)) if layers is None else layers:
            self.rules[i].load(plan.layers[i])  # type: ignore[arg-type]

    # ---- evidence ------------------------------------------------------------------------
    def _batch(self, x: Any) -> tuple[Batch, torch.Tensor]:
        t = torch.as_tensor(x, device=self.device)
        if t.ndim == 1:
            t = t[None, :]
        if t.ndim != 2 or t.shape[1] != self.plan.num_vars:
            raise ValueError(f"data must have shape (batch, {self.plan.num_vars}), got {tuple(t.shape)}")
        real = t.to(torch.float64)
        missing = torch.isnan(real) | (self.discrete[None, :] & (real == -1))
        index = torch.where(missing, torch.zeros_like(real), real).to(torch.long)
        self._check_domains(index, real, missing)
        batch = Batch(index.T.contiguous(), real.T.contiguous(), missing.T.contiguous())
        return batch, real

    def _check_domains(self, index: torch.Tensor, real: torch.Tensor, missing: torch.Tensor) -> None:
        bad = ~missing & self.discrete[None, :] & ((index < 0) | (index >= self.limits[None, :]) | (index != real))
        if bool(bad.any()):
            row, v = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"value {float(real[row, v]):g} of variable '{self.plan.variables[v]}' is not one of "
                             f"0..{int(self.limits[v]) - 1} (missing values are -1)")

    @staticmethod
    def _out(result: torch.Tensor, like: Any) -> Any:
        return result if isinstance(like, torch.Tensor) else result.detach().cpu().numpy()

    def _typed(self, out: torch.Tensor, like: Any) -> Any:
        """Completions or samples typed like `like`: integers (int64; -1 where undefined) when every
        variable is discrete."""
        if bool(self.discrete.all()):
            out = torch.nan_to_num(out, nan=-1.0).to(torch.int64)
        return self._out(out, like)

    # ---- passes ------------------------------------------------------------------------------
    def _scratch(self, name: str, batch_size: int) -> torch.Tensor:
        """A (slots, batch) buffer kept between calls: fresh buffers this size cost page faults
        (the front of the largest one asked for). Results handed to callers are copies, never
        views of a scratch buffer."""
        size = self.plan.num_slots * batch_size
        flat = self._buffers.get(name)
        if flat is None or flat.numel() < size:
            flat = self._buffers[name] = torch.empty(size, device=self.device, dtype=self.dtype)
        return flat[:size].view(self.plan.num_slots, batch_size)

    def piece_bounds(self, rows: int) -> list[tuple[int, int]]:
        """(start, stop) of each piece of a batch of `rows` rows: near-equal sizes, at most `piece`
        rows each (a small last piece would cost as many small matrix products as a large one)."""
        count = max(1, -(-rows // self.piece))
        bounds = [rows * i // count for i in range(count + 1)]
        return list(itertools.pairwise(bounds))

    @functools.cached_property
    def input_rules(self) -> int:
        """How many rules are input layers: they come first (the plan layers by height)."""
        return sum(isinstance(rule, InputRule) for rule in self.rules)

    @property
    def sync_free(self) -> bool:
        """Whether the sum rules run a pass without reading anything back to the host (on a GPU by
        default); the model then reads one flag after the pass (see :meth:`_checked`)."""
        return any(getattr(rule, "sync_free", False) for rule in self.rules)

    @sync_free.setter
    def sync_free(self, value: bool) -> None:
        for rule in self.rules:
            if isinstance(rule, SumRule):
                rule.sync_free = value

    def _checked(self, run: Callable[[], Any]) -> Any:
        """`run()`, a pass; if a sync-free rule met more underflowed units than it repairs, the
        pass again with the syncing rules (rare: the answer is the same either way)."""
        if not self.sync_free:
            return run()
        flag = self.scratch.overflow(self.device)
        flag.zero_()
        result = run()
        if not bool(flag):
            return result
        self.sync_free = False
        try:
            return run()
        finally:
            self.sync_free = True

    def _forward(self, batch: Batch, mode: str = "sum", leaves: Leaves | None = None) -> torch.Tensor:
        """The value buffer (slots, batch); `leaves` overwrite their input units' values."""
        return self._checked(lambda: self._forward_once(batch, mode, leaves))  # type: ignore[no-any-return]

    @torch.no_grad()
    def _forward_once(self, batch: Batch, mode: str, leaves: Leaves | None) -> torch.Tensor:
        buf = self._scratch("values", batch.index.shape[1])
        buf[ONE], buf[ZERO] = 0.0, -torch.inf
        for i, rule in enumerate(self.rules):
            if i == self.input_rules and leaves is not None:
                buf[leaves.slots] = leaves.values.to(buf.dtype)
            rule.forward(buf, batch, mode)
        if self.input_rules == len(self.rules) and leaves is not None:  # a circuit of one leaf
            buf[leaves.slots] = leaves.values.to(buf.dtype)
        return buf

    def _flow_pass(self, buf: torch.Tensor, batch: Batch, root_flow: float | torch.Tensor,
                   leaves: Leaves | None = None, expected_missing: bool = True) -> list[dict[str, torch.Tensor]]:
        """Top-down flows from `root_flow` (per sample) at the root over a buffer `_forward` filled:
        each rule's statistics, summed over the batch. The flows reaching `leaves` are kept in
        ``leaves.flows`` (U, B) and go no further. `expected_missing`: a missing value adds its
        flow to every category in expectation (EM); False: to none (the gradient)."""
        return self._checked(  # type: ignore[no-any-return]
            lambda: self._flow_pass_once(buf, batch, root_flow, leaves, expected_missing))

    @torch.no_grad()
    def _flow_pass_once(self, buf: torch.Tensor, batch: Batch, root_flow: float | torch.Tensor,
                        leaves: Leaves | None, expected_missing: bool) -> list[dict[str, torch.Tensor]]:
        flow = self._scratch("flows", buf.shape[1]).zero_()
        flow[self.plan.root] = root_flow
        stats: list[dict[str, torch.Tensor]] = [{} for _ in self.rules]
        for i in range(len(self.rules) - 1, -1, -1):
            if i == self.input_rules - 1 and leaves is not None:  # every input unit's flow is final here
                leaves.flows = flow[leaves.slots].clone()
                flow[leaves.slots] = 0.0
            rule = self.rules[i]
            stats[i] = rule.flows(buf, flow, batch, expected_missing) if isinstance(rule, InputRule) \
                else rule.flows(buf, flow, batch)
        return stats

    @torch.no_grad()
    def _down(self, batch: Batch, real: torch.Tensor, mode: str, seed: int | None) -> torch.Tensor:
        buf = self._forward(batch, "max" if mode == "map" else "sum")
        gen = None
        if mode == "sample":
            gen = torch.Generator(device=self.device)
            gen.manual_seed(seed or 0)
        active = self._scratch("active", buf.shape[1]).zero_()
        active[self.plan.root] = 1.0
        out = real.clone()
        for rule in reversed(self.rules):
            rule.down(active, buf, batch, out, mode, gen)
        # evidence of probability zero has no completion: NaN in its missing entries
        impossible = buf[self.plan.root] == -torch.inf
        out[impossible[:, None] & batch.missing.T] = torch.nan
        return out

    def _log_prob(self, x: Any) -> torch.Tensor:
        return self.passes(x, flows=False)[0]

    def _columns(self, query: Any) -> torch.Tensor:
        """Query variables as column indices: names (one or several), indices or a boolean mask."""
        q = query.detach().cpu().numpy() if isinstance(query, torch.Tensor) else query
        q = np.asarray([q] if isinstance(q, str) else q)
        n = self.plan.num_vars
        if q.dtype == bool:
            if q.shape != (n,):
                raise ValueError(f"a boolean query mask must have one entry per variable, shape ({n},), "
                                 f"got {q.shape}")
            q = np.flatnonzero(q)
        elif q.dtype.kind in "US":
            names = {name: i for i, name in enumerate(self.plan.variables)}
            unknown = [str(name) for name in q.reshape(-1) if str(name) not in names]
            if unknown:
                raise ValueError(f"query names no variable '{unknown[0]}' (variables: "
                                 f"{', '.join(self.plan.variables[:8])}{', ...' if n > 8 else ''})")
            q = np.array([names[str(name)] for name in q.reshape(-1)], dtype=np.int64)
        q = q.reshape(-1).astype(np.int64)
        if ((q < 0) | (q >= n)).any():
            raise ValueError(f"query index {int(q[(q < 0) | (q >= n)][0])} is outside 0..{n - 1}")
        return torch.as_tensor(q, device=self.device)

    # ---- queries --------------------------------------------------------------------------------
    def log_prob(self, x: Any) -> Any:
        """log p(x) per row; missing entries are marginalised."""
        return self._out(self._log_prob(x), x)

    def conditional(self, x: Any, query: Any) -> Any:
        """log p(x_Q | x_E): Q the query variables (indices, names or a mask), E the other observed ones.

        NaN where p(x_E) = 0: the conditional is undefined there."""
        columns = self._columns(query)
        full = torch.as_tensor(x, device=self.device, dtype=torch.float64).clone()
        full = full[None, :] if full.ndim == 1 else full
        evidence = full.clone()
        evidence[..., columns] = torch.where(self.discrete[columns], -1.0, torch.nan).to(evidence.dtype)
        return self._out(self._log_prob(full) - self._log_prob(evidence), x)

    def map(self, x: Any) -> tuple[Any, Any]:
        """Complete missing entries by max-product and backtracking; return (completion, its log p).

        The completion is the exact MPE for deterministic circuits; otherwise it is the
        max-product (Viterbi) approximation. The log-probability is exact either way. Rows whose
        evidence has probability zero get NaN in their missing entries (-1 in the integer results
        of a circuit whose variables are all discrete) and log p = -inf."""
        batch, real = self._batch(x)
        completed = self._down(batch, real, "map", None)
        return self._typed(completed, x), self._out(self._log_prob(completed), x)

    def sample(self, n: int, evidence: Any = None, seed: int = 0) -> Any:
        """n ancestral samples; with evidence (one row: n samples from it; n rows: one each), from
        p(missing | observed). Where the evidence has probability zero (undefined), the missing
        entries are NaN (-1 in the integer results of a circuit whose variables are all discrete)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a whole number >= 0, got {n!r}")
        if evidence is None:
            rows = torch.full((n, self.plan.num_vars), torch.nan, dtype=torch.float64, device=self.device)
        else:
            rows = torch.as_tensor(evidence, device=self.device, dtype=torch.float64)
            rows = rows[None, :] if rows.ndim == 1 else rows
            if len(rows) not in (1, n):
                raise ValueError(f"evidence has {len(rows)} rows, but n = {n}: give one row (n samples from it) "
                                 "or n rows (one sample each)")
            rows = rows.expand(n, -1) if rows.shape[0] == 1 else rows
        batch, real = self._batch(rows)
        return self._typed(self._down(batch, real, "sample", seed), evidence)

    def flows(self, x: Any) -> dict[str, Any]:
        """Expected sufficient statistics, summed over the batch, keyed by layer i of the plan:
        ``layer<i>_weights`` (folds, units, inputs) edge flows of every sum layer,
        ``layer<i>_counts`` (rows, categories) of every categorical input layer (a missing value
        counts probs * flow), ``layer<i>_n``, ``_dx``, ``_dxx`` of every Gaussian one (centred on
        the mean; a missing value counts 0 and std^2); and ``log_likelihood``, the batch's summed
        log-likelihood (a float)."""
        log_p, totals = self.passes(x)
        result: dict[str, Any] = {"log_likelihood": float(log_p.double().sum())}
        for i, stats in enumerate(totals):
            result.update({f"layer{i}_{key}": self._out(value, x) for key, value in stats.items()})
        return result

    @torch.no_grad()
    def passes(self, x: Any, leaf_slots: torch.Tensor | None = None, leaf_values: torch.Tensor | None = None,
               flows: bool = True) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """log p(x) per row and, if `flows`, each rule's statistics summed over the rows (else
        empty), in pieces of at most `piece` rows. Neural leaves: the input units at `leaf_slots`
        (U,) take the log-likelihoods `leaf_values` (rows, U) instead of their own (their flows stop
        there)."""
        totals: list[dict[str, torch.Tensor]] = [{} for _ in self.rules]  # each layer's, over the pieces
        rows = x if isinstance(x, torch.Tensor) else np.asarray(x)
        rows = rows[None, :] if rows.ndim == 1 else rows
        log_p = []
        for lo, hi in self.piece_bounds(len(rows)):
            batch, _ = self._batch(rows[lo:hi])
            leaves = None if leaf_slots is None else self.leaves(leaf_slots, leaf_values, lo, hi)
            buf = self._forward(batch, leaves=leaves)
            log_p.append(buf[self.plan.root].clone())
            if flows:
                add_stats(totals, self._flow_pass(buf, batch, 1.0, leaves))
        return torch.cat(log_p), totals

    def leaves(self, slots: torch.Tensor, values: torch.Tensor | None, lo: int, hi: int) -> Leaves | None:
        """Neural leaves at `slots` taking rows lo..hi of `values` (rows, U), unit-major on this
        circuit's device; None without values."""
        return None if values is None else Leaves(slots, values[lo:hi].detach().T.to(self.device))

    @torch.no_grad()
    def node_values(self, x: Any, slots: Any) -> torch.Tensor:
        """(rows, len(slots)) log-values of the units at buffer `slots` (``plan.slot_of[group]`` +
        unit) on the rows of x, in pieces."""
        at = torch.as_tensor(np.asarray(slots, dtype=np.int64), device=self.device)
        parts = [self._forward(self._batch(x[lo:hi])[0])[at].T.clone() for lo, hi in self.piece_bounds(len(x))]
        return torch.cat(parts)
