"""The reference evaluator: the executable semantics of a circuit, node by node.

Small, obviously correct, not fast: numpy, one node group at a time, log space.
Every backend is tested against it.

Data: a float array (batch, variables). A missing value is -1 for a discrete
variable and NaN for a real one; a missing variable is marginalised out
(sum mode) or maximised over (max mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pcdsl.ir.graph import CircuitGraph, Node, NodeKind
from pcdsl.params import Parameters, block_inputs, input_group, weight_group

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def missing_mask(graph: CircuitGraph, x: np.ndarray) -> np.ndarray:
    discrete = np.array([v.domain.is_discrete for v in graph.variables])
    return np.isnan(x) | (discrete[None, :] & (x == -1))


def _missing_column(graph: CircuitGraph, x: np.ndarray, var: int) -> np.ndarray:
    """missing_mask's column `var`, without building the whole mask (O(batch), not O(batch x vars))."""
    column = x[:, var]
    return np.isnan(column) | (graph.variables[var].domain.is_discrete & (column == -1))


def _log(a: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(a)


def input_values(graph: CircuitGraph, params: Parameters, node: Node, x: np.ndarray, mode: str) -> np.ndarray:
    """(batch, units) log-values of an input group."""
    assert node.var is not None
    p = params.leaf(node)
    column = x[:, node.var]
    missing = _missing_column(graph, x, node.var)
    safe = np.where(missing, 0, column)
    if node.family == "categorical":
        table = _log(p["probs"])  # (units, k)
        observed = table[:, safe.astype(np.int64)].T
        free = table.max(axis=1) if mode == "max" else np.zeros(node.num_units)
    elif node.family == "bernoulli":
        table = _log(np.stack([1 - p["p"], p["p"]], axis=1))
        observed = table[:, safe.astype(np.int64)].T
        free = table.max(axis=1) if mode == "max" else np.zeros(node.num_units)
    elif node.family == "gaussian":
        z = (safe[:, None] - p["mean"][None, :]) / p["std"][None, :]
        observed = -0.5 * z**2 - np.log(p["std"])[None, :] - LOG_SQRT_2PI
        free = -np.log(p["std"]) - LOG_SQRT_2PI if mode == "max" else np.zeros(node.num_units)
    elif node.family == "indicator":
        observed = np.where(safe[:, None] == p["value"][None, :], 0.0, -np.inf)
        free = np.zeros(node.num_units)
    else:
        raise ValueError(f"unknown leaf family {node.family}")
    return np.where(missing[:, None], free[None, :], observed)


def logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # all -inf stays -inf, never NaN
    with np.errstate(divide="ignore"):
        return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def product_children_units(graph: CircuitGraph, node: Node) -> list[list[tuple[str, int]]]:
    """For each unit of a product, the (child, unit) pairs it multiplies."""
    sizes = [graph.node(c).num_units for c in node.children]
    out = []
    for u in range(node.num_units):
        if node.pattern == "kronecker":
            idx = np.unravel_index(u, sizes)
            out.append([(c, int(i)) for c, i in zip(node.children, idx, strict=True)])
        else:
            out.append([(c, u if s > 1 else 0) for c, s in zip(node.children, sizes, strict=True)])
    return out


def sum_inputs(graph: CircuitGraph, node: Node, unit: int = 0) -> list[tuple[str, int]]:
    """The (child, unit) pairs behind the weight columns of one unit of a sum, in order."""
    return block_inputs(graph, node, unit // (node.num_units // node.blocks))


def _block_rows(node: Node) -> list[slice]:
    run = node.num_units // node.blocks
    return [slice(b * run, (b + 1) * run) for b in range(node.blocks)]


def _gather(values: dict[str, np.ndarray], pairs: list[tuple[str, int]]) -> np.ndarray:
    """(B, len(pairs)) values of the given (node, unit) pairs."""
    return np.stack([values[c][:, u] for c, u in pairs], axis=1)


def forward(graph: CircuitGraph, params: Parameters, x: np.ndarray, mode: str = "sum") -> dict[str, np.ndarray]:
    """Log-values of every node group: sum-product (`sum`) or max-product (`max`)."""
    values: dict[str, np.ndarray] = {}
    for node in graph.nodes():
        if node.kind is NodeKind.INPUT:
            values[node.name] = input_values(graph, params, node, x, mode)
        elif node.kind is NodeKind.PRODUCT:
            rows = product_children_units(graph, node)
            values[node.name] = np.stack([sum(values[c][:, i] for c, i in row) for row in rows], axis=1)
        else:
            out = np.empty((x.shape[0], node.num_units))
            for b, block in enumerate(_block_rows(node)):
                inputs = _gather(values, block_inputs(graph, node, b))  # (B, C)
                scores = _log(params.sum_weights(node)[block])[None, :, :] + inputs[:, None, :]  # (B, M, C)
                out[:, block] = scores.max(axis=2) if mode == "max" else logsumexp(scores, axis=2)
            values[node.name] = out
    return values


def log_prob(graph: CircuitGraph, params: Parameters, x: np.ndarray) -> np.ndarray:
    """log p(x) per row; missing entries are marginalised."""
    return forward(graph, params, np.asarray(x, dtype=np.float64))[graph.root.name][:, 0]


@dataclass
class Flows:
    """Expected sufficient statistics, summed over a batch.

    ``weights[group]``: (units, child units) edge flows; ``inputs[node]``: per family
    ``counts`` (units, k) for categorical and bernoulli (k = 2); for gaussian ``n`` (the flow),
    ``dx`` and ``dxx``, the flow-weighted sums of ``x - mean`` and ``(x - mean)^2`` about the
    unit's mean when the flows were taken (a missing value counts 0 and ``std^2``: its
    expectation); ``node[name]``: (batch, units) flow of every unit.
    """

    weights: dict[str, Any] = field(default_factory=dict)  # numpy arrays here; tensors from torch
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    node: dict[str, Any] = field(default_factory=dict)
    log_likelihood: float = 0.0  # of the batch, summed over rows


def flows(graph: CircuitGraph, params: Parameters, x: np.ndarray) -> Flows:
    """Top-down flows: root flow 1, split at sums in proportion to w * p(child) / p(sum)."""
    x = np.asarray(x, dtype=np.float64)
    values = forward(graph, params, x)
    out = Flows()
    order = list(graph.nodes())
    f = {n.name: np.zeros_like(values[n.name]) for n in order}
    f[graph.root.name][:, 0] = 1.0
    for node in reversed(order):
        if node.kind is NodeKind.SUM:
            _sum_flows(graph, params, node, values, f, out)
        elif node.kind is NodeKind.PRODUCT:
            for u, row in enumerate(product_children_units(graph, node)):
                for c, i in row:
                    f[c][:, i] += f[node.name][:, u]
        else:
            stats = _input_stats(graph, params, node, x, f[node.name])
            slot = out.inputs.setdefault(input_group(node), {})  # tied leaves add their statistics
            for key, value in stats.items():
                slot[key] = slot.get(key, 0) + value
    out.node = f
    out.log_likelihood = float(values[graph.root.name][:, 0].sum())
    return out


def _sum_flows(graph: CircuitGraph, params: Parameters, node: Node, values: dict[str, np.ndarray],
               f: dict[str, np.ndarray], out: Flows) -> None:
    group = weight_group(node)
    total = np.zeros_like(params.sum_weights(node))
    for b, rows in enumerate(_block_rows(node)):
        pairs = block_inputs(graph, node, b)
        inputs = _gather(values, pairs)  # (B, C)
        parent = values[node.name][:, rows]  # (B, M)
        with np.errstate(invalid="ignore"):  # w p(child) / p(sum) <= 1: one exp, never inf * 0
            share = np.exp(_log(params.sum_weights(node)[rows])[None] + inputs[:, None, :] - parent[:, :, None])
        share = np.where(np.isfinite(parent)[:, :, None], share, 0.0)
        edge = f[node.name][:, rows, None] * share  # (B, M, C)
        total[rows] = edge.sum(axis=0)
        child_flow = edge.sum(axis=1)  # (B, C)
        for col, (c, i) in enumerate(pairs):
            f[c][:, i] += child_flow[:, col]
    out.weights[group] = out.weights.get(group, 0) + total


def _input_stats(graph: CircuitGraph, params: Parameters, node: Node, x: np.ndarray,
                 flow: np.ndarray) -> dict[str, np.ndarray]:
    assert node.var is not None
    p = params.leaf(node)
    missing = _missing_column(graph, x, node.var)
    column = np.where(missing, 0, x[:, node.var])
    if node.family in ("categorical", "bernoulli"):
        probs = p["probs"] if node.family == "categorical" else np.stack([1 - p["p"], p["p"]], axis=1)
        onehot = np.eye(probs.shape[1])[column.astype(np.int64)]  # (B, k)
        expected = np.where(missing[:, None, None], probs[None], onehot[:, None, :])  # (B, U, k)
        return {"counts": (flow[:, :, None] * expected).sum(axis=0)}
    if node.family == "gaussian":  # centred on the current mean: raw moments would cancel
        mean, var = p["mean"][None, :], p["std"][None, :] ** 2
        d = np.where(missing[:, None], 0.0, column[:, None] - mean)
        dd = np.where(missing[:, None], var, d**2)  # a missing value counts in expectation
        return {"n": flow.sum(axis=0), "dx": (flow * d).sum(axis=0), "dxx": (flow * dd).sum(axis=0)}
    return {}


def top_down(graph: CircuitGraph, params: Parameters, x: np.ndarray, mode: str,
             rng: np.random.Generator | None = None) -> np.ndarray:
    """Complete the missing entries of each row: argmax choices (`map`) or draws (`sample`)."""
    x = np.array(x, dtype=np.float64)
    values = forward(graph, params, x, "max" if mode == "map" else "sum")
    missing = missing_mask(graph, x)
    for b in range(x.shape[0]):
        stack = [(graph.root.name, 0)]
        while stack:
            name, unit = stack.pop()
            node = graph.node(name)
            if node.kind is NodeKind.PRODUCT:
                stack += product_children_units(graph, node)[unit]
            elif node.kind is NodeKind.SUM:
                pairs = sum_inputs(graph, node, unit)
                inputs = np.array([values[c][b, u] for c, u in pairs])
                scores = _log(params.sum_weights(node)[unit]) + inputs
                stack.append(pairs[_choose(scores, mode, rng)])
            else:
                assert node.var is not None
                if missing[b, node.var]:
                    x[b, node.var] = _leaf_value(params.leaf(node), node.family, unit, mode, rng)
    return x


def _choose(scores: np.ndarray, mode: str, rng: np.random.Generator | None) -> int:
    if mode == "map":
        return int(np.argmax(scores))
    assert rng is not None
    probs = np.exp(scores - logsumexp(scores, axis=0))
    return int(rng.choice(len(scores), p=probs / probs.sum()))


def _leaf_value(p: dict[str, np.ndarray], family: str | None, unit: int, mode: str,
                rng: np.random.Generator | None) -> float:
    if family == "indicator":
        return float(p["value"][unit])
    if family == "gaussian":
        mean, std = p["mean"][unit], p["std"][unit]
        return float(mean if mode == "map" else rng.normal(mean, std))  # type: ignore[union-attr]
    probs = p["probs"][unit] if family == "categorical" else np.array([1 - p["p"][unit], p["p"][unit]])
    if mode == "map":
        return float(np.argmax(probs))
    return float(rng.choice(len(probs), p=probs / probs.sum()))  # type: ignore[union-attr]


def _complete(graph: CircuitGraph, params: Parameters, x: np.ndarray, mode: str,
              rng: np.random.Generator | None = None) -> np.ndarray:
    """top_down on the rows whose evidence is possible; rows of probability zero have no
    completion (every one has probability 0): their missing entries become NaN."""
    x = np.array(x, dtype=np.float64)
    possible = np.isfinite(log_prob(graph, params, x))
    out = x.copy()
    out[~possible] = np.where(missing_mask(graph, x[~possible]), np.nan, x[~possible])
    if possible.any():
        out[possible] = top_down(graph, params, x[possible], mode, rng)
    return out


def map_state(graph: CircuitGraph, params: Parameters, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max-product completion of the missing entries and its exact log-probability
    (NaN entries and -inf where the evidence has probability zero)."""
    completed = _complete(graph, params, np.atleast_2d(x), "map")
    return completed, log_prob(graph, params, completed)


def sample(graph: CircuitGraph, params: Parameters, n: int, evidence: np.ndarray | None = None,
           seed: int = 0) -> np.ndarray:
    """Ancestral samples; with `evidence` (one row, or n rows), from p(missing | observed).
    Where the evidence has probability zero the conditional is undefined: those rows come back
    with NaN in every missing entry."""
    rng = np.random.default_rng(seed)
    if evidence is None:
        evidence = np.full((n, len(graph.variables)), np.nan)
    evidence = np.atleast_2d(np.asarray(evidence, dtype=np.float64))
    if evidence.shape[0] == 1:
        evidence = np.repeat(evidence, n, axis=0)
    return _complete(graph, params, evidence, "sample", rng)
