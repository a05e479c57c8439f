"""Every query against brute-force enumeration, on random circuits, for the reference
evaluator and every backend (float64); and the backends against the reference."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from circuits import all_assignments, deterministic_circuit, random_circuit
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pcdsl.backends import lower

from pcdsl import reference
from pcdsl.params import Parameters
from pcdsl.plan import compile_plan

from conftest import ATOL

SEEDS = st.integers(0, 10**6)
PROPERTY = settings(max_examples=15, deadline=None, derandomize=True)
BACKENDS = ["reference", "torch", "numba"]
COMPILED = BACKENDS[1:]


class Reference:
    """The reference evaluator behind the backend query API, so one test covers both."""

    def __init__(self, graph, params: Parameters):  # type: ignore[no-untyped-def]
        self.graph, self.params = graph, params

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        return reference.log_prob(self.graph, self.params, x)

    def map(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return reference.map_state(self.graph, self.params, x)

    def sample(self, n: int, evidence: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
        return reference.sample(self.graph, self.params, n, evidence, seed)

    def flows(self, x: np.ndarray) -> reference.Flows:
        return reference.flows(self.graph, self.params, x)

    def conditional(self, x: np.ndarray, query: list[int]) -> np.ndarray:
        evidence = x.copy()
        evidence[:, query] = -1
        return self.log_prob(x) - self.log_prob(evidence)


def model(backend: str, graph, params):  # type: ignore[no-untyped-def]
    if backend == "reference":
        return Reference(graph, params)
    return lower(compile_plan(graph, params), backend, dtype="float64")


def _np(a):  # type: ignore[no-untyped-def]
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(seed=SEEDS)
def test_joint_sums_to_one_and_marginals_sum_joints(backend: str, seed: int) -> None:
    graph, params = random_circuit(seed)
    m = model(backend, graph, params)
    worlds = all_assignments(graph)
    joint = m.log_prob(worlds)
    assert abs(np.exp(joint).sum() - 1.0) < ATOL
    rng = np.random.default_rng(seed)
    hidden = rng.random(len(graph.variables)) < 0.5
    evidence = worlds[rng.integers(len(worlds))].copy()
    evidence[hidden] = -1
    covered = np.all((worlds == evidence) | hidden, axis=1)
    marginal = m.log_prob(evidence[None])[0]
    assert abs(math.exp(marginal) - np.exp(joint[covered]).sum()) < ATOL
    assert abs(m.log_prob(-np.ones((1, len(graph.variables))))[0]) < ATOL  # nothing observed: log 1


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(seed=SEEDS)
def test_conditionals_sum_to_one_over_the_query(backend: str, seed: int) -> None:
    graph, params = random_circuit(seed)
    m = model(backend, graph, params)
    rng = np.random.default_rng(seed)
    n = len(graph.variables)
    query = sorted(rng.choice(n, size=int(rng.integers(1, n)), replace=False).tolist())
    evidence = all_assignments(graph)[0].copy()
    for v in range(n):
        evidence[v] = rng.integers(graph.variables[v].domain.size) if rng.random() < 0.7 else -1
    observed = evidence.copy()
    observed[query] = -1
    assume(np.isfinite(reference.log_prob(graph, params, observed[None])[0]))  # p(x_E) > 0
    values = [range(graph.variables[v].domain.size) for v in query]
    rows = []
    for combo in itertools.product(*values):
        row = evidence.copy()
        row[query] = combo
        rows.append(row)
    total = np.exp(_np(m.conditional(np.array(rows), query))).sum()
    assert abs(total - 1.0) < ATOL


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(seed=SEEDS)
def test_map_is_the_argmax_on_deterministic_circuits(backend: str, seed: int) -> None:
    graph, params = deterministic_circuit(seed)
    m = model(backend, graph, params)
    worlds = all_assignments(graph)
    joint = reference.log_prob(graph, params, worlds)
    rng = np.random.default_rng(seed)
    evidence = worlds[rng.integers(len(worlds))].copy()
    evidence[rng.random(len(evidence)) < 0.6] = -1
    covered = np.all((worlds == evidence) | (evidence == -1), axis=1)
    best = joint[covered].max()
    assume(np.isfinite(best))  # evidence with probability 0 has no MAP completion
    completed, lp = m.map(evidence[None])
    completed, lp = _np(completed)[0], _np(lp)[0]
    assert abs(lp - best) < ATOL
    assert np.all((completed == evidence) | (evidence == -1))
    assert abs(reference.log_prob(graph, params, completed[None])[0] - best) < ATOL


def _chi_square_ok(counts: np.ndarray, probs: np.ndarray) -> bool:
    """Pearson's test at about the 0.999 level (Wilson-Hilferty), cells merged below 5 expected."""
    n = counts.sum()
    expected = probs * n
    keep = expected >= 5
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(expected[keep], expected[~keep].sum())
    if expected[-1] < 5:
        observed, expected = observed[:-1], expected[:-1]
    df = len(observed) - 1
    if df < 1:
        return True
    stat = ((observed - expected) ** 2 / expected).sum()
    limit = df * (1 - 2 / (9 * df) + 3.09 * math.sqrt(2 / (9 * df))) ** 3
    return bool(stat < limit)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [3, 11, 29])
def test_samples_follow_the_distribution(backend: str, seed: int) -> None:
    graph, params = random_circuit(seed, num_vars=3)
    m = model(backend, graph, params)
    worlds = all_assignments(graph)
    probs = np.exp(reference.log_prob(graph, params, worlds))
    n = 4000 if backend == "reference" else 40000
    draws = _np(m.sample(n, seed=seed))
    index = {tuple(w): i for i, w in enumerate(worlds)}
    counts = np.bincount([index[tuple(d)] for d in draws], minlength=len(worlds))
    assert _chi_square_ok(counts, probs)
    # conditional sampling: clamp the first variable, compare with p(rest | v0 = 1)
    evidence = np.full(len(graph.variables), -1.0)
    evidence[0] = 1
    draws = _np(m.sample(n, evidence=evidence, seed=seed + 1))
    assert np.all(draws[:, 0] == 1)
    clamp = worlds[:, 0] == 1
    counts = np.bincount([index[tuple(d)] for d in draws], minlength=len(worlds))[clamp]
    assert _chi_square_ok(counts, probs[clamp] / probs[clamp].sum())


@PROPERTY
@given(seed=SEEDS)
def test_flows_are_the_derivatives_of_the_log_likelihood(seed: int) -> None:
    """Edge flow = w * d log p / d w (unnormalised w): checked by central differences."""
    graph, params = random_circuit(seed, num_vars=3)
    rng = np.random.default_rng(seed)
    x = all_assignments(graph)[rng.integers(0, 8, size=6) % len(all_assignments(graph))]
    x[rng.random(x.shape) < 0.3] = -1
    x = x[np.isfinite(reference.log_prob(graph, params, x))]  # rows of probability 0 have no gradient
    assume(len(x) > 0)
    flows = reference.flows(graph, params, x)
    group = sorted(params.weights)[int(rng.integers(len(params.weights)))]
    w = params.weights[group]
    unit, col = int(rng.integers(w.shape[0])), int(rng.integers(w.shape[1]))
    eps = 1e-6 * w[unit, col]

    def loglik(delta: float) -> float:
        shifted = Parameters(params.inputs, dict(params.weights))
        shifted.weights[group] = w.copy()
        shifted.weights[group][unit, col] += delta
        return float(reference.log_prob(graph, shifted, x).sum())

    derivative = (loglik(eps) - loglik(-eps)) / (2 * eps)
    assert abs(w[unit, col] * derivative - flows.weights[group][unit, col]) < 1e-5


@pytest.mark.parametrize("backend", COMPILED)
@PROPERTY
@given(seed=SEEDS)
def test_backend_equals_reference(backend: str, seed: int) -> None:
    graph, params = random_circuit(seed, num_vars=5, real=True)
    m = model(backend, graph, params)
    rng = np.random.default_rng(seed)
    x = np.stack([rng.integers(0, v.domain.size, 40) if v.domain.size else rng.normal(size=40)
                  for v in graph.variables], axis=1).astype(np.float64)
    hide = rng.random(x.shape) < 0.3
    for v, var in enumerate(graph.variables):
        x[hide[:, v], v] = -1 if var.domain.is_discrete else np.nan
    np.testing.assert_allclose(_np(m.log_prob(x)), reference.log_prob(graph, params, x), rtol=0, atol=ATOL)
    ours, theirs = m.flows(x), reference.flows(graph, params, x)
    for group, value in theirs.weights.items():
        assert np.abs(_np(ours.weights[group]) - value).max() < ATOL
    for node, stats in theirs.inputs.items():
        for key, value in stats.items():
            assert np.abs(_np(ours.inputs[node][key]) - value).max() < ATOL
    query = [0, 2]  # log p(x_Q | x_E) = log p(x) - log p(x_E)
    evidence = x.copy()
    for v in query:
        evidence[:, v] = -1 if graph.variables[v].domain.is_discrete else np.nan
    with np.errstate(invalid="ignore"):
        expected = reference.log_prob(graph, params, x) - reference.log_prob(graph, params, evidence)
    np.testing.assert_allclose(_np(m.conditional(x, query)), expected, rtol=0, atol=ATOL)
    completed, lp = m.map(x[:8])
    ref_completed, ref_lp = reference.map_state(graph, params, x[:8])
    np.testing.assert_allclose(_np(lp), ref_lp, rtol=0, atol=ATOL)  # equal infinities count as equal
    if _np(completed).dtype.kind == "i":  # every variable discrete: integers, -1 where the reference has NaN
        ref_completed = np.nan_to_num(ref_completed, nan=-1.0)
    assert np.allclose(_np(completed), ref_completed, atol=ATOL, equal_nan=True)  # NaN: impossible evidence


@pytest.mark.parametrize("backend", COMPILED)
def test_huge_circuit_with_tiny_weights_is_finite(backend: str) -> None:
    """10,000 variables: log-likelihoods far below the float range stay finite."""
    from pcdsl.ir.graph import BOOL, CircuitGraph, Variable

    n = 10_000
    graph = CircuitGraph("wide", tuple(Variable(f"x{i}", i, BOOL) for i in range(n)))
    for i in range(n):
        graph.add_input(f"a{i}", i, "bernoulli", 2, {"p": np.array([1e-30, 0.5])})
    graph.add_product("prod", tuple(f"a{i}" for i in range(n)))
    graph.add_sum("root", ("prod",), 1, np.array([[1e-300, 1 - 1e-300]]))
    from pcdsl.params import initialise

    params = initialise(graph)
    x = np.ones((3, n))
    for dtype in ("float32", "float64"):
        lp = _np(lower(compile_plan(graph, params), backend, dtype=dtype).log_prob(x))
        assert np.all(np.isfinite(lp))
        assert abs(lp[0] - n * math.log(0.5)) < 1e-3 * n
    assert np.all(np.isfinite(reference.log_prob(graph, params, x)))


@pytest.mark.parametrize("backend", COMPILED)
def test_impossible_evidence_gives_minus_infinity_not_nan(backend: str) -> None:
    graph, params = deterministic_circuit(5, num_vars=3)
    for leaf in graph.nodes():
        if leaf.family == "categorical":
            params.inputs[leaf.name]["probs"][:] = np.eye(params.inputs[leaf.name]["probs"].shape[1])[0]
    x = np.ones((2, 3))  # value 1 has probability 0 under every categorical leaf
    m = model(backend, graph, params)
    lp = _np(m.log_prob(x))
    assert np.all(np.isneginf(lp))
    assert np.all(np.isneginf(reference.log_prob(graph, params, x)))
    flows = m.flows(x)
    assert all(np.all(np.isfinite(_np(v))) for v in flows.weights.values())
