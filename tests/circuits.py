"""Random valid circuits for property tests, built straight into a CircuitGraph.

`random_circuit` makes smooth, decomposable circuits with scalar and vector
node groups, hadamard and kronecker products, shared sub-circuits and mixed
leaf types; `deterministic_circuit` makes circuits whose sums split on the
value of a variable (so MAP by max-product is exact).
"""

from __future__ import annotations

import itertools

import numpy as np

from pcdsl.ir.graph import BOOL, REAL, CircuitGraph, Domain, Variable
from pcdsl.params import Parameters, initialise


def _variables(rng: np.random.Generator, n: int, real: bool) -> tuple[Variable, ...]:
    domains = [BOOL, Domain("categorical", 3), Domain("categorical", 2)] + ([REAL] if real else [])
    return tuple(Variable(f"v{i}", i, domains[rng.integers(len(domains))]) for i in range(n))


class _Gen:
    def __init__(self, graph: CircuitGraph, rng: np.random.Generator):
        self.g, self.rng = graph, rng
        self.count = 0
        self.cache: dict[tuple[tuple[int, ...], int], str] = {}

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def leaf(self, var: int, units: int) -> str:
        domain = self.g.variables[var].domain
        if domain.kind == "real":
            family = "gaussian"
        elif domain.kind == "bool" and self.rng.random() < 0.5:
            family = "bernoulli"
        else:
            family = "categorical"
        if units == 1 and domain.is_discrete and self.rng.random() < 0.2:
            family = "indicator"
            value = np.array([self.rng.integers(domain.size)])
            return self.g.add_input(self.name("i"), var, family, 1, {"value": value}).name
        return self.g.add_input(self.name("l"), var, family, units).name

    def region(self, scope: tuple[int, ...], units: int, depth: int) -> str:
        key = (scope, units)
        if key in self.cache and self.rng.random() < 0.5:  # share a sub-circuit
            return self.cache[key]
        if len(scope) == 1 or depth == 0:
            out = self._factorised(scope, units)
        else:
            parts = [self._partition(scope, units, depth) for _ in range(self.rng.integers(1, 3))]
            out = self.g.add_sum(self.name("s"), tuple(parts), units).name
        self.cache[key] = out
        return out

    def _factorised(self, scope: tuple[int, ...], units: int) -> str:
        leaves = [self.leaf(v, units) for v in scope]
        if len(leaves) == 1:
            return leaves[0]
        return self.g.add_sum(self.name("s"), (self.g.add_product(self.name("p"), tuple(leaves)).name,), units).name

    def _partition(self, scope: tuple[int, ...], units: int, depth: int) -> str:
        order = list(self.rng.permutation(scope))
        cut = int(self.rng.integers(1, len(order)))
        left, right = tuple(sorted(order[:cut])), tuple(sorted(order[cut:]))
        if self.rng.random() < 0.3:  # kronecker: children of 2 units make 4 combinations
            kids = (self.region(left, 2, depth - 1), self.region(right, 2, depth - 1))
            return self.g.add_product(self.name("k"), kids, "kronecker").name
        kids = (self.region(left, units, depth - 1), self.region(right, units, depth - 1))
        return self.g.add_product(self.name("p"), kids).name


def random_circuit(seed: int, num_vars: int = 4, real: bool = False,
                   units: int | None = None) -> tuple[CircuitGraph, Parameters]:
    """`units`: the width of the top region's node groups (random 1..3 when None)."""
    rng = np.random.default_rng(seed)
    graph = CircuitGraph(f"random{seed}", _variables(rng, num_vars, real))
    gen = _Gen(graph, rng)
    units = int(rng.integers(1, 4)) if units is None else units
    top = gen.region(tuple(range(num_vars)), units, depth=3)
    if graph.node(top).num_units != 1 or graph.node(top).kind.value != "sum":
        graph.add_sum("root", (top,), 1)
    return graph, initialise(graph, seed, perturbation=0.9)


def pruned_circuit(seed: int, keep: float = 0.3, num_vars: int = 5,
                   real: bool = False) -> tuple[CircuitGraph, Parameters]:
    """A random circuit of wide node groups whose sum weights keep about `keep` of their edges
    (each unit its heaviest one, so every row stays a distribution), as pruning leaves them."""
    graph, params = random_circuit(seed, num_vars, real, units=8)
    rng = np.random.default_rng(seed + 1)
    for group, w in params.weights.items():
        mask = rng.random(w.shape) < keep
        mask[np.arange(len(w)), w.argmax(axis=1)] = True
        pruned = np.where(mask, w, 0.0)
        params.weights[group] = pruned / pruned.sum(axis=1, keepdims=True)
    return graph, params


def deterministic_circuit(seed: int, num_vars: int = 4) -> tuple[CircuitGraph, Parameters]:
    rng = np.random.default_rng(seed)
    variables = tuple(Variable(f"v{i}", i, Domain("categorical", int(rng.integers(2, 4)))) for i in range(num_vars))
    graph = CircuitGraph(f"det{seed}", variables)
    gen = _Gen(graph, rng)

    def build(scope: list[int]) -> str:
        if len(scope) == 1:
            return gen.leaf(scope[0], 1) if graph.variables[scope[0]].domain.kind != "real" else ""
        v, rest = scope[0], scope[1:]
        branches = []
        for value in range(graph.variables[v].domain.size or 0):
            indicator = graph.add_input(gen.name("i"), v, "indicator", 1, {"value": np.array([value])}).name
            branches.append(graph.add_product(gen.name("p"), (indicator, build(rest))).name)
        return graph.add_sum(gen.name("s"), tuple(branches), 1).name

    order = [int(v) for v in rng.permutation(num_vars)]
    build(order)
    return graph, initialise(graph, seed, perturbation=0.9)


def scale_gaussians(graph: CircuitGraph, params: Parameters, rng: np.random.Generator, offset: float,
                    spread: tuple[float, float]) -> dict[int, float]:
    """Put each real variable at a scale s in 1e-3..1e5: its Gaussian leaves get means
    s (offset + N(0, 1)) and stds s U(spread). Returns the scale of every real variable."""
    scales = {v.index: 10.0 ** int(rng.integers(-3, 6)) for v in graph.variables if not v.domain.is_discrete}
    for node in graph.nodes():
        if node.family == "gaussian":
            assert node.var is not None
            s = scales[node.var]
            params.inputs[node.name] = {"mean": s * (offset + rng.normal(size=node.num_units)),
                                        "std": s * rng.uniform(*spread, size=node.num_units)}
    return scales


def all_assignments(graph: CircuitGraph) -> np.ndarray:
    sizes = [v.domain.size for v in graph.variables]
    assert all(s is not None for s in sizes), "enumeration needs discrete variables"
    return np.array(list(itertools.product(*[range(s) for s in sizes])), dtype=np.float64)  # type: ignore[arg-type]
