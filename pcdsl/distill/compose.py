"""Circuits of latent variable distillation, built in pcdsl's IR.

Three shapes, all ordinary :class:`CircuitGraph` s:

- **patch heads**: K cluster-conditioned circuits over one patch's pixels, all of one shape (a
  hidden Chow-Liu tree, or fully factorised), folded into node groups of K x h units with
  block-diagonal sums; the ``heads`` group has K units, unit k = p(x_i | Z_i = k). Placed at
  several patch positions, each copy can tie every parameter to the first copy (``shared``).
- a **patch family** (:class:`PatchFamily`): any circuit over the patch's pixels whose heads
  give the K latent states (the block HCLTs above, or progressive growing's grown circuits);
- the **training circuit** of a family: p(z, x) = w_z p(x | z) with Z an observed variable
  selecting its head through an indicator, so ordinary EM with z observed *is*
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
from pcdsl.ir.graph import CircuitGraph, Domain, Node, NodeKind, Variable
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


@dataclass(frozen=True)
class PatchFamily:
    """Circuits over one patch's D pixels (variables 0..D-1 of `graph`) whose `heads` node
    groups, units in order, are the latent states: unit k of their concatenation is
    p(x_i | Z_i = k). Block HCLTs have one heads group; progressive growing makes one per
    global cluster, each with its own grown circuit."""

    graph: CircuitGraph
    heads: tuple[str, ...]

    @property
    def clusters(self) -> int:
        return sum(self.graph.node(h).num_units for h in self.heads)


def block_family(shape: PatchShape, levels: Sequence[int]) -> PatchFamily:
    """K = shape.clusters patch circuits of one shape as block-diagonal node groups."""
    variables = tuple(Variable(f"x[{j}]", j, Domain("categorical", int(levels[j]))) for j in range(shape.dims))
    graph = CircuitGraph("patch", variables)
    return PatchFamily(graph, (add_patch_heads(graph, range(shape.dims), shape, "patch"),))


def place(graph: CircuitGraph, family: PatchFamily, pixels: Sequence[int], prefix: str | None,
          owner: str | None = None, span: Span = NO_SPAN) -> list[str]:
    """Copy `family` into `graph` over the variables `pixels`, node names under `prefix`
    (None: unchanged); with `owner`, every copied node ties its parameters to the node of the
    same family name under that prefix. Returns the copied heads."""
    def rename(name: str) -> str:
        return name if prefix is None else f"{prefix}/{name}"

    for node in family.graph.nodes():
        tie = f"{owner}/{node.name}" if owner is not None else (rename(node.tie) if node.tie else None)
        var = None if node.var is None else int(pixels[node.var])
        _copy_node(graph, node, rename(node.name), tuple(rename(c) for c in node.children), var, tie, span)
    return [rename(h) for h in family.heads]


def _copy_node(graph: CircuitGraph, node: Node, name: str, children: tuple[str, ...], var: int | None,
               tie: str | None, span: Span) -> None:
    if node.kind is NodeKind.INPUT:
        assert var is not None
        graph.add_input(name, var, str(node.family), node.num_units, node.params, span, tie)
    elif node.kind is NodeKind.PRODUCT:
        graph.add_product(name, children, node.pattern or "hadamard", span=span)
    else:
        graph.add_sum(name, children, node.num_units, node.weights, tie, span, node.blocks)


def copy_parameters(family: PatchFamily, params: Parameters, graph: CircuitGraph, prefix: str | None,
                    out: Parameters) -> None:
    """The family's parameters under the names of its copy in `graph` (see :func:`place`)."""
    for node in family.graph.nodes():
        copied = graph.node(node.name if prefix is None else f"{prefix}/{node.name}")
        if node.kind is NodeKind.INPUT:
            out.inputs[input_group(copied)] = {k: np.array(v) for k, v in params.leaf(node).items()}
        elif node.kind is NodeKind.SUM:
            out.weights[weight_group(copied)] = np.array(params.sum_weights(node), dtype=np.float64)


def training_circuit(family: PatchFamily, name: str = "patch") -> CircuitGraph:
    """The family over D pixel variables plus an observed cluster variable Z (the last
    column): root = sum_k w_k [Z = k] p_k(x). With z observed, EM on it trains each head only
    on the patches of its cluster. Node names are the family's."""
    d, k = len(family.graph.variables), family.clusters
    variables = (*family.graph.variables, Variable("z", d, Domain("categorical", k)))
    graph = CircuitGraph(name, variables)
    heads = place(graph, family, range(d), None)
    selects, offset = [], 0
    for g, head in enumerate(heads):
        units = graph.node(head).num_units
        graph.add_input(f"z{g}", d, "indicator", units, params={"value": np.arange(offset, offset + units)})
        selects.append(graph.add_product(f"select{g}", (f"z{g}", head)).name)
        offset += units
    graph.add_sum("root", tuple(selects), 1)
    return graph


def family_of_training(graph: CircuitGraph) -> PatchFamily:
    """The family inside a training circuit (what a run directory stores): every node but the
    cluster indicators, their products and the root, over the pixel variables."""
    selects = sorted((n for n in graph.nodes() if n.name.startswith("select")), key=lambda n: int(n.name[6:]))
    skip = {"root", *(n.name for n in selects), *(n.children[0] for n in selects)}
    family = CircuitGraph("patch", graph.variables[:-1])
    for node in graph.nodes():
        if node.name not in skip:
            _copy_node(family, node, node.name, node.children, node.var, node.tie, node.span)
    return PatchFamily(family, tuple(n.children[1] for n in selects))


def compose(top: CircuitGraph, top_params: Parameters, family: PatchFamily, patch: Sequence[Parameters],
            variables: tuple[Variable, ...], positions: Sequence[Sequence[int]], shared: bool,
            name: str, span: Span = NO_SPAN) -> tuple[CircuitGraph, Parameters]:
    """The distilled circuit and its parameters.

    `top` is a circuit over the latents Z_1..Z_m (variable i = position i) whose leaves are
    categorical over the K latent states; `patch` holds the family's parameters: one set when
    `shared` (every position ties to position 0), else one per position; `positions[i]` lists
    the pixel variables of patch i in patch order.
    """
    graph = CircuitGraph(name, variables, span)
    params = Parameters()
    heads = []
    for i, pixels in enumerate(positions):
        owner = "pos0" if shared and i > 0 else None
        heads.append(tuple(place(graph, family, pixels, f"pos{i}", owner, span)))
        if owner is None:
            copy_parameters(family, patch[0 if shared else i], graph, f"pos{i}", params)
    add_top(graph, top, top_params, heads, params, span)
    return graph, params


def add_top(graph: CircuitGraph, top: CircuitGraph, top_params: Parameters, heads: Sequence[Sequence[str]],
            params: Parameters, span: Span = NO_SPAN) -> None:
    """Add the top level to `graph` under ``top/``, its leaf over Z_i a sum over `heads[i]`
    (node groups already in `graph`), and its parameters to `params`."""
    renamed: dict[str, str] = {}
    for node in top.nodes():
        new = f"top/{node.name}"
        renamed[node.name] = new
        if node.kind is NodeKind.INPUT:  # the leaf over Z_i: a sum over the heads at position i
            assert node.var is not None
            tie = f"top/{node.tie}" if node.tie else None
            graph.add_sum(new, tuple(heads[node.var]), node.num_units, tie=tie, span=span)
            params.weights.setdefault(tie or new, np.array(top_params.leaf(node)["probs"], dtype=np.float64))
        elif node.kind is NodeKind.PRODUCT:
            graph.add_product(new, tuple(renamed[c] for c in node.children), node.pattern or "hadamard", span=span)
        else:
            tie = f"top/{node.tie}" if node.tie else None
            graph.add_sum(new, tuple(renamed[c] for c in node.children), node.num_units, tie=tie, span=span)
            params.weights.setdefault(tie or new, np.array(top_params.sum_weights(node), dtype=np.float64))


def decompose(graph: CircuitGraph, params: Parameters, top: CircuitGraph, family: PatchFamily,
              positions: int) -> tuple[Parameters, list[Parameters]]:
    """The parameters of a distilled circuit read back as those of its parts: the top level
    (`top`'s own names) and, per position, the family's training circuit (a uniform prior over
    the latent states). The inverse of :func:`compose` on parameters."""
    top_params = Parameters()
    for node in top.nodes():
        composed = graph.node(f"top/{node.name}")
        if node.kind is NodeKind.INPUT:
            top_params.inputs[input_group(node)] = {"probs": np.array(params.sum_weights(composed))}
        elif node.kind is NodeKind.SUM:
            top_params.weights[weight_group(node)] = np.array(params.sum_weights(composed))
    train = training_circuit(family)
    k = family.clusters
    parts = []
    for i in range(positions):
        out = Parameters({}, {"root": np.full((1, k), 1.0 / k)})
        for node in train.nodes():
            if node.kind is NodeKind.INPUT and node.params is not None:  # the cluster indicators
                out.inputs[input_group(node)] = {key: np.array(v) for key, v in node.params.items()}
        for node in family.graph.nodes():
            composed = graph.node(f"pos{i}/{node.name}")
            if node.kind is NodeKind.INPUT:
                out.inputs[input_group(node)] = {key: np.array(v) for key, v in params.leaf(composed).items()}
            elif node.kind is NodeKind.SUM:
                out.weights[weight_group(node)] = np.array(params.sum_weights(composed))
        parts.append(out)
    return top_params, parts


def top_parameter_groups(graph: CircuitGraph) -> set[str]:
    """The parameter groups of a distilled circuit's top level (what soft-evidence EM trains)."""
    return {weight_group(n) for n in graph.nodes() if n.name.startswith("top/") and n.kind is NodeKind.SUM}
