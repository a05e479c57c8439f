"""Chow-Liu trees: pairwise mutual information and the best maximum spanning trees.

Mutual information is estimated per pair of variables from the rows where both are
observed (value -1 = missing), with an additive pseudocount ``a`` spread uniformly over
the pair's joint table::

    P_ij(x, y) = (N_ij(x, y) + a / (k_i k_j)) / (n_ij + a)

where ``n_ij`` counts the rows observing both and ``k_i`` is the number of values of
variable i after binning. The marginals are those of this smoothed joint table, so the
estimate is a true KL divergence (never negative) and is 0 for pairs never observed
together. Variables with more than ``bins`` values are binned uniformly into ``bins`` bins
(value v of c -> floor(v * bins / c)) for this estimate only.
"""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
from networkx.algorithms.tree.mst import SpanningTreeIterator

Edge = tuple[int, int]


def bin_columns(data_columns: np.ndarray, cardinalities: np.ndarray,
                bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Binned data (missing stays -1) and the number of values of each binned column."""
    cards = np.asarray(cardinalities, dtype=np.int64)
    sizes = np.minimum(cards, bins)
    data = np.asarray(data_columns, dtype=np.int64)
    # floor(v * k / c) is the identity when the column already has k = c <= bins values
    binned = np.where(data < 0, -1, data * sizes // np.maximum(cards, 1))
    return binned, sizes


def mutual_information(data_columns: np.ndarray, cardinalities: np.ndarray,
                       pseudocount: float = 0.1, bins: int = 16) -> np.ndarray:
    """The (m, m) matrix of pairwise mutual information (nats) of the m data columns.

    ``data_columns`` is an int array (n_samples, m) with -1 for missing values;
    ``cardinalities[i]`` is the number of values of column i. The diagonal is 0.
    """
    binned, sizes = bin_columns(data_columns, cardinalities, bins)
    observed = (binned >= 0).astype(np.float32)
    both = (observed.T @ observed).astype(np.float64)  # n_ij (float32 counts are exact to 2**24)
    norm = both + pseudocount
    safe = np.where(norm > 0, norm, 1.0)
    cell = pseudocount / np.outer(sizes, sizes)  # pseudocount per joint cell
    joint = np.zeros_like(norm)  # half of sum p log p over each pair's joint table
    marginal = np.zeros_like(norm)  # [i, j]: sum p log p of i's marginal in the pair (i, j)
    # One indicator matmul per value pair (a, b), b >= a: the (a, b) and (b, a) cells of
    # every pair's table are transposes of each other, so half the products suffice.
    for a in range(int(sizes.max())):
        has_a = (binned == a).astype(np.float32)
        valid_a = (a < sizes)[:, None]
        counts_a = (has_a.T @ observed).astype(np.float64)
        marginal += _plogp((counts_a + pseudocount / sizes[:, None]) / safe, valid_a)
        for b in range(a, int(sizes.max())):
            has_b = has_a if b == a else (binned == b).astype(np.float32)
            counts = (has_a.T @ has_b).astype(np.float64)
            terms = _plogp((counts + cell) / safe, valid_a & (b < sizes)[None, :])
            joint += 0.5 * terms if a == b else terms
    info = (joint + joint.T) - marginal - marginal.T
    info[norm <= 0] = 0.0
    np.fill_diagonal(info, 0.0)
    return np.maximum(info, 0.0)  # rounding can leave tiny negatives


def _plogp(p: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """p log p where valid and p > 0, else 0 (cells beyond a column's size are padding)."""
    keep = valid & (p > 0)
    return np.where(keep, p * np.log(np.where(keep, p, 1.0)), 0.0)


def chow_liu_edges(data_columns: np.ndarray, cardinalities: np.ndarray,
                   pseudocount: float = 0.1, bins: int = 16) -> list[Edge]:
    """The edges (i < j, sorted) of a maximum-MI spanning tree over the data columns."""
    return spanning_trees(mutual_information(data_columns, cardinalities, pseudocount, bins), 1)[0]


def subsample_rows(data: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` rows of ``data`` drawn without replacement with ``seed``, in their original
    order; all rows when ``count`` is 0 or at least the number of rows."""
    if count <= 0 or count >= len(data):
        return data
    keep = np.sort(np.random.default_rng(seed).choice(len(data), size=count, replace=False))
    return data[keep]


def learn_trees(data_columns: np.ndarray, cardinalities: np.ndarray, pseudocount: float = 0.1,
                bins: int = 16, k: int = 1) -> list[list[Edge]]:
    """The ``k`` heaviest Chow-Liu trees of the data columns, from the on-disk cache when these
    exact rows and arguments were seen before (:mod:`pcdsl.io.cache`)."""
    from pcdsl.io.cache import cache_key, read_cached, write_cached

    columns = np.ascontiguousarray(data_columns, dtype=np.int64)
    cards = np.ascontiguousarray(cardinalities, dtype=np.int64)
    key = cache_key(_CACHE_VERSION, repr(columns.shape), columns.tobytes(), cards.tobytes(),
                    repr(float(pseudocount)), str(bins), str(k))
    cached = read_cached("chow_liu", key)
    if cached is not None and _valid_trees(cached, columns.shape[1], k):
        return [[(int(i), int(j)) for i, j in tree] for tree in cached]
    trees = spanning_trees(mutual_information(columns, cards, pseudocount, bins), k)
    write_cached("chow_liu", key, [[list(e) for e in tree] for tree in trees])
    return trees


_CACHE_VERSION = "chow-liu-1"  # change when the estimate or the tree search changes


def _valid_trees(value: object, m: int, k: int) -> bool:
    """Whether a cache entry is k lists of m - 1 edges (i, j), 0 <= i < j < m."""
    if not isinstance(value, list) or len(value) != k:
        return False
    return all(isinstance(t, list) and len(t) == m - 1 and all(
        isinstance(e, list) and len(e) == 2 and all(isinstance(x, int) for x in e) and 0 <= e[0] < e[1] < m
        for e in t) for t in value)


def spanning_trees(weights: np.ndarray, k: int = 1) -> list[list[Edge]]:
    """The ``k`` heaviest distinct spanning trees of the complete graph with these weights.

    Each tree is a sorted list of edges (i < j) over 0..m-1, heaviest tree first.
    """
    m = len(weights)
    if m == 1:
        if k > 1:
            raise ValueError(f"one variable has a single tree; cannot build {k} distinct trees")
        return [[]]
    best = nx.maximum_spanning_tree(_complete_graph(weights))
    if k == 1:
        return [_edges(best)]
    candidates = nx.Graph(best)
    candidates.add_weighted_edges_from(_runner_up_edges(weights, best, k - 1))
    trees = _heaviest_trees(candidates, k)
    if len(trees) < k:
        raise ValueError(f"{m} variables have only {len(trees)} distinct spanning trees; cannot build {k}")
    return trees


def _complete_graph(weights: np.ndarray) -> nx.Graph:
    graph = nx.Graph()
    graph.add_nodes_from(range(len(weights)))
    rows, cols = np.triu_indices(len(weights), 1)
    graph.add_weighted_edges_from(zip(rows.tolist(), cols.tolist(), weights[rows, cols].tolist(), strict=False))
    return graph


def _edges(tree: nx.Graph) -> list[Edge]:
    return sorted((min(u, v), max(u, v)) for u, v in tree.edges)


def _runner_up_edges(weights: np.ndarray, best: nx.Graph, count: int) -> list[tuple[int, int, float]]:
    """The ``count`` non-tree edges whose exchange into ``best`` loses the least weight.

    Why this is enough: the best tree containing a non-tree edge e is ``best`` + e minus
    the lightest edge on the cycle e closes (loss c(e)). If e is not among the ``count``
    cheapest, ``best`` and those ``count`` exchanges are already k trees at least as heavy
    as any tree using e, so the k best trees of ``best`` + these edges are the k best of
    the complete graph, and SpanningTreeIterator runs on a sparse graph, not O(m^2) edges.
    """
    m = len(weights)
    lightest = np.full((m, m), np.inf)  # lightest tree edge on the path i..j
    seen = [0]
    for parent, child in nx.bfs_edges(best, 0):
        # the tree built so far is connected, so child reaches all of it through parent
        row = np.minimum(lightest[parent, seen], weights[parent, child])
        lightest[child, seen] = row
        lightest[seen, child] = row
        seen.append(child)
    rows, cols = np.triu_indices(m, 1)
    off_tree = np.array([not best.has_edge(i, j) for i, j in zip(rows.tolist(), cols.tolist(), strict=False)])
    rows, cols = rows[off_tree], cols[off_tree]
    loss = lightest[rows, cols] - weights[rows, cols]
    pick = np.argsort(loss, kind="stable")[:count]
    return [(int(rows[p]), int(cols[p]), float(weights[rows[p], cols[p]])) for p in pick]


def _heaviest_trees(candidates: nx.Graph, k: int) -> list[list[Edge]]:
    """Up to ``k`` heaviest spanning trees of ``candidates``, heaviest first.

    Bridges lie in every spanning tree, so the iterator runs on the graph with its bridges
    contracted: a few nodes around the cycles the extra edges close, instead of m (its
    per-tree cost grows with nodes x edges). Contracting bridges never makes loops or
    parallel edges: either would put a bridge on a cycle.
    """
    bridges = sorted((min(u, v), max(u, v)) for u, v in nx.bridges(candidates))
    pieces = nx.Graph(bridges)
    pieces.add_nodes_from(candidates)
    piece = {v: i for i, part in enumerate(nx.connected_components(pieces)) for v in part}
    small = nx.Graph()
    small.add_nodes_from(sorted(set(piece.values())))
    original: dict[frozenset[int], Edge] = {}
    for u, v, w in candidates.edges(data="weight"):
        edge = (min(u, v), max(u, v))
        if piece[u] != piece[v]:  # not a bridge: its ends lie in different pieces
            small.add_edge(piece[u], piece[v], weight=w)
            original[frozenset((piece[u], piece[v]))] = edge
    trees = itertools.islice(SpanningTreeIterator(small, minimum=False), k)
    return [sorted(bridges + [original[frozenset(e)] for e in t.edges]) for t in trees]
