"""Hidden Chow-Liu trees (Liu & Van den Broeck 2021), optionally a mixture of several."""

from __future__ import annotations

import networkx as nx
import numpy as np

from pcdsl.diagnostics import NO_SPAN, Span
from pcdsl.ir.graph import CircuitGraph
from pcdsl.structures._common import Builder, check_variables, positive_int
from pcdsl.structures.chow_liu import Edge, learn_trees, subsample_rows

SUBSAMPLE = 5000  # rows the tree is learned from by default, as the Juice.jl HCLT recipe


def hclt(graph: CircuitGraph, variables: np.ndarray, *, prefix: str, span: Span = NO_SPAN,
         data: np.ndarray | None = None, hidden: int = 16, trees: int = 1,
         pseudocount: float = 0.1, bins: int = 16, subsample: int = SUBSAMPLE, seed: int = 0) -> str:
    """A hidden Chow-Liu tree over ``variables``, learned from ``data``.

    ``data`` is an int array (n_samples, len(graph.variables)), -1 = missing. The tree is
    learned from ``subsample`` rows of it drawn with ``seed`` (all rows when there are fewer,
    or when ``subsample = 0``), and cached on disk by those rows and the arguments, so that
    building the same circuit again skips the mutual information. Each variable
    v gets an input group of ``hidden`` units; ``latent(v)`` is the hadamard product of it
    with, per tree child u, a ``hidden``-unit sum over ``latent(u)`` (a leaf's latent is its
    input group itself). The root is a 1-unit sum over ``latent(tree root)``; with
    ``trees = k`` it mixes the latents of the k heaviest distinct spanning trees.
    Names: ``{p}/v{v}.in``, ``{p}/v{v}.prod`` (latent), ``{p}/v{u}.sum`` (u's message to
    its parent), root ``{prefix}/root``; ``p`` is the prefix, or ``{prefix}/t{i}`` when k > 1.
    """
    flat = check_variables(graph, variables).reshape(-1)
    hidden = positive_int("hidden", hidden)
    trees = positive_int("trees", trees)
    bins = positive_int("bins", bins, minimum=2)
    subsample = positive_int("subsample", subsample, minimum=0)
    seed = positive_int("seed", seed, minimum=0)
    if not pseudocount >= 0:
        raise ValueError(f"'pseudocount' must be >= 0, got {pseudocount!r}")
    columns, cards = _select_data(graph, flat, data)
    edge_lists = learn_trees(subsample_rows(columns, subsample, seed), cards, float(pseudocount), bins, trees)
    b = Builder(graph, prefix, span)
    tops = []
    for t, edges in enumerate(edge_lists):
        tree = _variable_tree(flat, edges)
        tops.append(_hidden_tree(b if trees == 1 else b.sub(f"t{t}"), tree, hidden))
    return b.sum("root", tuple(tops), 1)


def _select_data(graph: CircuitGraph, flat: np.ndarray,
                 data: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The data columns of ``flat`` and their cardinalities, checked."""
    if data is None:
        raise ValueError("needs data to learn the Chow-Liu tree from (data = ...)")
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != len(graph.variables) or data.shape[0] == 0:
        raise ValueError(f"data must have shape (n_samples >= 1, {len(graph.variables)}), "
                         f"got {tuple(data.shape)}")
    if not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"data must hold integer values, got dtype {data.dtype}")
    domains = [graph.variables[v].domain for v in flat]
    for v, domain in zip(flat, domains, strict=False):
        if not domain.is_discrete:
            raise ValueError(f"variable '{graph.variables[v].name}' is real; "
                             "Chow-Liu trees need discrete variables")
    cards = np.array([d.size for d in domains], dtype=np.int64)
    # all columns in order (an image's pixels): a view, not a copy of the whole data
    columns = data if np.array_equal(flat, np.arange(data.shape[1])) else data[:, flat]
    # per-column extremes first: one pass over the data instead of a full boolean mask
    if (columns.min(axis=0, initial=-1) < -1).any() or (columns.max(axis=0, initial=-1) >= cards).any():
        row, col = np.argwhere((columns < -1) | (columns >= cards))[0]
        raise ValueError(f"data row {row} has value {columns[row, col]} for variable "
                         f"'{graph.variables[flat[col]].name}', outside 0..{cards[col] - 1} (-1 = missing)")
    return columns, cards


def _variable_tree(flat: np.ndarray, edges: list[Edge]) -> nx.Graph:
    """The tree over variable indices (``edges`` are over positions in ``flat``)."""
    tree = nx.Graph()
    tree.add_nodes_from(flat.tolist())
    tree.add_edges_from((int(flat[i]), int(flat[j])) for i, j in edges)
    return tree


def _hidden_tree(b: Builder, tree: nx.Graph, hidden: int) -> str:
    """Adds one hidden tree; returns ``latent(root)``."""
    # rooting at the centre keeps the circuit shallow: depth = the tree's radius
    root = min(nx.center(tree, usebounds=True))
    order, kids = _orient(tree, root)
    latent: dict[int, str] = {}
    for v in reversed(order):  # reverse BFS order: every child before its parent
        messages = tuple(b.sum(f"v{u}.sum", (latent[u],), hidden) for u in kids[v])
        leaf = b.input(v, hidden)
        latent[v] = b.product(f"v{v}.prod", (leaf, *messages)) if messages else leaf
    return latent[root]


def _orient(tree: nx.Graph, root: int) -> tuple[list[int], dict[int, list[int]]]:
    """BFS order from ``root`` and each node's children, neighbours in index order."""
    order, kids, seen = [root], {}, {root}
    for v in order:  # `order` grows while we walk it
        kids[v] = [u for u in sorted(tree[v]) if u not in seen]
        seen.update(kids[v])
        order.extend(kids[v])
    return order, kids
