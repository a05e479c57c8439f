"""The records of a layered plan: its layers and the plan itself, plain data over numpy arrays.

This module imports only numpy: ``pcdsl compile -o`` copies it into the emitted torch package,
where the runtime reads the same records from the package's ``.safetensors`` file
(:func:`plan_arrays` and :func:`plan_from_arrays`). :mod:`pcdsl.plan` builds them from a circuit
graph and re-exports them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

import numpy as np

ONE, ZERO = 0, 1  # the constant slots: log 1 and log 0
FIRST_SLOT = 2


@dataclass(frozen=True)
class InputLayer:
    """Leaves of one family and width. Parameters live in one table with a row per unit of each
    parameter group (``tables``, in order); ``rows`` maps every unit to its row, so tied leaves
    (e.g. one patch circuit shared by every patch position) read one table, never a copy each."""

    family: str  # "categorical" | "gaussian"
    start: int  # output slots [start, start + len(var))
    var: np.ndarray  # (U,) variable of each unit
    nodes: tuple[str, ...]
    params: dict[str, np.ndarray]  # per table row: categorical log_probs (R, K) padded with -inf; gaussian mean, std
    families: tuple[str, ...] = ()  # each node's own family (bernoulli, indicator, ...)
    node_units: tuple[int, ...] = ()
    groups: tuple[str, ...] = ()  # each node's parameter group (tied leaves share one)
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (U,) table row of each unit
    tables: tuple[str, ...] = ()  # the parameter groups of the table, each `width` rows, in row order

    @property
    def stop(self) -> int:
        return self.start + len(self.var)

    @property
    def width(self) -> int:
        """Units per node (every node of a layer has as many)."""
        return self.node_units[0] if self.node_units else 0

    def table_nodes(self) -> list[int]:
        """For each table, the index of the first node that reads it (its family and variable)."""
        return list(self._table_nodes)

    @cached_property
    def _table_nodes(self) -> tuple[int, ...]:  # asked for on every flows call: worked out once
        first: dict[str, int] = {}
        for i, group in enumerate(self.groups):
            first.setdefault(group, i)
        return tuple(first[g] for g in self.tables)

    def table_cardinalities(self, cardinalities: tuple[int | None, ...]) -> list[int | None]:
        """The cardinality of each table's variable (None for a real one)."""
        return [cardinalities[int(self.var[i * self.width])] for i in self.table_nodes()]


@dataclass(frozen=True)
class ProductLayer:
    start: int
    index: np.ndarray  # (U, K) slots to add
    nodes: tuple[str, ...]

    @property
    def stop(self) -> int:
        return self.start + self.index.shape[0]


# A sum layer runs sparse when at most this share of its (F, M, C) weights is non-zero. Above it,
# the dense batched matrix product costs less than the edge lists. Measured (numba, HCLT-32 over
# Fashion-MNIST pruned by flow, the sum layers alone, one thread): at 25% kept the sparse forward
# costs what the dense one does and the sparse flows half; extrapolated, forward+flows break even
# near 50%. The per-edge rate is 3-6x below the dense kernel's (short loops over a tile), so
# below ~25% the exps and logs that do not shrink with the edges dominate.
SPARSE_DENSITY = 0.35


@dataclass(frozen=True, eq=False)
class SparseSum:
    """The non-zero edges of a sum layer as CSR over its F * M output rows (row f * M + m):
    edges ``indptr[r]:indptr[r + 1]`` of row r read the fold's inputs ``cols`` (0..C-1, ascending
    within a row, the order the dense loop visits them)."""

    indptr: np.ndarray  # (F * M + 1,) int64
    cols: np.ndarray  # (E,) int64

    @property
    def edges(self) -> int:
        return len(self.cols)

    def rows(self) -> np.ndarray:
        """(E,) the output row of each edge."""
        return np.repeat(np.arange(len(self.indptr) - 1, dtype=np.int64), np.diff(self.indptr))

    def flat(self, inputs: int) -> np.ndarray:
        """(E,) each edge's position in the layer's flattened (F, M, C) weights."""
        return self.rows() * inputs + self.cols

    def same(self, other: SparseSum | None) -> bool:
        """The same edges as `other`."""
        return other is not None and np.array_equal(self.indptr, other.indptr) and \
            np.array_equal(self.cols, other.cols)


def same_pattern(a: SumLayer, b: SumLayer) -> bool:
    """Whether two versions of a sum layer run alike (both dense, or sparse with one edge set)."""
    return (a.sparse is None and b.sparse is None) or (a.sparse is not None and a.sparse.same(b.sparse))


@dataclass(frozen=True)
class SumLayer:
    start: int  # output slots [start, start + F * M), node-major
    index: np.ndarray  # (F, C) input slots
    weights: np.ndarray  # (F, M, C)
    nodes: tuple[str, ...]  # the node of each fold (a block-diagonal sum has one fold per block)
    groups: tuple[str, ...]  # weight group of each fold (tied sums share one)
    rows: tuple[int, ...] = ()  # first row of each fold in its group's weights (0 without blocks)
    sparse: SparseSum | None = None  # the non-zero edges, when the plan runs this layer sparse

    @property
    def edges(self) -> int:
        """The edges the layer runs: all F * M * C dense, the non-zero ones sparse."""
        return int(np.prod(self.shape)) if self.sparse is None else self.sparse.edges

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.weights.shape  # type: ignore[return-value]

    @property
    def stop(self) -> int:
        f, m, _ = self.shape
        return self.start + f * m


Layer = InputLayer | ProductLayer | SumLayer


@dataclass(frozen=True)
class LayeredPlan:
    name: str
    num_slots: int
    num_vars: int
    cardinalities: tuple[int | None, ...]  # None for real variables
    variables: tuple[str, ...]
    layers: tuple[Layer, ...]
    root: int  # the root's slot
    slot_of: dict[str, int]  # first slot of each node group
    fixed: frozenset[str] = frozenset()  # parameter groups learning keeps (Parameters.fixed)
    sparse_density: float = SPARSE_DENSITY  # sum layers at most this dense run on their edges (0: never)

    def input_layers(self) -> list[InputLayer]:
        return [layer for layer in self.layers if isinstance(layer, InputLayer)]

    def summary(self) -> str:
        """Sizes in one line: variables, layers by kind, units, edges, parameters."""
        kinds = [type(layer).__name__.removesuffix("Layer").lower() for layer in self.layers]
        counts = ", ".join(f"{kinds.count(k)} {k}" for k in ("input", "product", "sum") if k in kinds)
        edges = sum(layer.index.size if isinstance(layer, ProductLayer) else
                    layer.edges if isinstance(layer, SumLayer) else 0 for layer in self.layers)
        stored = sum(p.size for layer in self.input_layers() for p in layer.params.values())
        stored += sum(layer.weights.size for layer in self.layers if isinstance(layer, SumLayer))
        return (f"'{self.name}': {self.num_vars} variables, {len(self.layers)} layers ({counts}), "
                f"{self.num_slots - FIRST_SLOT} units, {edges} edges, {stored} parameter entries")

    def __repr__(self) -> str:
        return f"LayeredPlan({self.summary()})"


def contiguous_start(index: np.ndarray) -> int | None:
    """The first slot when `index` reads consecutive slots, else None."""
    flat = index.reshape(-1)
    if flat.size and np.array_equal(flat, np.arange(flat[0], flat[0] + flat.size)):
        return int(flat[0])
    return None




_KINDS: dict[str, type[InputLayer] | type[ProductLayer] | type[SumLayer]] = {
    "input": InputLayer, "product": ProductLayer, "sum": SumLayer}


def plan_arrays(plan: LayeredPlan) -> tuple[dict[str, np.ndarray], str]:
    """The plan as named arrays and a JSON header (:func:`plan_from_arrays` reads them back): every
    array of layer i under ``layers.<i>.<field>`` (a parameter table ``layers.<i>.params.<key>``,
    sparse edges ``layers.<i>.sparse.indptr`` and ``.cols``); names, sizes and slots in the header."""
    arrays: dict[str, np.ndarray] = {}
    records = []
    for i, layer in enumerate(plan.layers):
        record: dict[str, Any] = {"kind": next(k for k, cls in _KINDS.items() if isinstance(layer, cls))}
        for f in fields(layer):
            value, key = getattr(layer, f.name), f"layers.{i}.{f.name}"
            if isinstance(value, np.ndarray):
                arrays[key] = value
            elif isinstance(value, dict):  # a parameter table
                arrays.update({f"{key}.{name}": table for name, table in value.items()})
                record[f.name] = {"arrays": list(value)}
            elif isinstance(value, SparseSum):
                arrays[f"{key}.indptr"], arrays[f"{key}.cols"] = value.indptr, value.cols
                record[f.name] = {"edges": value.edges}
            else:
                record[f.name] = list(value) if isinstance(value, tuple) else value
        records.append(record)
    header = {f.name: getattr(plan, f.name) for f in fields(plan) if f.name != "layers"}
    header["fixed"] = sorted(plan.fixed)
    header["layers"] = records
    return {k: np.ascontiguousarray(v) for k, v in arrays.items()}, json.dumps(header)


def plan_from_arrays(arrays: dict[str, np.ndarray], header: str) -> LayeredPlan:
    """The plan that :func:`plan_arrays` wrote as `arrays` and `header`."""
    meta = json.loads(header)
    layers: list[Layer] = []
    for i, record in enumerate(meta.pop("layers")):
        cls = _KINDS[record["kind"]]
        values: dict[str, Any] = {}
        for f in fields(cls):
            value, key = record.get(f.name), f"layers.{i}.{f.name}"
            if f.name not in record:
                value = arrays[key]
            elif isinstance(value, dict) and "arrays" in value:
                value = {name: arrays[f"{key}.{name}"] for name in value["arrays"]}
            elif isinstance(value, dict):
                value = SparseSum(arrays[f"{key}.indptr"], arrays[f"{key}.cols"])
            elif isinstance(value, list):
                value = tuple(value)
            values[f.name] = value
        layers.append(cls(**values))
    meta.update(cardinalities=tuple(meta["cardinalities"]), variables=tuple(meta["variables"]),
                fixed=frozenset(meta["fixed"]), layers=tuple(layers))
    return LayeredPlan(**meta)
