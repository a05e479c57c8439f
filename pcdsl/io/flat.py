"""Scalar circuits in flat arrays: what the line-based formats read into and write from.

A :class:`Flat` circuit has one node per unit (the scalar circuits of Juice.jl, PSDDs and
SDDs), stored children first in arrays, so files of millions of nodes read without a Python
object per edge and nothing recurses on depth. :func:`to_graph` makes a pcdsl circuit graph of it
(one-unit node groups that carry their parameters, each with the span of its file line), and
:func:`from_graph` expands any pcdsl circuit (vector node groups, kronecker products,
block-diagonal and tied sums) into one.

Leaf parameters, by family: indicator ``[value]``, bernoulli ``[p]``, categorical ``[p_0, ...]``,
gaussian ``[mean, std]``. Sum weights are probabilities (one per child edge); product edges
carry weight 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pcdsl.diagnostics import NO_SPAN, Diagnostic, Source, Span, warning
from pcdsl.io.textformat import token_span
from pcdsl.ir.graph import CircuitGraph, Node, NodeKind, Variable
from pcdsl.ir.scope import EMPTY, Scope
from pcdsl.ir.validate import validate
from pcdsl.params import Parameters, block_inputs
from pcdsl.reference import product_children_units

LEAF, PRODUCT, SUM = 0, 1, 2
FAMILIES = ("indicator", "bernoulli", "categorical", "gaussian")
INDICATOR, BERNOULLI, CATEGORICAL, GAUSSIAN = range(4)


class FormatError(ValueError):
    """A circuit that a file format cannot hold (the message says what and why)."""


@dataclass
class Flat:
    """A scalar circuit, children first; the last node is the root."""

    variables: tuple[Variable, ...]
    kind: np.ndarray  # (nodes,) int8: LEAF, PRODUCT or SUM
    offsets: np.ndarray  # (nodes + 1,) int64: node i's children are children[offsets[i]:offsets[i + 1]]
    children: np.ndarray  # int64 positions, each smaller than its parent's
    weights: np.ndarray  # float64, one per child edge
    family: np.ndarray  # (nodes,) int8 index into FAMILIES; -1 for products and sums
    var: np.ndarray  # (nodes,) int64 0-based variable of each leaf; -1 for products and sums
    param_offsets: np.ndarray  # (nodes + 1,) int64 into params
    params: np.ndarray  # float64 leaf parameters (module doc)
    name: str = "circuit"
    names: list[str] | None = None  # node names in the circuit graph (default n0, n1, ...)
    source: Source | None = None  # the file the nodes came from, for spans
    lines: np.ndarray | None = None  # (nodes,) 1-based line of each node in `source`
    tokens: np.ndarray | None = None  # (nodes,) token of that line the node stands for (-1: the line)

    def __len__(self) -> int:
        return len(self.kind)

    def num_edges(self) -> int:
        return len(self.children)

    def node_children(self, i: int) -> np.ndarray:
        return self.children[self.offsets[i]:self.offsets[i + 1]]

    def node_weights(self, i: int) -> np.ndarray:
        return self.weights[self.offsets[i]:self.offsets[i + 1]]

    def leaf_params(self, i: int) -> np.ndarray:
        return self.params[self.param_offsets[i]:self.param_offsets[i + 1]]

    def node_name(self, i: int) -> str:
        return self.names[i] if self.names is not None else f"n{i}"

    def span(self, i: int) -> Span:
        if self.source is None or self.lines is None or self.lines[i] <= 0:
            return NO_SPAN
        token = None if self.tokens is None or self.tokens[i] < 0 else int(self.tokens[i])
        return token_span(self.source, int(self.lines[i]), token)


class Builder:
    """Builds a Flat one node at a time (for writers and conversions; readers fill arrays)."""

    def __init__(self, variables: tuple[Variable, ...], name: str = "circuit") -> None:
        self.variables, self.name = variables, name
        self.kind: list[int] = []
        self.degree: list[int] = []
        self.children: list[int] = []
        self.weights: list[float] = []
        self.family: list[int] = []
        self.var: list[int] = []
        self.sizes: list[int] = []
        self.params: list[float] = []
        self.names: list[str] = []
        self.lines: list[int] = []  # source line of each node (0: none), for spans
        self.line = 0  # the line of the nodes being added now

    def _node(self, kind: int, family: int, var: int, name: str | None) -> int:
        self.lines.append(self.line)
        self.kind.append(kind)
        self.family.append(family)
        self.var.append(var)
        self.names.append(name if name is not None else f"n{len(self.kind) - 1}")
        return len(self.kind) - 1

    def leaf(self, family: int, var: int, params: Sequence[float], name: str | None = None) -> int:
        self.degree.append(0)
        self.sizes.append(len(params))
        self.params.extend(params)
        return self._node(LEAF, family, var, name)

    def product(self, children: Sequence[int], name: str | None = None) -> int:
        return self._inner(PRODUCT, children, [1.0] * len(children), name)

    def sum(self, children: Sequence[int], weights: Sequence[float], name: str | None = None) -> int:
        return self._inner(SUM, children, weights, name)

    def _inner(self, kind: int, children: Sequence[int], weights: Sequence[float], name: str | None) -> int:
        self.degree.append(len(children))
        self.children.extend(children)
        self.weights.extend(weights)
        self.sizes.append(0)
        return self._node(kind, -1, -1, name)

    def build(self, source: Source | None = None) -> Flat:
        def offsets(sizes: list[int]) -> np.ndarray:
            return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)

        return Flat(self.variables, np.array(self.kind, dtype=np.int8), offsets(self.degree),
                    np.array(self.children, dtype=np.int64), np.array(self.weights, dtype=np.float64),
                    np.array(self.family, dtype=np.int8), np.array(self.var, dtype=np.int64),
                    offsets(self.sizes), np.array(self.params, dtype=np.float64), self.name, self.names, source,
                    np.array(self.lines, dtype=np.int64) if source is not None else None)


# ---- Flat -> CircuitGraph -----------------------------------------------------------------------
def reachable(flat: Flat) -> np.ndarray:
    """Which nodes the root (the last node) reaches. Without recursion: when the root is the only
    node without parents every node is reached; otherwise one sweep from the root down."""
    n = len(flat)
    has_parent = np.zeros(n, dtype=bool)
    has_parent[flat.children] = True
    if n == 0 or has_parent[:-1].all():
        return np.ones(n, dtype=bool)
    seen = np.zeros(n, dtype=bool)
    seen[n - 1] = True
    offsets, children = flat.offsets, flat.children
    for i in range(n - 1, -1, -1):  # children come before parents, so one backward sweep suffices
        if seen[i]:
            seen[children[offsets[i]:offsets[i + 1]]] = True
    return seen


def to_graph(flat: Flat) -> tuple[CircuitGraph, Parameters, list[Diagnostic]]:
    """A pcdsl circuit graph of one-unit node groups that carry their parameters (so
    ``pcdsl.compile(graph)`` runs the file's model), those parameters, and diagnostics: errors when
    the circuit is not smooth and decomposable (pcdsl's own validation, located in the file) and
    warnings (nodes the root does not reach are left out). Duplicate children of a sum are merged
    (their weights added). Built in bulk, without recursion."""
    keep = reachable(flat)
    found = []
    dropped = np.flatnonzero(~keep)
    if len(dropped):
        many = len(dropped) != 1
        found.append(warning("W0701", f"{len(dropped)} node{'s' if many else ''} that the root (the last node) "
                             f"does not reach {'are' if many else 'is'} left out", flat.span(int(dropped[0])),
                             help="a circuit file describes one circuit, rooted at its last node"))
    empty = Span.at_start(flat.source) if flat.source is not None else NO_SPAN
    graph = CircuitGraph(flat.name, flat.variables, flat.span(len(flat) - 1) if len(flat) else empty)
    nodes, params, suspect = _nodes(flat, keep)
    graph.add_nodes(nodes)
    full = Scope.full(len(flat.variables))
    if suspect or not nodes or nodes[-1].scope != full:  # pcdsl's validation says what and where
        found += validate(graph)
    return graph, params, found


def _nodes(flat: Flat, keep: np.ndarray) -> tuple[list[Node], Parameters, bool]:
    """The graph's nodes and parameters, and whether some sum or product may be invalid."""
    names = flat.names if flat.names is not None else [f"n{i}" for i in range(len(flat))]
    kinds, offsets, children = flat.kind.tolist(), flat.offsets.tolist(), flat.children.tolist()
    variables, weights = flat.var.tolist(), flat.weights
    scope = [EMPTY] * len(flat)
    nodes: list[Node] = []
    params = Parameters()
    suspect = False
    for i in np.flatnonzero(keep).tolist():
        span = flat.span(i)
        kids = children[offsets[i]:offsets[i + 1]]
        if kinds[i] == LEAF:
            family = FAMILIES[flat.family[i]]
            leaf = params.inputs[names[i]] = _leaf_params(family, flat.leaf_params(i))
            scope[i] = Scope(1, variables[i])
            nodes.append(Node(names[i], NodeKind.INPUT, 1, (), scope[i], family=family, var=variables[i],
                              params=leaf, span=span))
            continue
        mask = scope[i] = Scope.union(scope[c] for c in kids)
        if kinds[i] == PRODUCT:
            suspect = suspect or len(mask) != sum(len(scope[c]) for c in kids)
            nodes.append(Node(names[i], NodeKind.PRODUCT, 1, tuple(names[c] for c in kids), mask, pattern="hadamard",
                              span=span))
        else:
            suspect = suspect or any(scope[c] != scope[kids[0]] for c in kids)
            merged, w = merge_children(kids, weights[offsets[i]:offsets[i + 1]])
            params.weights[names[i]] = w[None, :]
            nodes.append(Node(names[i], NodeKind.SUM, 1, tuple(names[c] for c in merged), mask, weights=w[None, :],
                              span=span))
    return nodes, params, suspect


def _leaf_params(family: str, values: np.ndarray) -> dict[str, np.ndarray]:
    if family == "indicator":
        return {"value": values[:1].astype(np.int64)}
    if family == "bernoulli":
        return {"p": values[:1].copy()}
    if family == "categorical":
        return {"probs": values[None, :].copy()}
    return {"mean": values[:1].copy(), "std": values[1:2].copy()}


def merge_children(children: list[int], weights: np.ndarray) -> tuple[list[int], np.ndarray]:
    if len(set(children)) == len(children):
        return children, np.asarray(weights, dtype=np.float64)
    total: dict[int, float] = {}
    for c, w in zip(children, weights.tolist(), strict=True):
        total[c] = total.get(c, 0.0) + w
    return list(total), np.array(list(total.values()), dtype=np.float64)


# ---- CircuitGraph -> Flat ------------------------------------------------------------------------
def from_graph(graph: CircuitGraph, params: Parameters) -> Flat:
    """The scalar circuit of a pcdsl circuit: one node per unit, named after its group (``s`` for
    a one-unit group, ``s[3]`` for unit 3 of a larger one)."""
    b = Builder(graph.variables, graph.name)
    units: dict[str, list[int]] = {}
    for node in graph.nodes():
        names = [node.name] if node.num_units == 1 else [f"{node.name}[{u}]" for u in range(node.num_units)]
        if node.kind is NodeKind.INPUT:
            assert node.var is not None and node.family is not None
            rows = _leaf_rows(node.family, params.leaf(node), node.num_units)
            family = FAMILIES.index(node.family)
            units[node.name] = [b.leaf(family, node.var, row, names[u]) for u, row in enumerate(rows)]
        elif node.kind is NodeKind.PRODUCT:
            units[node.name] = [b.product([units[c][k] for c, k in pairs], names[u])
                                for u, pairs in enumerate(product_children_units(graph, node))]
        else:
            w = params.sum_weights(node)
            run = node.num_units // node.blocks
            columns = [[units[c][k] for c, k in block_inputs(graph, node, block)] for block in range(node.blocks)]
            units[node.name] = [b.sum(columns[u // run], w[u].tolist(), names[u]) for u in range(node.num_units)]
    return b.build()


def _leaf_rows(family: str, p: dict[str, np.ndarray], units: int) -> list[list[float]]:
    if family == "indicator":
        return [[float(v)] for v in p["value"]]
    if family == "bernoulli":
        return [[float(v)] for v in p["p"]]
    if family == "categorical":
        return [list(map(float, row)) for row in np.asarray(p["probs"]).reshape(units, -1)]
    return [[float(m), float(s)] for m, s in zip(p["mean"], p["std"], strict=True)]


def scopes(flat: Flat) -> list[Scope]:
    """Each node's variables (children first, so one pass)."""
    out: list[Scope] = []
    var, kind, offsets, children = flat.var.tolist(), flat.kind.tolist(), flat.offsets.tolist(), flat.children.tolist()
    for i in range(len(flat)):
        if kind[i] == LEAF:
            out.append(Scope(1, var[i]))
        else:
            out.append(Scope.union(out[c] for c in children[offsets[i]:offsets[i + 1]]))
    return out
