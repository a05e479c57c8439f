"""Concrete parameters for every node group of a circuit graph.

A `.pc` file may leave parameters out (they are learned); before a circuit
runs, every one needs a value. :func:`initialise` keeps what the file gave
and draws the rest: weights proportional to ``1 - p + 2p U(0, 1)`` (p the
perturbation), normalised; categorical and Bernoulli leaves the same way;
Gaussian leaves mean ~ N(0, 1), std 1. Tied sums share one array.

Layout (float64 numpy arrays, one row per unit):

- categorical: ``probs`` (units, categories); bernoulli: ``p`` (units,);
  gaussian: ``mean``, ``std`` (units,); indicator: ``value`` (units,) int;
- sums: ``weights[group]`` (units, child units // blocks), rows add up to 1, where
  the group is the tie name or the sum's own name. A block-diagonal sum's row m belongs
  to block b = m // (units / blocks) and its columns are block b's units of each child,
  children in order (:func:`block_inputs`).
- inputs are keyed the same way: a tied leaf reads its group's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pcdsl.ir.graph import CircuitGraph, Node, NodeKind


@dataclass
class Parameters:
    inputs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    fixed: frozenset[str] = frozenset()  # keys of `inputs` and `weights` that learning keeps

    def sum_weights(self, node: Node) -> np.ndarray:
        return self.weights[weight_group(node)]

    def leaf(self, node: Node) -> dict[str, np.ndarray]:
        return self.inputs[input_group(node)]


def weight_group(node: Node) -> str:
    """The name under which a sum's weights are stored: its tie group, or itself."""
    return node.tie or node.name


def input_group(node: Node) -> str:
    """The name under which a leaf's parameters are stored: its tie group, or itself."""
    return node.tie or node.name


def weight_shape(graph: CircuitGraph, node: Node) -> tuple[int, int]:
    """The stored shape of a sum's weights: (units, child units // blocks)."""
    return node.num_units, graph.child_units(node) // node.blocks


def block_inputs(graph: CircuitGraph, node: Node, block: int) -> list[tuple[str, int]]:
    """The (child, unit) pairs behind the weight columns of one block of a sum, in order
    (the whole row when the sum has one block)."""
    out = []
    for c in node.children:
        run = graph.node(c).num_units // node.blocks
        out += [(c, block * run + u) for u in range(run)]
    return out


def _perturbed(rng: np.random.Generator, shape: tuple[int, ...], perturbation: float) -> np.ndarray:
    w = 1.0 - perturbation + 2.0 * perturbation * rng.random(shape)
    return w / w.sum(axis=-1, keepdims=True)


def initialise(graph: CircuitGraph, seed: int = 0, perturbation: float = 0.5) -> Parameters:
    """Parameters for every node: the file's own values, random ones for the rest."""
    if not 0.0 <= perturbation <= 1.0:
        raise ValueError(f"perturbation must be in [0, 1], got {perturbation}")
    rng = np.random.default_rng(seed)
    params = Parameters()
    for node in graph.nodes():  # insertion order, so the draws are reproducible
        if node.kind is NodeKind.INPUT and input_group(node) not in params.inputs:
            owner = graph.node(node.tie) if node.tie is not None and node.tie in graph else node
            params.inputs[input_group(node)] = _input(graph, owner, rng, perturbation)
        elif node.kind is NodeKind.SUM and weight_group(node) not in params.weights:
            shape = weight_shape(graph, node)
            given = node.weights
            if given is None and node.tie is not None and node.tie in graph:
                given = graph.node(node.tie).weights
            params.weights[weight_group(node)] = (np.array(given, dtype=np.float64) if given is not None
                                                  else _perturbed(rng, shape, perturbation))
    params.fixed = fixed_keys(graph)
    return params


def fixed_keys(graph: CircuitGraph) -> frozenset[str]:
    """The parameter keys of nodes marked fixed (a fixed tied sum fixes its whole group)."""
    return frozenset(weight_group(n) if n.kind is NodeKind.SUM else input_group(n)
                     for n in graph.nodes() if n.fixed and n.kind is not NodeKind.PRODUCT)


def _input(graph: CircuitGraph, node: Node, rng: np.random.Generator, perturbation: float) -> dict[str, np.ndarray]:
    if node.params is not None:
        return {k: np.array(v) for k, v in node.params.items()}
    assert node.var is not None
    units = node.num_units
    if node.family == "categorical":
        size = graph.variables[node.var].domain.size
        assert size is not None
        return {"probs": _perturbed(rng, (units, size), perturbation)}
    if node.family == "bernoulli":
        return {"p": _perturbed(rng, (units, 2), perturbation)[:, 1].copy()}
    if node.family == "gaussian":
        return {"mean": rng.standard_normal(units), "std": np.ones(units)}
    raise ValueError(f"{node.family} leaves have no learned parameters")
