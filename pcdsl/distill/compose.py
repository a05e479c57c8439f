"""Circuits of latent variable distillation, built in pcdsl's IR.

Three shapes, all ordinary :class:`CircuitGraph` s:

- **patch heads**: K cluster-conditioned circuits over one patch's pixels, all of one shape (a
  hidden Chow-Liu tree, or fully factorised), folded into node groups of K x h units with
  block-diagonal sums; the ``heads`` group has K units, unit k = p(x_i | Z_i = k). Placed at
  several patch positions, each copy can tie every parameter to the first copy (``shared``).
- the **training circuit** of the patch heads: p(z, x) = 1/K-style prior x p(x | z) with Z an
  observed variable selecting its head through an indicator, so ordinary EM with z observed *is*
  cluster-conditioned EM (each patch scored only by its own head);
- the **distilled circuit**: a top-level HCLT over the latents Z_1..Z_m whose leaf over Z_i
  (h units, a categorical over K states) becomes a sum over the heads at position i: the
  latents are summed out exactly, and every query of every backend works on the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np

from pcdsl.diagnostics import NO_SPAN, Span
from pcdsl.ir.graph import CircuitGraph, Domain, NodeKind, Variable
from pcdsl.params import Parameters, input_group, weight_group

HEADS = "heads"


@dataclass(frozen=True)
class PatchShape:
    """The shape of every patch circuit: a tree over the patch's D pixel positions (local
    indices 0..D-1; no edges: fully factorised), `hidden` units per cluster."""

    dims: int
    edges: tuple[tuple[int, int], ...]
    hidden: int
    clusters: int
    factorized: bool = False

    def tree(self) -> tuple[list[int], dict[int, list[int]]]:
        """BFS order from the tree's centre and the children of each position."""
        tree = nx.Graph()
        tree.add_nodes_from(range(self.dims))
        tree.add_edges_from(self.edges)
        root = min(nx.center(tree, usebounds=True))  # shallow circuits: depth = the radius
        order, kids, seen = [root], {}, {root}
        for v in order:
            kids[v] = [u for u in sorted(tree[v]) if u not in seen]
            seen.update(kids[v])
            order.extend(kids[v])
        return order, kids


def add_patch_heads(graph: CircuitGraph, pixels: Sequence[int], shape: PatchShape, prefix: str,
                    owner: str | None = None, span: Span = NO_SPAN) -> str:
    """Add K = shape.clusters patch circuits over the variables `pixels` (in patch order) under
    `prefix`; with `owner`, every node ties its parameters to the node of the same local name
    under that prefix. Returns the name of the heads group."""
    k, units = shape.clusters, shape.clusters * shape.hidden

    def name(local: str) -> str:
        return f"{prefix}/{local}"

    def tie(local: str) -> str | None:
        return f"{owner}/{local}" if owner is not None else None

    def leaf(j: int) -> str:
        return graph.add_input(name(f"j{j}.in"), int(pixels[j]), "categorical", units, span=span,
                               tie=tie(f"j{j}.in")).name

    def block_sum(local: str, child: str, out_units: int) -> str:
        return graph.add_sum(name(local), (child,), out_units, tie=tie(local), span=span, blocks=k).name

    if shape.factorized or shape.dims == 1:
        top = graph.add_product(name("all"), tuple(leaf(j) for j in range(shape.dims)), span=span).name \
            if shape.dims > 1 else leaf(0)
        return block_sum(HEADS, top, k)
    order, kids = shape.tree()
    latent: dict[int, str] = {}
    for v in reversed(order):  # every tree child before its parent
        messages = tuple(block_sum(f"j{u}.sum", latent[u], units) for u in kids[v])
        own = leaf(v)
        latent[v] = graph.add_product(name(f"j{v}.prod"), (own, *messages), span=span).name if messages else own
    return block_sum(HEADS, latent[order[0]], k)


def training_circuit(shape: PatchShape, levels: Sequence[int], name: str = "patch") -> CircuitGraph:
    """The patch heads over D pixel variables (``levels[j]`` values each) plus an observed
    cluster variable Z (the last column): root = sum_k w_k [Z = k] p_k(x). With z observed,
    EM on it trains each head only on the patches of its cluster."""
    variables = (*(Variable(f"x[{j}]", j, Domain("categorical", int(levels[j]))) for j in range(shape.dims)),
                 Variable("z", shape.dims, Domain("categorical", shape.clusters)))
    graph = CircuitGraph(name, variables)
    heads = add_patch_heads(graph, range(shape.dims), shape, "patch")
    k = shape.clusters
    graph.add_input("z", shape.dims, "indicator", k, params={"value": np.arange(k)})
    graph.add_product("select", ("z", heads))
    graph.add_sum("root", ("select",), 1)
    return graph


def compose(top: CircuitGraph, top_params: Parameters, patch: Sequence[Parameters], shape: PatchShape,
            variables: tuple[Variable, ...], positions: Sequence[Sequence[int]], shared: bool,
            name: str, span: Span = NO_SPAN) -> tuple[CircuitGraph, Parameters]:
    """The distilled circuit and its parameters.

    `top` is a circuit over the latents Z_1..Z_m (variable i = position i) whose leaves are
    categorical over the K clusters; `patch` holds parameters of the patch heads as in
    :func:`training_circuit`: one set when `shared`, else one per position; `positions[i]`
    lists the pixel variables of patch i in patch order.
    """
    graph = CircuitGraph(name, variables, span)
    params = Parameters()
    heads = []
    for i, pixels in enumerate(positions):
        prefix = f"pos{i}"
        owner = "pos0" if shared and i > 0 else None
        heads.append(add_patch_heads(graph, pixels, shape, prefix, owner, span))
        if owner is None:
            _copy_patch_params(graph, prefix, patch[0 if shared else i], params)
    renamed: dict[str, str] = {}
    for node in top.nodes():
        new = f"top/{node.name}"
        renamed[node.name] = new
        if node.kind is NodeKind.INPUT:  # the leaf over Z_i: a sum over the heads at position i
            assert node.var is not None
            graph.add_sum(new, (heads[node.var],), node.num_units, span=span)
            params.weights[new] = np.array(top_params.leaf(node)["probs"], dtype=np.float64)
        elif node.kind is NodeKind.PRODUCT:
            graph.add_product(new, tuple(renamed[c] for c in node.children), node.pattern or "hadamard", span=span)
        else:
            tie = f"top/{node.tie}" if node.tie else None
            graph.add_sum(new, tuple(renamed[c] for c in node.children), node.num_units, tie=tie, span=span)
            params.weights.setdefault(tie or new, np.array(top_params.sum_weights(node), dtype=np.float64))
    return graph, params


def _copy_patch_params(graph: CircuitGraph, prefix: str, patch: Parameters, out: Parameters) -> None:
    for node in graph.nodes():
        if not node.name.startswith(prefix + "/"):
            continue
        local = node.name[len(prefix) + 1:]
        if node.kind is NodeKind.INPUT:
            out.inputs[input_group(node)] = {k: np.array(v) for k, v in patch.inputs[f"patch/{local}"].items()}
        elif node.kind is NodeKind.SUM:
            out.weights[weight_group(node)] = np.array(patch.weights[f"patch/{local}"])


def top_parameter_groups(graph: CircuitGraph) -> set[str]:
    """The parameter groups of a distilled circuit's top level (what soft-evidence EM trains)."""
    return {weight_group(n) for n in graph.nodes() if n.name.startswith("top/") and n.kind is NodeKind.SUM}
