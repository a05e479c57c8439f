"""The circuits that progressive growing grows, and the edits it makes to them.

A global cluster's circuit (:class:`ClusterCircuit`) is an HCLT over a patch's pixels whose
latent variable v has ``hidden[v]`` states (latents grow unevenly), topped by a sum group of
S heads over the root latent: head s = p(x | sub-cluster s). Every edit keeps a valid circuit
whose rows are distributions: :func:`prune` zeroes low-flow edges (each unit keeps its best one),
:func:`duplicate_states` copies latent states (exactly the same distribution without noise).
Parameters are named as the nodes (``g{g}/j{p}.in``, ``g{g}/j{v}.sum``, ``g{g}/heads``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from pcdsl.diagnostics import InternalError
from pcdsl.distill.compose import PatchFamily, PatchShape
from pcdsl.ir.graph import CircuitGraph, Domain, NodeKind, Variable
from pcdsl.ir.validate import validate
from pcdsl.params import Parameters, weight_shape
from pcdsl.reference import Flows


@dataclass(frozen=True)
class LatentTree:
    """The latent variables of a patch circuit: latent v has leaves over `pixels[v]` and the
    latents `kids[v]` below it; `order` lists them root first. An HCLT has one latent per pixel;
    a fully factorised patch has one latent over every pixel (a mixture of factorised heads)."""

    order: tuple[int, ...]
    kids: tuple[tuple[int, ...], ...]
    pixels: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, shape: PatchShape) -> LatentTree:
        if shape.factorized or shape.dims == 1:
            return cls((0,), ((),), (tuple(range(shape.dims)),))
        order, kids = shape.tree()
        return cls(tuple(order), tuple(tuple(kids[v]) for v in range(shape.dims)),
                   tuple((v,) for v in range(shape.dims)))


@dataclass(frozen=True)
class ClusterCircuit:
    """One global cluster's circuit: `hidden[v]` states of latent v, `heads` heads, node names
    under `prefix`. Its parameters are named as its nodes (no ties)."""

    tree: LatentTree
    hidden: tuple[int, ...]
    heads: int
    prefix: str

    @property
    def head_group(self) -> str:
        return f"{self.prefix}/heads"

    def leaf(self, pixel: int) -> str:
        return f"{self.prefix}/j{pixel}.in"

    def message(self, v: int) -> str:
        """The sum carrying latent v's message to its parent (the heads for the root)."""
        return self.head_group if v == self.tree.order[0] else f"{self.prefix}/j{v}.sum"

    def sums(self) -> list[str]:
        return [self.message(v) for v in self.tree.order]

    def add_to(self, graph: CircuitGraph) -> str:
        """Add the circuit's nodes to `graph` (pixel p = variable p); returns the heads group."""
        latent: dict[int, str] = {}
        for v in reversed(self.tree.order):  # every latent after the latents below it
            parts = [graph.add_input(self.leaf(p), p, "categorical", self.hidden[v]).name for p in self.tree.pixels[v]]
            parts += [graph.add_sum(self.message(u), (latent[u],), self.hidden[v]).name for u in self.tree.kids[v]]
            latent[v] = parts[0] if len(parts) == 1 else graph.add_product(f"{self.prefix}/j{v}.prod",
                                                                           tuple(parts)).name
        return graph.add_sum(self.head_group, (latent[self.tree.order[0]],), self.heads).name

    def family(self, levels: Sequence[int]) -> PatchFamily:
        return grown_family([self], levels)


def cluster_circuits(shape: PatchShape, hidden: Sequence[Sequence[int]],
                     heads: Sequence[int]) -> tuple[ClusterCircuit, ...]:
    """The circuits of global clusters 0, 1, ... from their sizes (what a run directory stores):
    `hidden[g]` states per latent of cluster g, `heads[g]` heads."""
    tree = LatentTree.of(shape)
    return tuple(ClusterCircuit(tree, tuple(int(h) for h in sizes), int(k), f"g{g}")
                 for g, (sizes, k) in enumerate(zip(hidden, heads, strict=True)))


def grown_family(circuits: Sequence[ClusterCircuit], levels: Sequence[int]) -> PatchFamily:
    """One family over the patch's pixels: the circuits' heads in order are the latent states."""
    variables = tuple(Variable(f"x[{j}]", j, Domain("categorical", int(n))) for j, n in enumerate(levels))
    graph = CircuitGraph("patch", variables)
    return PatchFamily(graph, tuple(c.add_to(graph) for c in circuits))


def training_parameters(circuit: ClusterCircuit, params: Parameters) -> Parameters:
    """Parameters of the circuit's training circuit (uniform prior over heads)."""
    out = Parameters(dict(params.inputs), dict(params.weights))
    out.weights["root"] = np.full((1, circuit.heads), 1.0 / circuit.heads)
    out.inputs["z0"] = {"value": np.arange(circuit.heads)}
    return out


def own_parameters(params: Parameters, prefix: str) -> Parameters:
    """The groups under `prefix` (a family's parameters, without the training circuit's own)."""
    keep = f"{prefix}/"
    return Parameters({k: v for k, v in params.inputs.items() if k.startswith(keep)},
                      {k: v for k, v in params.weights.items() if k.startswith(keep)})


def nonzero_parameters(graph: CircuitGraph, params: Parameters) -> int:
    """Parameters that pruning left: non-zero sum weights and every leaf parameter, each tied
    group counted once (as :meth:`CircuitGraph.num_parameters` counts)."""
    total, seen = 0, set()
    for node in graph.nodes():
        group = node.tie or node.name
        if group in seen or node.kind is NodeKind.PRODUCT:
            continue
        seen.add(group)
        if node.kind is NodeKind.SUM:
            total += int(np.count_nonzero(params.sum_weights(node)))
        elif node.family == "categorical":
            total += int(np.asarray(params.leaf(node)["probs"]).size)
    return total


def check(graph: CircuitGraph, params: Parameters) -> None:
    """Raise unless the graph validates and every row of every sum and categorical leaf is a
    distribution of the node's shape."""
    errors = [d for d in validate(graph) if d.is_error]
    if errors:
        raise InternalError(f"progressive growing made an invalid circuit: {errors[0].message}")
    for node in graph.nodes():
        if node.kind is NodeKind.SUM:
            w = params.sum_weights(node)
            if w.shape != weight_shape(graph, node) or (w < 0).any() or not np.allclose(w.sum(axis=1), 1.0):
                raise InternalError(f"progressive growing: the weights of '{node.name}' are not distributions")
        elif node.kind is NodeKind.INPUT and node.family == "categorical":
            p = params.leaf(node)["probs"]
            if len(p) != node.num_units or (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0):
                raise InternalError(f"progressive growing: the leaf '{node.name}' is not a distribution per unit")


# --- edits ----------------------------------------------------------------------------------------

def prune(params: Parameters, flows: Flows, groups: Iterable[str], threshold: float) -> Parameters:
    """Set to 0 the weights of edges whose flow is below `threshold` times their unit's flow,
    keeping each unit's highest-flow edge; rows renormalised."""
    out = Parameters(params.inputs, dict(params.weights))
    for group in groups:
        f = np.asarray(flows.weights[group], dtype=np.float64)
        keep = f >= threshold * f.sum(axis=1, keepdims=True)  # a unit without flow keeps every edge
        keep[np.arange(len(f)), f.argmax(axis=1)] = True
        w = np.where(keep, params.weights[group], 0.0)
        out.weights[group] = w / w.sum(axis=1, keepdims=True)
    return out


def prune_to_fraction(params: Parameters, flows: Flows, groups: Iterable[str], keep: float) -> Parameters:
    """Keep about `keep` (0 < keep <= 1) of each group's edges, those with the most flow (each unit
    its highest-flow edge whatever the share), and set the rest to 0; rows renormalised."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must lie in (0, 1], got {keep!r}")
    out = Parameters(params.inputs, dict(params.weights))
    for group in groups:
        f = np.asarray(flows.weights[group], dtype=np.float64)
        flat = np.zeros(f.size, dtype=bool)
        flat[np.argsort(-f, axis=None, kind="stable")[:max(1, round(keep * f.size))]] = True
        mask = flat.reshape(f.shape)
        mask[np.arange(len(f)), f.argmax(axis=1)] = True
        w = np.where(mask, params.weights[group], 0.0)
        out.weights[group] = w / w.sum(axis=1, keepdims=True)
    return out


def keep_zeros(params: Parameters) -> Callable[[Parameters], Parameters] | None:
    """A Trainer constraint that holds at 0 the sum weights that are 0 in `params` (EM's
    pseudocount would revive pruned edges); None when nothing is pruned."""
    masks = {g: w > 0 for g, w in params.weights.items() if not (w > 0).all()}
    if not masks:
        return None

    def constrain(new: Parameters) -> Parameters:
        out = Parameters(new.inputs, dict(new.weights))
        for group, mask in masks.items():
            w = np.where(mask, new.weights[group], 0.0)
            out.weights[group] = w / w.sum(axis=1, keepdims=True)
        return out

    return constrain


def multiplicative_noise(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Factors ``1 - scale + 2 scale U(0, 1)``."""
    return 1.0 - scale + 2.0 * scale * rng.random(shape)


def _noisy_copy(table: np.ndarray, i: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """`table` with row i duplicated at the end, both copies times independent noise."""
    rows = np.stack([table[i], table[i]])
    if noise > 0:  # noise 0: exact copies, so the distribution does not move by a rounding
        rows = rows * multiplicative_noise(rng, rows.shape, noise)
        rows /= rows.sum(axis=1, keepdims=True)
    out = np.concatenate([table, rows[1:]])
    out[i] = rows[0]
    return out


def duplicate_states(circuit: ClusterCircuit, params: Parameters, states: Sequence[Sequence[int]], noise: float,
                     rng: np.random.Generator) -> tuple[ClusterCircuit, Parameters]:
    """Duplicate states `states[v]` of each latent v: the rows of its leaves and of the messages
    into it are copied (with noise), its column of the message out of it is halved between the
    two copies. Copies go at the end of each group."""
    inputs = {k: dict(v) for k, v in params.inputs.items()}
    weights = dict(params.weights)
    hidden = list(circuit.hidden)
    for v in circuit.tree.order:
        for i in states[v]:
            for p in circuit.tree.pixels[v]:
                leaf = inputs[circuit.leaf(p)]
                leaf["probs"] = _noisy_copy(leaf["probs"], i, noise, rng)
            for u in circuit.tree.kids[v]:
                weights[circuit.message(u)] = _noisy_copy(weights[circuit.message(u)], i, noise, rng)
            out = weights[circuit.message(v)].copy()
            out[:, i] /= 2
            weights[circuit.message(v)] = np.concatenate([out, out[:, i:i + 1]], axis=1)
            hidden[v] += 1
    return replace(circuit, hidden=tuple(hidden)), Parameters(inputs, weights)


def states_to_grow(circuit: ClusterCircuit, flows: Flows, fraction: float, max_hidden: int | None) -> list[list[int]]:
    """Per latent, its highest-flow states (a `fraction` of them, rounded up; none without flow)."""
    out = []
    for v in range(len(circuit.hidden)):
        flow = np.asarray(flows.weights[circuit.message(v)], dtype=np.float64).sum(axis=0)  # into each state
        room = circuit.hidden[v] if max_hidden is None else max(0, max_hidden - circuit.hidden[v])
        count = min(math.ceil(fraction * circuit.hidden[v]), room)
        ranked = np.argsort(-flow, kind="stable")[:count]
        out.append([int(i) for i in ranked if flow[i] > 0])
    return out
