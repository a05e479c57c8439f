"""A compiled circuit as a ``torch.nn.Module``: log p(x) per row, with gradients.

The parameters are unconstrained: each sum group's weights are log-weights normalised by a
softmax over each row inside ``forward``; categorical and Bernoulli leaves the same (logits of
their categories, ``[1 - p, p]`` for Bernoulli); Gaussian leaves a mean and a log std. They sit
in ``named_parameters()`` under ``weights.<group>``, ``logits.<group>``, ``means.<group>`` and
``log_stds.<group>`` (a ``.`` in a group's name is written ``%2E``, a ``%`` ``%25``). Groups the
model marks fixed are there too, with ``requires_grad`` False.

Gradients do not come from autograd through the layers: the backward pass is the backend's own
flows pass, started at the root with each row's incoming gradient. With weights softmax(theta),
``dLL/dtheta_c = F_c - w_c sum(F)`` (F the flows), the gradient :mod:`pcdsl.learn.sgd` uses;
autograd does only the softmax and the gathers around it. So every layer kind the backend runs
(tied tables, block-diagonal and pruned sums, underflow-guarded sums) has its gradient for free,
and memory stays that of the value buffer. Second derivatives are not available.

Neural leaves: input node groups named in ``leaves`` take their log-likelihoods from the caller,
one (batch, units) tensor per group, usually a network's output; gradients flow back into it.

Weights that are exactly 0 in the model the module is made from (pruned edges) are structure:
they stay 0 through training and EM, and the remaining weights of their row are renormalised.

``torch.compile``: the parameter normalisation compiles; the circuit call itself runs eagerly
(``torch.compiler.disable``), a graph break, because its layers loop in Python over a plan,
write one preallocated buffer in place and branch on the data (the underflow guard), and its
backward is the flows pass rather than a traced graph (docs/torch-module.md has figures).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pcdsl import arguments
from pcdsl.arguments import InvalidArgument
from pcdsl.params import Parameters
from pcdsl.plan import InputLayer, LayeredPlan, SumLayer, plan_parameters

from . import TorchModel, add_stats, lower
from .layers import InputRule, SumRule
from .module_params import TINY, em_step, load_module_parameters, module_parameters

LeafValues = torch.Tensor | Mapping[str, torch.Tensor] | None


_TAKEN = set(dir(nn.ParameterDict()))  # names a ParameterDict's own attributes hold


def key(group: str) -> str:
    """A parameter group's name as a module key: torch forbids '.' in names, and a name such as
    'train' or 'keys' would hide the container's own attribute ('@train' instead)."""
    escaped = group.replace("%", "%25").replace(".", "%2E").replace("@", "%40")
    return "@" + escaped if escaped in _TAKEN else escaped


def group_name(module_key: str) -> str:
    """The inverse of :func:`key`."""
    return module_key.removeprefix("@").replace("%40", "@").replace("%2E", ".").replace("%25", "%")


@dataclass
class _Layout:
    """Where each parameter group's rows go: per table (a class of groups normalised together),
    the groups in order and their first rows; per plan layer with parameters, the rows it reads."""

    sums: dict[int, list[str]] = field(default_factory=dict)  # columns -> sum groups
    categories: dict[int, list[str]] = field(default_factory=dict)  # categories -> leaf groups
    bernoulli: set[str] = field(default_factory=set)  # the leaf groups above that are Bernoulli
    indicators: dict[str, np.ndarray] = field(default_factory=dict)  # group -> value of each unit
    gaussians: list[str] = field(default_factory=list)
    first: dict[str, int] = field(default_factory=dict)  # each group's first row in its table
    width: int = 0  # categories of the widest categorical table (every table padded to it)


class CircuitModule(nn.Module):
    """A circuit's log-likelihood as a module. ``forward(x, leaves=None)`` -> (batch,) log p(x),
    missing entries (-1, or NaN for real variables) marginalised; ``em_step`` runs EM on the same
    parameters; ``sample``, ``map`` and ``conditional`` answer with the current parameters."""

    leaf_slots: torch.Tensor  # buffers, declared for the type checker
    _anchor: torch.Tensor
    _indicator_rows: torch.Tensor

    def __init__(self, plan: LayeredPlan, params: Parameters | None = None, leaves: Sequence[str] = (),
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__()
        params = plan_parameters(plan) if params is None else params
        self.plan = plan
        self.leaf_names = tuple(leaves)
        self.leaf_units = _leaf_units(plan, self.leaf_names)
        self.register_buffer("leaf_slots", torch.as_tensor(_leaf_slots(plan, self.leaf_names)), persistent=False)
        # an empty buffer that follows .to(device, dtype): where and in what the backend runs
        self.register_buffer("_anchor", torch.zeros(0, dtype=torch.float64), persistent=False)
        frozen = set(params.fixed) | _external_only(plan, set(self.leaf_names))
        self.layout = _layout(plan, params)
        self.weights, self.logits = nn.ParameterDict(), nn.ParameterDict()
        self.means, self.log_stds = nn.ParameterDict(), nn.ParameterDict()
        self._add_parameters(params, frozen)
        self._add_indices(plan)
        self._model: TorchModel | None = None
        self.to(device=device, dtype=dtype)  # made in float64, so a float64 module loses nothing

    # ---- construction --------------------------------------------------------------------------
    def _add_parameters(self, params: Parameters, frozen: set[str]) -> None:
        """One parameter per group; weights and probabilities that are 0 become masks."""
        for columns, groups in self.layout.sums.items():
            thetas = [_logits(params.weights[g]) for g in groups]
            for g, (theta, _) in zip(groups, thetas, strict=True):
                self.weights[key(g)] = nn.Parameter(theta, requires_grad=g not in frozen)
            self._add_mask(f"_sum_zeros_{columns}", [zeros for _, zeros in thetas])
        for size, groups in self.layout.categories.items():
            thetas = [_logits(_probs(params.inputs[g])) for g in groups]
            for g, (theta, _) in zip(groups, thetas, strict=True):
                self.logits[key(g)] = nn.Parameter(theta, requires_grad=g not in frozen)
            self._add_mask(f"_categorical_zeros_{size}", [zeros for _, zeros in thetas])
        for g in self.layout.gaussians:
            p = params.inputs[g]
            self.means[key(g)] = nn.Parameter(torch.as_tensor(p["mean"], dtype=torch.float64),
                                              requires_grad=g not in frozen)
            self.log_stds[key(g)] = nn.Parameter(torch.log(torch.as_tensor(p["std"], dtype=torch.float64)),
                                                 requires_grad=g not in frozen)
        rows = [np.eye(self.layout.width)[values] for values in self.layout.indicators.values()]
        with np.errstate(divide="ignore"):
            fixed_rows = np.log(np.concatenate(rows)) if rows else np.zeros((0, self.layout.width))
        self.register_buffer("_indicator_rows", torch.as_tensor(fixed_rows), persistent=False)

    def _add_mask(self, name: str, masks: list[np.ndarray]) -> None:
        mask = np.concatenate(masks)
        self.register_buffer(name, torch.as_tensor(mask) if mask.any() else None, persistent=False)

    def _add_indices(self, plan: LayeredPlan) -> None:
        """The rows of its table each layer with parameters reads (structure: not saved)."""
        first = self.layout.first
        for i, layer in enumerate(plan.layers):
            if isinstance(layer, SumLayer):
                m = layer.shape[1]
                starts = np.array([first[g] + r for g, r in zip(layer.groups, layer.rows, strict=True)])
                rows = (starts[:, None] + np.arange(m)).reshape(-1)
            elif isinstance(layer, InputLayer):
                rows = np.concatenate([first[g] + np.arange(layer.width) for g in layer.tables])
            else:
                continue
            self.register_buffer(f"_rows_{i}", torch.as_tensor(rows, dtype=torch.int64), persistent=False)

    # ---- the forward pass ----------------------------------------------------------------------
    def forward(self, x: Any = None, leaves: LeafValues = None) -> torch.Tensor:
        """log p(x) per row (batch,). `x`: (batch, variables), -1 or NaN for a missing value (None:
        every value missing, for circuits fed only through `leaves`). `leaves`: the log-likelihoods
        of the neural leaves, a (batch, units) tensor per name or one tensor of them side by side
        in the order of ``leaf_names``."""
        return self._call(x, self._leaf_values(leaves), *self._tables())

    @torch.compiler.disable
    def _call(self, x: Any, values: torch.Tensor | None, *tables: torch.Tensor) -> torch.Tensor:
        model = self.backend()
        out: torch.Tensor = _LogLikelihood.apply(_Run(model, self.leaf_slots), self.evidence(x, values),
                                                 values, *tables)
        return out

    def evidence(self, x: Any, values: torch.Tensor | None) -> torch.Tensor:
        """The data as a (batch, variables) tensor on the module's device; None: all missing."""
        if x is None:
            if values is None:
                raise InvalidArgument("E0801", "give the data x (or, for a circuit fed only by neural leaves, "
                                               "their values)")
            x = torch.full((values.shape[0], self.plan.num_vars), torch.nan, dtype=torch.float64)
        x = torch.as_tensor(x, device=self._anchor.device)
        # the checks of every query (E0803-E0805): a fraction for a discrete variable is refused, not truncated
        checked: torch.Tensor = arguments.evidence(x, self.plan.variables, self.plan.cardinalities)
        return checked

    def _tables(self) -> list[torch.Tensor]:
        """Each layer's parameter block, normalised, in the order of the backend's rules: sums
        (F, M, C) log-weights, categorical leaves (R, K) log-probabilities, Gaussian leaves
        mean and std (R,)."""
        sums = {c: self._normalised([self.weights[key(g)] for g in gs], f"_sum_zeros_{c}")
                for c, gs in self.layout.sums.items()}
        categorical = self._categorical()
        if self.layout.gaussians:
            mean = torch.cat([self.means[key(g)] for g in self.layout.gaussians])
            std = torch.cat([self.log_stds[key(g)] for g in self.layout.gaussians]).exp()
        out: list[torch.Tensor] = []
        for i, layer in enumerate(self.plan.layers):
            if isinstance(layer, SumLayer):
                out.append(sums[layer.shape[2]].index_select(0, self._rows(i)).view(layer.shape))
            elif isinstance(layer, InputLayer) and layer.family == "gaussian":
                out += [mean.index_select(0, self._rows(i)), std.index_select(0, self._rows(i))]
            elif isinstance(layer, InputLayer):
                out.append(categorical.index_select(0, self._rows(i))[:, :layer.params["log_probs"].shape[1]])
        return out

    def _rows(self, layer: int) -> torch.Tensor:
        rows: torch.Tensor = getattr(self, f"_rows_{layer}")
        return rows

    def _normalised(self, thetas: list[torch.Tensor], mask: str) -> torch.Tensor:
        """Rows of log-probabilities: a softmax of each row of the groups' logits, zeros kept."""
        theta = torch.cat(thetas) if len(thetas) > 1 else thetas[0]
        zeros = getattr(self, mask)
        if zeros is not None:
            theta = theta.masked_fill(zeros, -torch.inf)
        return torch.log_softmax(theta, dim=1)

    def _categorical(self) -> torch.Tensor:
        """Every categorical-like leaf table (R, width): normalised groups, padded with log 0,
        then the indicators' fixed rows."""
        parts = []
        for size, groups in self.layout.categories.items():
            rows = self._normalised([self.logits[key(g)] for g in groups], f"_categorical_zeros_{size}")
            parts.append(rows if size == self.layout.width else
                         nn.functional.pad(rows, (0, self.layout.width - size), value=-math.inf))
        parts.append(self._indicator_rows)
        return torch.cat(parts)

    def _leaf_values(self, leaves: LeafValues) -> torch.Tensor | None:
        """The neural leaves' values as one (batch, units) tensor, checked against the names."""
        if not self.leaf_names:
            if leaves is not None:
                raise InvalidArgument("E0806", "this module has no neural leaves; name them when making it: "
                                               "model.module(leaves=[...])")
            return None
        if leaves is None:
            raise InvalidArgument("E0801", f"this module's neural leaves {', '.join(self.leaf_names)} need their "
                                           "log-likelihoods: forward(x, leaves={name: (batch, units) tensor})")
        if isinstance(leaves, Mapping):
            unknown = sorted(set(leaves) - set(self.leaf_names))
            missing = [n for n in self.leaf_names if n not in leaves]
            if unknown or missing:
                raise InvalidArgument("E0806", f"neural leaves: unknown {unknown}, missing {missing} "
                                               f"(expected {list(self.leaf_names)})")
            for name, units in zip(self.leaf_names, self.leaf_units, strict=True):
                if leaves[name].ndim != 2 or leaves[name].shape[1] != units:
                    raise InvalidArgument("E0805", f"neural leaf '{name}' has {units} units: give a "
                                                   f"(batch, {units}) tensor, not {tuple(leaves[name].shape)}")
            leaves = torch.cat([leaves[n] for n in self.leaf_names], dim=1)
        total = sum(self.leaf_units)
        if leaves.ndim != 2 or leaves.shape[1] != total:
            raise InvalidArgument("E0805", f"the neural leaves have {total} units together: give a "
                                           f"(batch, {total}) tensor, not {tuple(leaves.shape)}")
        return leaves

    # ---- the compiled model behind the module --------------------------------------------------
    def backend(self) -> TorchModel:
        """The backend model this module runs on (made afresh after ``.to(device or dtype)``)."""
        device, dtype = self._anchor.device, self._anchor.dtype
        if dtype not in (torch.float32, torch.float64):
            raise InvalidArgument("E0807", f"a circuit module runs in float32 or float64, not {dtype}")
        if self._model is None or self._model.device != device or self._model.dtype != dtype:
            self._model = lower(self.plan, device, dtype)
        return self._model

    def synced(self) -> TorchModel:
        """The backend model holding this module's current parameters, for any query of
        :class:`pcdsl.backends.torch.TorchModel` (``sample``, ``map``, ``conditional``, ...)."""
        model = self.backend()
        with torch.no_grad():
            _install(model, [t.detach() for t in self._tables()])
        return model

    def sample(self, n: int, evidence: Any = None, seed: int = 0) -> Any:
        """n samples with the current parameters (see ``TorchModel.sample``)."""
        return self.synced().sample(n, evidence, seed)

    def map(self, x: Any) -> tuple[Any, Any]:
        """The MAP completion of `x` with the current parameters (see ``TorchModel.map``)."""
        return self.synced().map(x)

    def conditional(self, x: Any, query: Any) -> Any:
        """log p(x_Q | x_E) with the current parameters (see ``TorchModel.conditional``)."""
        return self.synced().conditional(x, query)

    # ---- parameters as pcdsl Parameters, and EM ------------------------------------------------
    def to_parameters(self) -> Parameters:
        """The current parameters, normalised, as float64 numpy arrays (for ``pcdsl.io.save_model``,
        ``pcdsl.compile(graph, params=...)``, or EM)."""
        return module_parameters(self)

    def load_parameters(self, params: Parameters) -> None:
        """Take normalised parameters (by group, as :meth:`to_parameters` gives them), in place."""
        load_module_parameters(self, params)

    def em_step(self, x: Any = None, leaves: LeafValues = None, step: float = 1.0, pseudocount: float = 0.1,
                **options: Any) -> float:
        """One EM update from the flows of a batch, on this module's parameters (those with
        ``requires_grad`` False, and the model's fixed ones, are kept); `options` go to
        :func:`pcdsl.learn.em.em_update` (``min_std``, ``prior``). Returns the batch's mean
        log-likelihood before the update."""
        return em_step(self, x, self._leaf_values(leaves), step, pseudocount, **options)

    def __repr__(self) -> str:
        learned = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        leaves = f", {len(self.leaf_names)} neural leaves" if self.leaf_names else ""
        return (f"CircuitModule('{self.plan.name}': {self.plan.num_vars} variables, {len(self.plan.layers)} layers, "
                f"{self.plan.num_slots - 2} units, {learned} of {total} parameters learned{leaves}, "
                f"{str(self._anchor.dtype).removeprefix('torch.')} on {self._anchor.device})")

    def _repr_svg_(self) -> str | None:
        """Jupyter's picture of the layers the module runs (needs graphviz)."""
        from pcdsl.drawing import picture

        return picture(self.plan)._repr_svg_()


# ---- the autograd function -----------------------------------------------------------------------
@dataclass
class _Run:
    model: TorchModel
    leaf_slots: torch.Tensor


class _LogLikelihood(torch.autograd.Function):
    """log p(x) from parameter blocks and neural-leaf values; backward is the flows pass."""

    @staticmethod
    def forward(ctx: Any, run: _Run, x: torch.Tensor, values: torch.Tensor | None,
                *tables: torch.Tensor) -> torch.Tensor:
        model = run.model
        _install(model, tables)
        parts, kept = [], None
        circuit = model.circuit
        bounds = circuit.piece_bounds(len(x))
        for lo, hi in bounds:
            batch, _ = circuit._batch(x[lo:hi])
            buf = circuit._forward(batch, leaves=circuit.leaves(run.leaf_slots, values, lo, hi))
            parts.append(buf[model.plan.root].clone())
            if len(bounds) == 1:  # one piece: keep its values for the backward pass
                kept = buf.clone()
        ctx.run, ctx.kept = run, kept
        ctx.save_for_backward(x, values, *tables)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, values, *tables = ctx.saved_tensors
        model: TorchModel = ctx.run.model
        _install(model, tables)
        circuit = model.circuit
        totals: list[dict[str, torch.Tensor]] = [{} for _ in circuit.rules]
        leaf_grads = []
        for lo, hi in circuit.piece_bounds(len(x)):
            batch, _ = circuit._batch(x[lo:hi])
            leaves = circuit.leaves(ctx.run.leaf_slots, values, lo, hi)
            buf = ctx.kept if ctx.kept is not None else circuit._forward(batch, leaves=leaves)
            add_stats(totals, circuit._flow_pass(buf, batch, grad[lo:hi].to(model.dtype), leaves,
                                                 expected_missing=False))
            if leaves is not None:
                assert leaves.flows is not None
                leaf_grads.append(leaves.flows.T)
        ctx.kept = None
        grads = _table_gradients(model, totals)
        leaf_grad = torch.cat(leaf_grads).to(values.dtype) if values is not None else None
        return (None, None, leaf_grad, *(g.to(t.dtype) for g, t in zip(grads, tables, strict=True)))


def _install(model: TorchModel, tables: Sequence[torch.Tensor]) -> None:
    """Write parameter blocks into the backend's rules, in place (the order of :meth:`_tables`)."""
    it = iter(tables)
    for rule in model.circuit.rules:
        if isinstance(rule, SumRule):
            rule.log_weights.copy_(next(it))
            torch.exp(rule.log_weights, out=rule.weights)
            rule.refresh()
        elif isinstance(rule, InputRule) and rule.layer.family == "gaussian":
            rule.params["mean"].copy_(next(it))
            rule.params["std"].copy_(next(it))
            rule._per_unit()
        elif isinstance(rule, InputRule):
            rule.params["log_probs"].copy_(next(it))


def _table_gradients(model: TorchModel, totals: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """The flows as gradients of each parameter block: sums' edge flows are d/d(log-weight),
    observed counts d/d(log-probability); Gaussians d/dmean = dx / var, d/dstd = (dxx / var - n) / std."""
    out = []
    for rule, stats in zip(model.circuit.rules, totals, strict=True):
        if isinstance(rule, SumRule):
            out.append(stats["weights"])
        elif isinstance(rule, InputRule) and rule.layer.family == "gaussian":
            std = rule.params["std"]
            var = std * std
            out += [stats["dx"] / var, (stats["dxx"] / var - stats["n"]) / std]
        elif isinstance(rule, InputRule):
            out.append(stats["counts"])
    return out


# ---- construction helpers ------------------------------------------------------------------------
def _layout(plan: LayeredPlan, params: Parameters) -> _Layout:
    """The parameter groups of a plan by table, in order of first use, and their first rows."""
    layout = _Layout()
    rows: dict[tuple[str, int], int] = {}  # (table, width class) -> rows so far
    for layer in plan.layers:
        if isinstance(layer, SumLayer):
            for g in dict.fromkeys(layer.groups):
                _place(layout.sums.setdefault(layer.shape[2], []), g, len(params.weights[g]), ("sum", layer.shape[2]),
                       rows, layout)
        elif isinstance(layer, InputLayer):
            first, sizes = layer.table_nodes(), layer.table_cardinalities(plan.cardinalities)
            for i, g in enumerate(layer.tables):
                family = layer.families[first[i]]
                if family == "gaussian":
                    _place(layout.gaussians, g, layer.width, ("gaussian", 0), rows, layout)
                elif family != "indicator":
                    size = sizes[i]
                    assert size is not None
                    _place(layout.categories.setdefault(size, []), g, layer.width, ("categorical", size), rows, layout)
                    layout.width = max(layout.width, size)
                    if family == "bernoulli":
                        layout.bernoulli.add(g)
                else:
                    layout.width = max(layout.width, int(layer.params["log_probs"].shape[1]))
                    layout.indicators.setdefault(g, np.asarray(params.inputs[g]["value"], dtype=np.int64))
                    _place([], g, layer.width, ("indicator", 0), rows, layout)
    _shift_categorical(layout, rows)
    return layout


def _place(groups: list[str], group: str, count: int, table: tuple[str, int], rows: dict[tuple[str, int], int],
           layout: _Layout) -> None:
    if group in layout.first:
        return
    groups.append(group)
    layout.first[group] = rows.get(table, 0)
    rows[table] = rows.get(table, 0) + count


def _shift_categorical(layout: _Layout, rows: dict[tuple[str, int], int]) -> None:
    """Categorical tables of every size, then the indicators, are one table: offset their rows."""
    offset = 0
    for size, groups in layout.categories.items():
        for g in groups:
            layout.first[g] += offset
        offset += rows[("categorical", size)]
    for g in layout.indicators:
        layout.first[g] += offset


def _logits(probs: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Logits of probability rows (log p; 0 where p = 0) and the mask of the zeros."""
    probs = np.asarray(probs, dtype=np.float64)
    zeros = probs == 0
    return torch.as_tensor(np.where(zeros, 0.0, np.log(np.maximum(probs, TINY))), dtype=torch.float64), zeros


def _probs(p: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.asarray(p["probs"]) if "probs" in p else np.stack([1 - p["p"], p["p"]], axis=1)


def _leaf_units(plan: LayeredPlan, names: tuple[str, ...]) -> tuple[int, ...]:
    inputs = {n: u for layer in plan.input_layers() for n, u in zip(layer.nodes, layer.node_units, strict=True)}
    unknown = [n for n in names if n not in inputs]
    if unknown:
        known = ", ".join(list(inputs)[:8]) + (", ..." if len(inputs) > 8 else "")
        raise InvalidArgument("E0806", f"neural leaves must be input node groups of '{plan.name}': "
                                       f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not "
                                       f"(input node groups: {known})")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise InvalidArgument("E0806", f"neural leaves named twice: {', '.join(twice)}")
    return tuple(inputs[n] for n in names)


def _leaf_slots(plan: LayeredPlan, names: tuple[str, ...]) -> np.ndarray:
    units = _leaf_units(plan, names)
    slots = [plan.slot_of[n] + np.arange(u) for n, u in zip(names, units, strict=True)]
    return np.concatenate(slots).astype(np.int64) if slots else np.zeros(0, dtype=np.int64)


def _external_only(plan: LayeredPlan, names: set[str]) -> set[str]:
    """Leaf parameter groups that only neural leaves read: nothing uses them, so they stay fixed."""
    read: set[str] = set()
    for layer in plan.input_layers():
        read.update(g for n, g in zip(layer.nodes, layer.groups, strict=True) if n not in names)
    return {g for layer in plan.input_layers() for g in layer.groups if g not in read}
