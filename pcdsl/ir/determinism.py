"""A sound syntactic check of determinism.

Each unit gets an over-approximation of its *support*: for some variables, the
set of values where it can be non-zero (a variable not listed may take any
value). A sum unit is deterministic when every two of its inputs (with
non-zero weight) are certified disjoint: some variable is restricted in both
to sets that do not meet. "Not proved" never means "not deterministic".
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import numpy as np

from pcdsl.ir.graph import CircuitGraph, Node, NodeKind
from pcdsl.params import block_inputs

Support = dict[int, frozenset[int]]  # variable -> values where the unit may be non-zero

MAX_UNITS = 200_000  # beyond this the analysis is skipped, not guessed


def determinism(graph: CircuitGraph) -> tuple[bool, str]:
    """(proved, explanation)."""
    if graph.num_units() > MAX_UNITS:
        return False, f"not analysed: more than {MAX_UNITS} units"
    supports: dict[str, list[Support]] = {}
    for node in graph.nodes():
        if node.kind is NodeKind.INPUT:
            supports[node.name] = _input_supports(graph, node)
        elif node.kind is NodeKind.PRODUCT:
            supports[node.name] = _product_supports(node, supports)
        else:
            inputs = [[supports[c][u] for c, u in block_inputs(graph, node, b)] for b in range(node.blocks)]
            run = node.num_units // node.blocks  # unit u reads the inputs of its block u // run
            witness = _sum_witness(node, lambda u: inputs[u // run])  # noqa: B023 (used at once)
            if witness is not None:
                return False, f"not proved: sum '{node.name}' {witness}"
            supports[node.name] = [_join(_active(node, u, inputs[u // run])) for u in range(node.num_units)]
    return True, "proved"


def _input_supports(graph: CircuitGraph, node: Node) -> list[Support]:
    assert node.var is not None
    size = graph.variables[node.var].domain.size
    params = node.params
    if params is None or size is None:
        return [{} for _ in range(node.num_units)]
    if node.family == "indicator":
        return [{node.var: frozenset([int(v)])} for v in params["value"]]
    if node.family == "categorical":
        return [{node.var: frozenset(np.flatnonzero(row > 0).tolist())} for row in params["probs"]]
    if node.family == "bernoulli":
        return [{node.var: frozenset(v for v, p in ((0, 1 - q), (1, q)) if p > 0)} for q in params["p"]]
    return [{} for _ in range(node.num_units)]


def _product_supports(node: Node, supports: dict[str, list[Support]]) -> list[Support]:
    rows = [supports[c] for c in node.children]
    combos: Iterable[tuple[Support, ...]]
    if node.pattern == "kronecker":
        combos = itertools.product(*rows)
    else:  # hadamard: a one-unit child is broadcast
        combos = zip(*[r if len(r) == node.num_units else r * node.num_units for r in rows], strict=True)
    out = []
    for parts in combos:
        merged: Support = {}
        for part in parts:
            merged.update(part)  # children have disjoint scopes
        out.append(merged)
    return out


def _active(node: Node, unit: int, inputs: list[Support]) -> list[Support]:
    if node.weights is None:
        return inputs
    return [s for s, w in zip(inputs, node.weights[unit], strict=False) if w > 0]


def _sum_witness(node: Node, inputs: Callable[[int], list[Support]]) -> str | None:
    for unit in range(node.num_units):
        active = _active(node, unit, inputs(unit))
        for (i, a), (j, b) in itertools.combinations(enumerate(active), 2):
            if not any(v in b and not (a[v] & b[v]) for v in a):
                where = f"unit {unit}: " if node.num_units > 1 else ""
                return f"({where}inputs {i} and {j} may both be non-zero)"
    return None


def _join(inputs: list[Support]) -> Support:
    """The support of a mixture: restricted only where every input is."""
    if not inputs:
        return {}
    common = set(inputs[0]).intersection(*inputs[1:])
    return {v: frozenset().union(*(s[v] for s in inputs)) for v in common}
