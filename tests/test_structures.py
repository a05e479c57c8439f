"""Structure templates: every generated circuit is valid, deterministic and the expected shape.

Validity is checked by an independent brute-force scope computation (scopes recomputed from
children and input variables; ``node.scope`` is not trusted). Chow-Liu trees are checked
against brute-force enumeration of all spanning trees.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pcdsl.diagnostics import Span
from pcdsl.ir.graph import CircuitGraph, Domain, NodeKind, Variable
from pcdsl.structures import TEMPLATES, chow_liu_edges, generate, mutual_information, spanning_trees

SPAN = Span(None, 3, 5, 3, 40)


CAT4 = Domain("categorical", 4)


def make_graph(n: int, domain: Domain = CAT4) -> CircuitGraph:
    return CircuitGraph("c", tuple(Variable(f"x{i}", i, domain) for i in range(n)))


def check_circuit(graph: CircuitGraph, root: str, variables: np.ndarray, prefix: str) -> dict[str, frozenset]:
    """Assert smooth, decomposable, one 1-unit root covering ``variables``; returns the scopes."""
    scopes: dict[str, frozenset] = {}
    parents: dict[str, int] = {}
    for node in graph.nodes():  # insertion order: children first
        assert node.name.startswith(prefix + "/") and node.span == SPAN
        kids = [graph.node(c) for c in node.children]
        for c in node.children:
            parents[c] = parents.get(c, 0) + 1
        if node.kind is NodeKind.INPUT:
            assert node.children == () and node.params is None
            discrete = graph.variables[node.var].domain.is_discrete
            assert node.family == ("categorical" if discrete else "gaussian")
            scopes[node.name] = frozenset({node.var})
        elif node.kind is NodeKind.PRODUCT:
            union: set[int] = set()
            for c in node.children:
                assert not union & scopes[c], f"{node.name}: not decomposable"
                union |= scopes[c]
            units = [k.num_units for k in kids]
            if node.pattern == "hadamard":
                assert len(set(units)) == 1, f"{node.name}: hadamard over units {units}"
                assert node.num_units == units[0]
            else:
                assert node.pattern == "kronecker" and node.num_units == math.prod(units)
            scopes[node.name] = frozenset(union)
        else:
            assert node.weights is None and node.children
            child_scopes = {scopes[c] for c in node.children}
            assert len(child_scopes) == 1, f"{node.name}: not smooth"
            scopes[node.name] = child_scopes.pop()
    roots = [name for name in scopes if name not in parents]
    assert roots == [root], f"roots {roots}"
    assert graph.node(root).num_units == 1 and root == f"{prefix}/root"
    assert scopes[root] == frozenset(np.asarray(variables).reshape(-1).tolist())
    return scopes


def build(template: str, n_vars: int, variables: np.ndarray, domain: Domain = CAT4,
          **options) -> tuple[CircuitGraph, str]:
    graph = make_graph(n_vars, domain)
    root = generate(template, graph, variables, prefix="s", span=SPAN, **options)
    return graph, root


def correlated_data(n: int, m: int, card: int, seed: int = 0) -> np.ndarray:
    """A noisy chain x0 -> x1 -> ..., so mutual information is distinct and non-trivial."""
    rng = np.random.default_rng(seed)
    data = np.empty((n, m), dtype=np.int64)
    data[:, 0] = rng.integers(0, card, n)
    for j in range(1, m):
        flip = rng.random(n) < 0.15 + 0.1 * j
        data[:, j] = np.where(flip, rng.integers(0, card, n), data[:, j - 1])
    return data[:, rng.permutation(m)]


GRID = np.arange(16).reshape(4, 4)
CASES = [
    ("fully_factorized", 6, np.arange(6), {}),
    ("fully_factorized", 6, np.array([4, 1, 3]), {"units": 3}),
    ("hclt", 6, np.arange(6), {"hidden": 3, "data": correlated_data(300, 6, 4)}),
    ("hclt", 6, np.arange(6), {"hidden": 2, "trees": 3, "data": correlated_data(300, 6, 4)}),
    ("hclt", 6, np.array([5]), {"hidden": 2, "data": correlated_data(30, 6, 4)}),
    ("poon_domingos", 16, GRID, {"delta": 2, "units": 3}),
    ("poon_domingos", 15, np.arange(15).reshape(3, 5), {"delta": [2, 3], "units": 3, "input_units": 2}),
    ("poon_domingos", 1, np.zeros((1, 1), dtype=int), {"delta": 2}),
    ("quad_tree", 16, GRID, {"units": 2}),
    ("quad_tree", 15, np.arange(15).reshape(3, 5), {"units": 3, "input_units": 2}),
    ("rat", 6, np.arange(6), {"depth": 2, "repetitions": 2, "units": 4, "input_units": 2}),
    ("rat", 7, np.arange(7), {"depth": 5, "units": 2}),
    ("rat", 1, np.array([0]), {"depth": 1, "repetitions": 2, "units": 2}),
]


@pytest.mark.parametrize("template,n_vars,variables,options", CASES)
def test_templates_valid_and_deterministic(template, n_vars, variables, options):
    graph, root = build(template, n_vars, variables, **options)
    check_circuit(graph, root, variables, "s")
    again, _ = build(template, n_vars, variables, **options)
    assert [n.name for n in graph.nodes()] == [n.name for n in again.nodes()]
    assert [n.children for n in graph.nodes()] == [n.children for n in again.nodes()]


def test_templates_registry():
    assert set(TEMPLATES) == {"fully_factorized", "hclt", "poon_domingos", "quad_tree", "rat"}


def test_real_variables_get_gaussian_leaves():
    graph, root = build("quad_tree", 4, np.arange(4).reshape(2, 2), Domain("real"), units=2)
    check_circuit(graph, root, np.arange(4), "s")
    assert {n.family for n in graph.nodes() if n.kind is NodeKind.INPUT} == {"gaussian"}


def test_fully_factorized_shape():
    graph, root = build("fully_factorized", 6, np.arange(6))
    assert len(graph) == 7 and graph.node(root).kind is NodeKind.PRODUCT
    assert graph.node(root).children == tuple(f"s/v{i}.in" for i in range(6))
    graph, root = build("fully_factorized", 6, np.arange(6), units=5)
    assert graph.node(root).children == ("s/prod",) and graph.node("s/prod").num_units == 5


def test_poon_domingos_delta_2_on_4x4():
    graph, root = build("poon_domingos", 16, GRID, delta=2, units=3)
    kinds = [n.kind for n in graph.nodes()]
    # 9 even-aligned rectangles (root included) + 8 halves of the 2x2 blocks are sums;
    # partitions: 2 (root) + 4 (2x4, 4x2) + 4 (2x2 halved) + 8 (1x2 halved)
    assert (kinds.count(NodeKind.INPUT), kinds.count(NodeKind.PRODUCT), kinds.count(NodeKind.SUM)) == (16, 18, 17)
    assert graph.node(root).children == ("s/r0-4c0-4.cutr2", "s/r0-4c0-4.cutc2")
    assert graph.node("s/r0-4c0-4.cutr2").children == ("s/r0-2c0-4.sum", "s/r2-4c0-4.sum")
    assert graph.node("s/r0-2c0-2.sum").children == ("s/r0-2c0-2.cutr1",)  # no delta cut: halved
    assert graph.node("s/r0-1c0-2.cutc1").children == ("s/v0.in", "s/v1.in")
    # every rectangle is built once, shared by the partitions that use it
    assert len(graph.parents("s/r0-2c0-2.sum")) == 2


def test_poon_domingos_cuts_at_multiples_of_each_delta():
    graph, _ = build("poon_domingos", 7, np.arange(7).reshape(1, 7), delta=[2, 3], units=2)
    assert graph.node("s/root").children == tuple(f"s/r0-1c0-7.cutc{p}" for p in (2, 3, 4, 6))
    # absolute multiples, not offsets from the rectangle's corner (which would give 5 and 6)
    assert graph.node("s/r0-1c3-7.sum").children == ("s/r0-1c3-7.cutc4", "s/r0-1c3-7.cutc6")
    assert graph.node("s/r0-1c0-3.sum").children == ("s/r0-1c0-3.cutc2",)
    assert graph.node("s/r0-1c0-2.sum").children == ("s/r0-1c0-2.cutc1",)  # no multiple inside: halved


def test_poon_domingos_input_units_wrap_pixels():
    graph, _ = build("poon_domingos", 16, GRID, delta=2, units=3, input_units=2)
    assert graph.node("s/r0-1c0-1.sum").children == ("s/v0.in",)
    assert graph.node("s/r0-1c0-1.sum").num_units == 3 and graph.node("s/v0.in").num_units == 2


def test_quad_tree_4x4():
    graph, _ = build("quad_tree", 16, GRID, units=2)
    assert len(graph) == 16 + 5 + 5
    assert graph.node("s/root").children == ("s/r0-4c0-4.prod",)
    assert graph.node("s/r0-4c0-4.prod").children == tuple(
        f"s/r{a}-{a + 2}c{b}-{b + 2}.sum" for a in (0, 2) for b in (0, 2))
    assert graph.node("s/r2-4c2-4.prod").children == ("s/v10.in", "s/v11.in", "s/v14.in", "s/v15.in")


def test_rat_depth_2_repetitions_2():
    graph, root = build("rat", 6, np.arange(6), depth=2, repetitions=2, units=4, input_units=2)
    assert len(graph) == 35  # per repetition: 6 inputs, 2 leaf products, 4 leaf sums, 3 krons, 2 sums
    assert graph.node(root).children == ("s/rep0/r.kron", "s/rep1/r.kron")
    assert graph.node("s/rep0/r.kron").num_units == 16
    scopes = check_circuit(graph, root, np.arange(6), "s")
    halves = [{scopes[f"s/rep{r}/r{h}.sum"] for h in "01"} for r in range(2)]
    assert all(len(s) == 3 for part in halves for s in part)
    assert halves[0] != halves[1]  # each repetition draws its own permutation
    other, _ = build("rat", 6, np.arange(6), depth=2, repetitions=2, units=4, seed=1)
    assert [n.children for n in other.nodes()] != [n.children for n in graph.nodes()]


@pytest.mark.parametrize("template,variables,options,message", [
    ("poon_domingos", np.arange(16), {"delta": 2}, "2-D"),
    ("quad_tree", np.arange(16), {}, "2-D"),
    ("poon_domingos", GRID, {}, "delta"),
    ("poon_domingos", GRID, {"delta": 0}, "delta"),
    ("hclt", np.arange(16), {}, "data"),
    ("rat", np.arange(16), {"depth": 0}, "depth"),
    ("quad_tree", GRID, {"units": 0}, "units"),
    ("quad_tree", GRID, {"colour": 1}, "unknown option"),
    ("quad_tree", np.array([[0, 1], [1, 2]]), {}, "more than once"),
    ("cube", GRID, {}, "unknown structure template"),
    ("rat", np.arange(16), {"data": np.zeros((3, 16), dtype=int)}, "data"),
    ("hclt", np.arange(2), {"trees": 2, "data": np.zeros((3, 16), dtype=int)}, "distinct spanning trees"),
    ("hclt", np.arange(2), {"data": np.full((3, 16), 4)}, "outside 0..3"),
])
def test_impossible_requests(template, variables, options, message):
    with pytest.raises(ValueError, match=message):
        build(template, 16, variables, **options)


# ---- Chow-Liu ------------------------------------------------------------------------------

def direct_mi(x: np.ndarray, y: np.ndarray, kx: int, ky: int, pseudocount: float) -> float:
    """The documented estimator, one pair, with explicit loops."""
    both = (x >= 0) & (y >= 0)
    x, y = x[both], y[both]
    joint = np.zeros((kx, ky))
    for a, b in zip(x, y, strict=True):
        joint[a, b] += 1
    joint = (joint + pseudocount / (kx * ky)) / (len(x) + pseudocount)
    px, py = joint.sum(1), joint.sum(0)
    return sum(joint[a, b] * math.log(joint[a, b] / (px[a] * py[b]))
               for a in range(kx) for b in range(ky) if joint[a, b] > 0)


def test_mutual_information_matches_direct_formula():
    rng = np.random.default_rng(3)
    cards = np.array([2, 3, 7, 5])
    data = correlated_data(400, 4, 2, seed=3) * np.array([1, 1, 3, 2])  # spread over more values
    data = np.minimum(data, cards - 1)
    data[rng.random(data.shape) < 0.2] = -1  # missing values, different rows per column
    bins = 4  # column 2 (7 values) is binned to 4: v -> v * 4 // 7
    binned = np.where(data < 0, -1, data * np.minimum(cards, bins) // cards)
    mi = mutual_information(data, cards, pseudocount=0.5, bins=bins)
    for i, j in itertools.combinations(range(4), 2):
        expected = direct_mi(binned[:, i], binned[:, j], min(cards[i], bins), min(cards[j], bins), 0.5)
        assert mi[i, j] == pytest.approx(expected, abs=1e-9) and mi[j, i] == mi[i, j]
    assert np.all(np.diag(mi) == 0)


def test_mutual_information_known_values():
    x = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    data = np.stack([x, x, np.array([0, 0, 1, 1, 0, 0, 1, 1])], axis=1)
    mi = mutual_information(data, np.array([2, 2, 2]), pseudocount=0.0)
    assert mi[0, 1] == pytest.approx(math.log(2)) and mi[0, 2] == pytest.approx(0.0, abs=1e-12)


def _acyclic(m: int, edges: tuple[tuple[int, int], ...]) -> bool:
    parent = list(range(m))

    def find(v: int) -> int:
        while parent[v] != v:
            v = parent[v]
        return v
    for u, v in edges:
        ru, rv = find(u), find(v)
        if ru == rv:
            return False
        parent[ru] = rv
    return True


def brute_force_best_trees(weights: np.ndarray) -> list[tuple[float, frozenset]]:
    """Every spanning tree of the complete graph, heaviest first."""
    m = len(weights)
    trees = []
    for edges in itertools.combinations(itertools.combinations(range(m), 2), m - 1):
        if _acyclic(m, edges):
            trees.append((sum(weights[u, v] for u, v in edges), frozenset(edges)))
    assert len(trees) == m ** (m - 2)  # Cayley
    return sorted(trees, key=lambda t: -t[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chow_liu_tree_is_a_maximum_spanning_tree(seed):
    data = correlated_data(200, 5, 3, seed=seed)
    cards = np.full(5, 3)
    edges = chow_liu_edges(data, cards, pseudocount=0.1, bins=16)
    weights = np.zeros((5, 5))
    for i, j in itertools.combinations(range(5), 2):
        weights[i, j] = weights[j, i] = direct_mi(data[:, i], data[:, j], 3, 3, 0.1)
    best = brute_force_best_trees(weights)
    assert len(edges) == 4 and edges == sorted(edges)
    assert sum(weights[i, j] for i, j in edges) == pytest.approx(best[0][0], abs=1e-9)
    if best[0][0] - best[1][0] > 1e-9:
        assert frozenset(edges) == best[0][1]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_k_best_spanning_trees_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    weights = rng.random((6, 6))
    weights = np.triu(weights, 1) + np.triu(weights, 1).T
    trees = spanning_trees(weights, 4)
    best = brute_force_best_trees(weights)
    assert len({frozenset(t) for t in trees}) == 4
    got = [sum(weights[i, j] for i, j in t) for t in trees]
    assert got == pytest.approx([w for w, _ in best[:4]], abs=1e-12)
    assert [frozenset(t) for t in trees] == [t for _, t in best[:4]]  # random weights: no ties


def hclt_tree_edges(graph: CircuitGraph, prefix: str) -> set[frozenset]:
    """Tree edges read back from the circuit: a message sum v{u}.sum feeds its parent's product."""
    edges = set()
    for node in graph.nodes():
        if node.name.startswith(prefix + "/") and node.name.endswith(".prod"):
            parent = int(node.name[len(prefix) + 2:-len(".prod")])
            for c in node.children[1:]:
                edges.add(frozenset((parent, int(c[len(prefix) + 2:-len(".sum")]))))
    return edges


def test_hclt_follows_the_chow_liu_tree_rooted_at_its_centre():
    data = correlated_data(500, 6, 4, seed=5)
    graph, root = build("hclt", 6, np.arange(6), hidden=3, data=data)
    edges = hclt_tree_edges(graph, "s")
    assert edges == {frozenset(e) for e in chow_liu_edges(data, np.full(6, 4))}
    check_circuit(graph, root, np.arange(6), "s")
    # the root's latent is the tree centre's (smallest index among centres)
    import networkx as nx
    tree = nx.Graph([tuple(e) for e in edges])
    assert graph.node(root).children == (f"s/v{min(nx.center(tree))}.prod",)
    assert all(graph.node(n).num_units == 3 for n in graph.node(root).children)


def test_hclt_three_trees_are_distinct_and_the_three_best():
    data = correlated_data(500, 5, 3, seed=7)
    graph, root = build("hclt", 5, np.arange(5), hidden=2, trees=3, data=data)
    trees = [frozenset(hclt_tree_edges(graph, f"s/t{t}")) for t in range(3)]
    assert len(set(trees)) == 3 and all(len(t) == 4 for t in trees)
    assert len(graph.node(root).children) == 3
    weights = mutual_information(data, np.full(5, 3))
    best = brute_force_best_trees(weights)
    got = [sum(weights[tuple(sorted(e))] for e in t) for t in trees]
    assert got == pytest.approx([w for w, _ in best[:3]], abs=1e-9)


def test_hclt_on_a_subset_of_variables_uses_only_their_columns():
    data = correlated_data(300, 8, 3, seed=2)
    subset = np.array([6, 1, 3])
    graph, root = build("hclt", 8, subset, hidden=2, data=data)
    check_circuit(graph, root, subset, "s")
    inputs = sorted(n.var for n in graph.nodes() if n.kind is NodeKind.INPUT)
    assert inputs == [1, 3, 6]


# ---- scale ---------------------------------------------------------------------------------

def test_image_templates_on_28x28():
    grid = np.arange(784).reshape(28, 28)
    for template, options in [("quad_tree", {"units": 8}), ("poon_domingos", {"delta": [7, 14], "units": 8})]:
        graph, root = build(template, 784, grid, Domain("categorical", 256), **options)
        check_circuit(graph, root, grid, "s")
    assert graph.node(root).children[:3] == ("s/r0-28c0-28.cutr7", "s/r0-28c0-28.cutr14", "s/r0-28c0-28.cutr21")


def test_mutual_information_at_mnist_scale():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(2000, 784))
    data[:, 1] = data[:, 0]  # one strongly dependent pair among independent ones
    mi = mutual_information(data, np.full(784, 256), pseudocount=0.1, bins=16)
    assert mi.shape == (784, 784) and np.allclose(mi, mi.T)
    assert mi[0, 1] > 2.6  # about log(16) = 2.77 for 16 equally filled bins
    off = mi[2:, 2:][~np.eye(782, dtype=bool)]
    assert 0 < off.max() < 0.2  # independent pairs: only the small-sample bias
