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

from pcdsl import arguments
from pcdsl.arguments import InvalidArgument
from pcdsl.params import Parameters
from pcdsl.plan import InputLayer, LayeredPlan, ProductLayer, SumLayer, with_parameters
from pcdsl.reference import Flows
from pcdsl.syntax.names import did_you_mean

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

    def __repr__(self) -> str:
        where = " ".join(str(getattr(self, k)).removeprefix("torch.") for k in ("dtype", "device") if hasattr(self, k))
        return f"{type(self).__name__}({self.plan.summary()}{'; ' + where if where else ''})"

    def _repr_svg_(self) -> str | None:
        """Jupyter's picture of the layers the model runs (needs graphviz)."""
        from pcdsl.drawing import picture

        return picture(self.plan)._repr_svg_()

    @property
    def cardinalities(self) -> tuple[int | None, ...]:
        return self.plan.cardinalities

    @functools.cached_property
    def weight_rows(self) -> dict[str, int]:
        """The number of weight rows of every sum group (the structure never changes)."""
        return group_rows(self.plan)

    @functools.cached_property
    def layer_groups(self) -> dict[int, frozenset[tuple[str, str]]]:
        """The parameter groups each layer with parameters reads: ("inputs", group) or ("weights", group)."""
        out: dict[int, frozenset[tuple[str, str]]] = {}
        for i, layer in enumerate(self.plan.layers):
            if isinstance(layer, InputLayer):
                out[i] = frozenset(("inputs", g) for g in layer.tables)
            elif isinstance(layer, SumLayer):
                out[i] = frozenset(("weights", g) for g in set(layer.groups))
        return out

    def set_parameters(self, params: Parameters) -> None:
        """Replace every parameter (e.g. after an EM step); the structure stays. Only the layers
        that read a group whose values changed since the last call are rebuilt and loaded (all of
        them the first time), so an EM step that trains part of a circuit pays for that part."""
        changed, layers = self._changes(params)
        self.plan = with_parameters(self.plan, params, layers)
        self._load(layers)
        loaded = dict(getattr(self, "_loaded", {}))  # copies: values changed in place must show
        loaded.update({key: _copy(_group(params, key)) for key in changed})
        self._loaded = loaded

    def _changes(self, params: Parameters) -> tuple[set[tuple[str, str]], list[int] | None]:
        """The groups whose values differ from the ones loaded, and the layers that read them
        (None: every layer, on the first call)."""
        loaded: dict[tuple[str, str], Any] | None = getattr(self, "_loaded", None)
        needed = set().union(*self.layer_groups.values())
        # a group missing from `params` counts as changed: rebuilding its layer names it in the error
        changed = {key for key in needed if loaded is None or key not in loaded or _group(params, key) is None
                   or not _same(loaded[key], _group(params, key))}
        if loaded is None:
            return changed, None
        return changed, [i for i, groups in self.layer_groups.items() if groups & changed]

    def _load(self, layers: list[int] | None) -> None:
        """Hand the plan's new parameter blocks of `layers` (None: every layer) to the backend."""
        raise NotImplementedError


def _group(params: Parameters, key: tuple[str, str]) -> Any:
    """A group's values: ("inputs", name) -> dict of arrays, ("weights", name) -> array; None if absent."""
    kind, name = key
    return (params.inputs if kind == "inputs" else params.weights).get(name)


def _copy(value: Any) -> Any:
    return {k: np.array(v) for k, v in value.items()} if isinstance(value, dict) else np.array(value)


def _same(old: Any, new: Any) -> bool:
    """Equal parameter values (a dict of arrays for a leaf, an array for a sum)."""
    if isinstance(old, dict):
        return isinstance(new, dict) and old.keys() == new.keys() and all(_same(old[k], new[k]) for k in old)
    new = np.asarray(new)
    return old.shape == new.shape and bool(np.array_equal(old, new))


def add_weight_flows(layer: SumLayer, flows: Any, result: Flows, params_rows: dict[str, int]) -> None:
    """Hand a sum layer's (F, M, C) weight flows to their groups (tied sums add theirs); a
    block-diagonal sum's folds fill their own rows of the group (``params_rows``: rows per group)."""
    m = flows.shape[1]
    for slot, (group, row) in enumerate(zip(layer.groups, layer.rows, strict=True)):
        total = params_rows[group]
        if total == m:
            prev = result.weights.get(group)  # the block as it is (a view) unless a tied layer adds to it
            result.weights[group] = flows[slot] if prev is None else prev + flows[slot]
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


class UnknownBackend(InvalidArgument):
    """A backend name that is not registered."""


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


def check_backend(backend: object) -> str:
    """A registered backend's name; UnknownBackend (with a did-you-mean) otherwise."""
    if not isinstance(backend, str) or backend not in _REGISTRY:
        shown = repr(backend) if isinstance(backend, str) else f"{backend!r} ({type(backend).__name__})"
        raise UnknownBackend("E0806", f"unknown backend {shown} (known: {', '.join(available())})",
                             did_you_mean(backend, _REGISTRY) if isinstance(backend, str) else None)
    return backend


def lower(plan: LayeredPlan, backend: str, **options: Any) -> Model:
    """Lower a plan with the named backend (e.g. device= and dtype= for torch)."""
    check_backend(backend)
    if "device" in options:
        options["device"] = arguments.device(options["device"], backend)
    if "dtype" in options:
        options["dtype"] = arguments.dtype(options["dtype"])
    try:
        module = importlib.import_module(_REGISTRY[backend])
    except ImportError as exc:
        raise InvalidArgument("E0807", f"the {backend} backend is not available: it needs the Python package "
                                       f"'{exc.name}'", "pip install 'pcdsl[all]'") from None
    refused = {c: module.UNSUPPORTED[c] for c in sorted(constructs(plan)) if c in module.UNSUPPORTED}
    if refused:
        reasons = "; ".join(f"{c} ({why})" for c, why in refused.items())
        others = [b for b in available() if b != backend]
        raise Unsupported(f"the {backend} backend cannot lower {reasons}; try --backend {' or '.join(others)}")
    return module.lower(plan, **options)  # type: ignore[no-any-return]
