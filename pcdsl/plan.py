"""CircuitGraph -> LayeredPlan: backend-neutral layers of index arrays.

Every unit of the circuit gets a slot in one value buffer of shape
(num_slots, batch). Slots 0 and 1 hold the constants log 1 and log 0, for
layers that pad their fan-in (today's layers bucket by exact shape and need
no padding); node groups follow, layer by layer, each group's units
contiguous. Layers run in order:

- an input layer per family and group width: categorical (Bernoulli and
  indicator leaves are categorical leaves over their domain), gaussian; its
  parameters are one table with a row per unit of each parameter group, and
  each unit names its row, so tied leaves share rows instead of copies;
- a product layer per fan-in: ``out[u] = sum_k buf[index[u, k]]``;
- a sum layer per fold of same-shape sums (F nodes of M units over C child
  units): ``out[f, m] = log sum_c W[f, m, c] exp(buf[index[f, c]])``, one
  batched matrix product. A block-diagonal sum of K blocks is K folds (one per
  block), so its cost is that of the edges it has, not of a dense block.
  A fold set whose weights are mostly exact zeros (sums pruned by progressive
  growing) also carries its edges as CSR (:class:`SparseSum`): backends then
  run it in time proportional to the edges kept; the dense weights stay the
  layer's parameters, so learning and model files see one layout.

Nodes are layered by height (inputs 0, others 1 + the highest child), so
everything a layer reads was written by an earlier layer.

The records themselves (the layers, the plan) are defined in :mod:`pcdsl.layout`, which needs
only numpy (emitted torch packages carry a copy); this module builds them and re-exports them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import replace

import numpy as np

from pcdsl import layout
from pcdsl.ir.graph import CircuitGraph, Node, NodeKind
from pcdsl.layout import (  # noqa: F401 (re-exported for pcdsl)
    FIRST_SLOT,
    ONE,
    SPARSE_DENSITY,
    ZERO,
    InputLayer,
    Layer,
    ProductLayer,
    SparseSum,
    SumLayer,
    contiguous_start,
    same_pattern,
)
from pcdsl.params import Parameters, input_group, weight_group


class LayeredPlan(layout.LayeredPlan):
    """The plan of a circuit (:class:`pcdsl.layout.LayeredPlan`), drawn in Jupyter."""

    def _repr_svg_(self) -> str | None:
        """Jupyter's picture of the layers (needs graphviz; None falls back to the text)."""
        from pcdsl.drawing import picture

        return picture(self)._repr_svg_()


def sparse_pattern(weights: np.ndarray, density: float = SPARSE_DENSITY) -> SparseSum | None:
    """The edges of (F, M, C) weights as CSR when at most `density` of them are non-zero, else
    None (the layer runs dense; always for `density` <= 0). Rows without any edge are allowed
    (their unit is log 0)."""
    if weights.size == 0 or density <= 0:
        return None
    live = weights.reshape(-1, weights.shape[2]) != 0
    if np.count_nonzero(live) > density * weights.size:
        return None
    rows, cols = np.nonzero(live)  # row-major: ascending columns within a row
    indptr = np.zeros(live.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=live.shape[0]), out=indptr[1:])
    return SparseSum(indptr, cols.astype(np.int64))


def heights(graph: CircuitGraph) -> dict[str, int]:
    h: dict[str, int] = {}
    for node in graph.nodes():  # children first
        h[node.name] = 0 if node.kind is NodeKind.INPUT else 1 + max(h[c] for c in node.children)
    return h


def compile_plan(graph: CircuitGraph, params: Parameters, sparse_density: float = SPARSE_DENSITY) -> LayeredPlan:
    """Fold a validated circuit graph and its parameters into layers; sum layers whose weights
    are at most `sparse_density` non-zero run on their edges (0: every layer dense)."""
    buckets: dict[tuple, list[Node]] = defaultdict(list)
    h = heights(graph)
    for node in graph.nodes():
        buckets[_bucket_key(graph, node, h[node.name])].append(node)
    keys = sorted(buckets, key=_order)
    _order_for_consumers(graph, [buckets[k] for k in keys])
    slots: dict[str, int] = {}
    layers: list[Layer] = []
    next_slot = FIRST_SLOT
    for key in keys:
        nodes = buckets[key]
        layer = _layer(graph, params, key[1], nodes, slots, next_slot, sparse_density)
        for node in nodes:  # node-major: each group's units contiguous, in fold order
            slots[node.name] = next_slot
            next_slot += node.num_units
        layers.append(layer)
    cards = tuple(v.domain.size if v.domain.is_discrete else None for v in graph.variables)
    return LayeredPlan(graph.name, next_slot, len(graph.variables), cards,
                       tuple(v.name for v in graph.variables), tuple(layers), slots[graph.root.name], slots,
                       params.fixed, sparse_density)


_KIND_ORDER = {"input": 0, "product": 1, "sum": 2}


def _order_for_consumers(graph: CircuitGraph, layers: list[list[Node]]) -> None:
    """Order each layer's nodes as the layers above read them, so most gathers read
    one contiguous block of slots (a view, not a copy). Works top-down, in place."""
    rank: dict[str, tuple[int, int, int, int]] = {}
    for depth, nodes in enumerate(reversed(layers)):
        nodes.sort(key=lambda n: rank.get(n.name, (-1, 0, 0, 0)))
        for position, node in enumerate(nodes):
            for j, child in enumerate(node.children):
                # a product layer gathers column by column; a sum layer row by row
                key = (depth, j, position, 0) if node.kind is NodeKind.PRODUCT else (depth, 0, position, j)
                rank.setdefault(child, key)


def _bucket_key(graph: CircuitGraph, node: Node, height: int) -> tuple:
    if node.kind is NodeKind.INPUT:  # equal units per group: the layer is a (groups, units) grid
        return (0, "input", "gaussian" if node.family == "gaussian" else "categorical", node.num_units)
    if node.kind is NodeKind.PRODUCT:
        return (height, "product", len(node.children))
    return (height, "sum", node.num_units // node.blocks, graph.child_units(node) // node.blocks)


def _order(key: tuple) -> tuple:
    return (key[0], _KIND_ORDER[key[1]], *key[2:])


def _layer(graph: CircuitGraph, params: Parameters, kind: str, nodes: list[Node],
           slots: dict[str, int], start: int, sparse_density: float) -> Layer:
    names = tuple(n.name for n in nodes)
    if kind == "input":
        return _input_layer(graph, params, nodes, start)
    if kind == "product":
        return ProductLayer(start, np.concatenate([_product_rows(graph, n, slots) for n in nodes]), names)
    folds = [(n, b) for n in nodes for b in range(n.blocks)]  # node-major, as the slots are
    index = np.concatenate([_sum_inputs(graph, n, slots) for n in nodes])
    first_rows = tuple(b * (n.num_units // n.blocks) for n, b in folds)
    layer = SumLayer(start, index, np.empty((0, 0, 0)), tuple(n.name for n, _ in folds),
                     tuple(weight_group(n) for n, _ in folds), first_rows)
    weights = fold_weights(layer, params, nodes[0].num_units // nodes[0].blocks)
    return replace(layer, weights=weights, sparse=sparse_pattern(weights, sparse_density))


def fold_weights(layer: SumLayer, params: Parameters, units: int | None = None) -> np.ndarray:
    """A sum layer's (F, M, C) weights, each fold's rows of its group's weights (one gather: tied
    and block-diagonal sums make many folds of few groups)."""
    m = layer.shape[1] if units is None else units
    names = {g: i for i, g in enumerate(dict.fromkeys(layer.groups))}
    blocks = [np.asarray(params.weights[g], dtype=np.float64) for g in names]
    offsets = np.cumsum([0] + [len(b) for b in blocks[:-1]])
    first = offsets[[names[g] for g in layer.groups]] + np.asarray(layer.rows, dtype=np.int64)
    return np.concatenate(blocks)[first[:, None] + np.arange(m)]


def _product_rows(graph: CircuitGraph, node: Node, slots: dict[str, int]) -> np.ndarray:
    """(units, children) input slots of a product: unit u of each child (hadamard; a child of one
    unit broadcasts), or every combination of child units (kronecker, row-major)."""
    sizes = [graph.node(c).num_units for c in node.children]
    u = np.arange(node.num_units)
    units = np.unravel_index(u, sizes) if node.pattern == "kronecker" else \
        [u if s > 1 else np.zeros_like(u) for s in sizes]
    return np.stack([slots[c] + i for c, i in zip(node.children, units, strict=True)], axis=1).astype(np.int64)


def _sum_inputs(graph: CircuitGraph, node: Node, slots: dict[str, int]) -> np.ndarray:
    """(blocks, inputs) input slots of each block of a sum: the slots of
    :func:`pcdsl.params.block_inputs`, block by block."""
    blocks = node.blocks
    runs = [graph.node(c).num_units // blocks for c in node.children]
    return np.concatenate([slots[c] + run * np.arange(blocks)[:, None] + np.arange(run)[None, :]
                           for c, run in zip(node.children, runs, strict=True)], axis=1).astype(np.int64)


def _input_layer(graph: CircuitGraph, params: Parameters, nodes: list[Node], start: int) -> InputLayer:
    var = np.concatenate([np.full(n.num_units, n.var, dtype=np.int64) for n in nodes])
    family = "gaussian" if nodes[0].family == "gaussian" else "categorical"
    groups = tuple(input_group(n) for n in nodes)
    tables = tuple(dict.fromkeys(groups))  # tied leaves share one table, in order of first use
    width = nodes[0].num_units
    table_of = {g: i for i, g in enumerate(tables)}
    rows = np.concatenate([table_of[g] * width + np.arange(width, dtype=np.int64) for g in groups])
    layer = InputLayer(family, start, var, tuple(n.name for n in nodes), {},
                       tuple(str(n.family) for n in nodes), tuple(n.num_units for n in nodes), groups, rows, tables)
    cards = tuple(v.domain.size for v in graph.variables)
    return replace(layer, params=input_block(layer, params, cards))


def input_block(layer: InputLayer, params: Parameters, cardinalities: tuple[int | None, ...]) -> dict[str, np.ndarray]:
    """An input layer's parameter table, laid out row by row (``layer.rows`` maps units to rows):
    categorical ``log_probs`` (R, K) padded with log 0, or gaussian ``mean`` and ``std`` (R,)."""
    if layer.family == "gaussian":
        return {k: np.concatenate([params.inputs[g][k] for g in layer.tables]).astype(np.float64)
                for k in ("mean", "std")}
    first, sizes = layer.table_nodes(), layer.table_cardinalities(cardinalities)
    out = np.full((len(layer.tables) * layer.width, max(c or 0 for c in sizes)), -np.inf)  # padding: probability 0
    for i, group in enumerate(layer.tables):
        size = sizes[i]
        assert size is not None
        probs = categorical_probs(layer.families[first[i]], params.inputs[group], size)
        with np.errstate(divide="ignore"):
            out[i * layer.width:(i + 1) * layer.width, :size] = np.log(probs)
    return {"log_probs": out}


def categorical_probs(family: str, p: dict[str, np.ndarray], size: int) -> np.ndarray:
    """(units, size) probabilities of a categorical, Bernoulli or indicator group."""
    if family == "categorical":
        return np.asarray(p["probs"], dtype=np.float64)
    if family == "bernoulli":
        return np.stack([1 - p["p"], p["p"]], axis=1).astype(np.float64)
    return np.eye(size)[p["value"]]


def with_parameters(plan: LayeredPlan, params: Parameters,
                    layers_to_change: Collection[int] | None = None) -> LayeredPlan:
    """The same plan with every parameter block (of the layers `layers_to_change`, by index, when
    given) taken from `params` (e.g. after an EM step)."""
    layers: list[Layer] = []
    for i, layer in enumerate(plan.layers):
        if layers_to_change is not None and i not in layers_to_change:
            pass
        elif isinstance(layer, InputLayer):
            layer = replace(layer, params=input_block(layer, params, plan.cardinalities))
        elif isinstance(layer, SumLayer):
            weights = fold_weights(layer, params)
            layer = replace(layer, weights=weights, sparse=sparse_pattern(weights, plan.sparse_density))
        layers.append(layer)
    return replace(plan, layers=tuple(layers), fixed=params.fixed)


def plan_parameters(plan: LayeredPlan) -> Parameters:
    """The parameters a plan holds, by group (the inverse of :func:`with_parameters`): each sum
    group's rows gathered from its folds, each leaf table's rows cut to its variable's categories
    (Bernoulli ``p`` and indicator ``value`` recovered from their two or k log-probabilities)."""
    params = Parameters(fixed=plan.fixed)
    for layer in plan.layers:
        if isinstance(layer, SumLayer):
            _sum_groups(layer, params)
        elif isinstance(layer, InputLayer):
            _input_groups(layer, plan, params)
    return params


def _sum_groups(layer: SumLayer, params: Parameters) -> None:
    m = layer.shape[1]
    for fold, (group, row) in enumerate(zip(layer.groups, layer.rows or (0,) * len(layer.groups), strict=True)):
        block = params.weights.get(group)
        if block is None or len(block) < row + m:  # grown to the rows this fold needs
            grown = np.zeros((row + m, layer.shape[2]))
            if block is not None:
                grown[:len(block)] = block
            block = params.weights[group] = grown
        block[row:row + m] = layer.weights[fold]


def _input_groups(layer: InputLayer, plan: LayeredPlan, params: Parameters) -> None:
    width, first = layer.width, layer.table_nodes()
    sizes = layer.table_cardinalities(plan.cardinalities)
    for i, group in enumerate(layer.tables):
        rows = slice(i * width, (i + 1) * width)
        if layer.family == "gaussian":
            params.inputs[group] = {k: np.array(layer.params[k][rows], dtype=np.float64) for k in ("mean", "std")}
            continue
        probs = np.exp(layer.params["log_probs"][rows, :sizes[i]])
        family = layer.families[first[i]]
        params.inputs[group] = ({"probs": probs} if family == "categorical" else {"p": probs[:, 1].copy()}
                                if family == "bernoulli" else {"value": probs.argmax(axis=1)})


def dump_plan(plan: LayeredPlan) -> str:
    """A stable text form of the plan, for debugging and golden tests."""
    lines = [f"plan {plan.name}: {plan.num_slots} slots, {len(plan.layers)} layers, root slot {plan.root}"]
    for i, layer in enumerate(plan.layers):
        if isinstance(layer, InputLayer):
            desc = f"input {layer.family} units={len(layer.var)}"
        elif isinstance(layer, ProductLayer):
            desc = f"product units={layer.index.shape[0]} fan_in={layer.index.shape[1]}"
        else:
            f, m, c = layer.shape
            desc = f"sum fold={f} units={m} inputs={c} edges={f * m * c}"
            if layer.sparse is not None:
                desc += f" sparse={layer.sparse.edges}"
        lines.append(f"  layer {i}: {desc} slots [{layer.start}, {layer.stop}) nodes {_names(layer.nodes)}")
    return "\n".join(lines) + "\n"


def _names(names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:4])
    return f"[{shown}{', ...' if len(names) > 4 else ''}] ({len(names)})"
