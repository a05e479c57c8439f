"""Execution backends for compiled circuits, installed as ``pcdsl.backends``.

A backend lowers a :class:`pcdsl.plan.LayeredPlan` to something that runs and
answers the queries of :class:`Model`. Backends register by name and load
lazily, so the front end never imports torch or numba.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Protocol

import numpy as np

from pcdsl.params import Parameters
from pcdsl.plan import InputLayer, LayeredPlan, ProductLayer, SumLayer, with_parameters
from pcdsl.reference import Flows

_REGISTRY = {"torch": "pcdsl.backends.torch", "numba": "pcdsl.backends.numba"}

# Everything a plan can ask a backend to lower: one construct per leaf family and per inner node
# kind (hadamard and kronecker products are both gather-adds in the plan). Each backend module
# declares ``UNSUPPORTED: dict[str, str]`` (construct -> why); `lower` refuses those clearly.
CONSTRUCTS = ("input:bernoulli", "input:categorical", "input:gaussian", "input:indicator", "product", "sum")


class Model(Protocol):
    """What every backend answers. Data: (batch, variables); -1 (or NaN) marks a missing value."""

    plan: LayeredPlan

    def log_prob(self, x: Any) -> Any: ...
    def conditional(self, x: Any, query: Any) -> Any: ...
    def map(self, x: Any) -> tuple[Any, Any]: ...
    def sample(self, n: int, evidence: Any = None, seed: int = 0) -> Any: ...
    def flows(self, x: Any) -> Any: ...


class PlanModel:
    """What the backends' models share: the plan they run, its variables, and new parameters
    taken in place (``_load`` hands the new plan's blocks to the backend's own buffers)."""

    plan: LayeredPlan

    @property
    def variables(self) -> tuple[str, ...]:
        return self.plan.variables

    @property
    def cardinalities(self) -> tuple[int | None, ...]:
        return self.plan.cardinalities

    @functools.cached_property
    def weight_rows(self) -> dict[str, int]:
        """The number of weight rows of every sum group (the structure never changes)."""
        return group_rows(self.plan)

    def set_parameters(self, params: Parameters) -> None:
        """Replace every parameter (e.g. after an EM step); the structure stays."""
        self.plan = with_parameters(self.plan, params)
        self._load()

    def _load(self) -> None:
        raise NotImplementedError


def add_weight_flows(layer: SumLayer, flows: Any, result: Flows, params_rows: dict[str, int]) -> None:
    """Hand a sum layer's (F, M, C) weight flows to their groups (tied sums add theirs); a
    block-diagonal sum's folds fill their own rows of the group (``params_rows``: rows per group)."""
    m = flows.shape[1]
    for slot, (group, row) in enumerate(zip(layer.groups, layer.rows, strict=True)):
        total = params_rows[group]
        if total == m:
            result.weights[group] = result.weights.get(group, 0) + flows[slot]
            continue
        if group not in result.weights:
            like = flows[slot]
            result.weights[group] = (like.new_zeros((total, like.shape[1])) if hasattr(like, "new_zeros")
                                     else np.zeros((total, like.shape[1]), like.dtype))
        result.weights[group][row:row + m] += flows[slot]


def group_rows(plan: LayeredPlan) -> dict[str, int]:
    """The number of weight rows of every sum group of the plan."""
    rows: dict[str, int] = {}
    for layer in plan.layers:
        if isinstance(layer, SumLayer):
            for group, row in zip(layer.groups, layer.rows, strict=True):
                rows[group] = max(rows.get(group, 0), row + layer.shape[1])
    return rows


def split_input_flows(layer: InputLayer, stats: dict[str, Any], plan: LayeredPlan, result: Flows) -> None:
    """Hand each parameter group of the layer its rows of the layer's statistics, one row per
    table row (tied leaves' statistics already summed; categorical counts cut to the group's
    cardinality; indicators have no parameters)."""
    width = layer.width
    first, sizes = layer.table_nodes(), layer.table_cardinalities(plan.cardinalities)
    for i, group in enumerate(layer.tables):
        rows = slice(i * width, (i + 1) * width)
        family = layer.families[first[i]]
        if family == "indicator":
            mine = {}
        elif layer.family == "categorical":
            mine = {"counts": stats["counts"][rows, :sizes[i]]}
        else:
            mine = {k: v[rows] for k, v in stats.items()}
        slot = result.inputs.setdefault(group, {})
        for key, value in mine.items():
            slot[key] = slot[key] + value if key in slot else value


class UnknownBackend(ValueError):
    pass


class Unsupported(ValueError):
    """The plan uses a construct the backend declares it cannot lower."""


def constructs(plan: LayeredPlan) -> set[str]:
    """The constructs of `CONSTRUCTS` that `plan` uses."""
    used: set[str] = set()
    for layer in plan.layers:
        if isinstance(layer, InputLayer):
            used.update(f"input:{family}" for family in layer.families)
        else:
            used.add("product" if isinstance(layer, ProductLayer) else "sum")
    return used


def available() -> list[str]:
    return sorted(_REGISTRY)


def lower(plan: LayeredPlan, backend: str, **options: Any) -> Model:
    """Lower a plan with the named backend (e.g. device= and dtype= for torch)."""
    if backend not in _REGISTRY:
        raise UnknownBackend(f"unknown backend '{backend}' (known: {', '.join(available())})")
    module = importlib.import_module(_REGISTRY[backend])
    refused = {c: module.UNSUPPORTED[c] for c in sorted(constructs(plan)) if c in module.UNSUPPORTED}
    if refused:
        reasons = "; ".join(f"{c} ({why})" for c, why in refused.items())
        others = [b for b in available() if b != backend]
        raise Unsupported(f"the {backend} backend cannot lower {reasons}; try --backend {' or '.join(others)}")
    return module.lower(plan, **options)  # type: ignore[no-any-return]
