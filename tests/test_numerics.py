"""Stable log-space arithmetic (docs/numerics.md): sums shifted by weighted terms, in forward,
flows, MAP and sampling, on every backend in float32 and float64; one rule for impossible
evidence; the scale edges (10^5 variables, impossible batches, float32 underflow)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from circuits import random_circuit, scale_gaussians
from hypothesis import given, settings
from hypothesis import strategies as st
from pcdsl.backends import lower

import pcdsl
from pcdsl import reference
from pcdsl.ir.graph import BOOL, REAL, CircuitGraph, Variable
from pcdsl.learn.em import em_update
from pcdsl.params import Parameters, initialise
from pcdsl.plan import compile_plan

BACKENDS = ["torch", "numba"]
DTYPES = ["float32", "float64"]
FLOAT32_RTOL = 1e-3  # float32 log-likelihoods against the float64 reference: relative to max(1, |exact|)

ZERO_WEIGHT_MAX = """
circuit c { var u : real
  leaf g0 = gaussian(u, mean = 20, std = 1)
  leaf g1 = gaussian(u, mean = 0, std = 1)
  sum root = 0 g0 + 1 g1 }"""


def _np(a):  # type: ignore[no-untyped-def]
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def _model(graph: CircuitGraph, params: Parameters, backend: str, dtype: str):  # type: ignore[no-untyped-def]
    return lower(compile_plan(graph, params), backend, dtype=dtype)


def _close(got: np.ndarray, exact: np.ndarray, rtol: float) -> bool:
    got, exact = np.asarray(got, dtype=np.float64), np.asarray(exact, dtype=np.float64)
    same_inf = np.isinf(exact) & (got == exact)
    return bool(np.all(same_inf | (np.abs(got - exact) <= rtol * np.maximum(1.0, np.abs(exact)))))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_zero_weight_child_never_sets_the_shift(backend: str, dtype: str) -> None:
    """`0 g0 + 1 g1` at u = 20: g0 is the larger child but weighs nothing (it gave -inf in float32)."""
    graph = pcdsl.check_text(ZERO_WEIGHT_MAX).circuit("c")
    params = initialise(graph)
    x = np.array([[20.0], [0.0]])
    exact = -200 - 0.5 * math.log(2 * math.pi)
    m = _model(graph, params, backend, dtype)
    assert _close(_np(m.log_prob(x)), [exact, -0.5 * math.log(2 * math.pi)], 1e-6)
    flows = m.flows(x[:1])
    np.testing.assert_allclose(_np(flows.weights["root"]), [[0.0, 1.0]], atol=1e-6)
    assert float(_np(flows.inputs["g1"]["n"])[0]) == pytest.approx(1.0, abs=1e-6)
    assert abs(flows.log_likelihood - exact) < 1e-6 * abs(exact)


def _imbalanced() -> tuple[CircuitGraph, Parameters]:
    """A two-unit sum whose unit 1 lies ~200 nats below the column's largest input (set by unit 0's
    child), and a product that makes unit 1 the one that matters."""
    graph = CircuitGraph("imbalanced", (Variable("u", 0, REAL), Variable("v", 1, REAL)))
    graph.add_input("g", 0, "gaussian", 2, {"mean": np.array([20.0, 0.0]), "std": np.ones(2)})
    graph.add_sum("s", ("g",), 2, np.array([[1.0, 0.0], [0.0, 1.0]]))
    graph.add_input("h", 1, "gaussian", 2, {"mean": np.array([300.0, 0.0]), "std": np.ones(2)})
    graph.add_product("p", ("s", "h"))
    graph.add_sum("root", ("p",), 1, np.array([[0.5, 0.5]]))
    return graph, initialise(graph)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_units_far_below_their_columns_shift_keep_their_value(backend: str, dtype: str) -> None:
    graph, params = _imbalanced()
    x = np.array([[20.0, 0.0], [0.0, 0.0], [20.0, 300.0]])
    m = _model(graph, params, backend, dtype)
    exact = reference.log_prob(graph, params, x)
    assert np.all(np.isfinite(exact)) and _close(_np(m.log_prob(x)), exact, 1e-6)
    ours, theirs = m.flows(x), reference.flows(graph, params, x)
    for group, value in theirs.weights.items():
        np.testing.assert_allclose(_np(ours.weights[group]), value, atol=1e-5)
    for node, stats in theirs.inputs.items():
        for key, value in stats.items():
            np.testing.assert_allclose(_np(ours.inputs[node][key]), value, atol=1e-4, rtol=1e-5)
    # sampling u given v = 0 draws from unit 1 (N(0, 1)); with unit 1 lost it drew from unit 0 (near 20)
    samples = _np(m.sample(200, evidence=np.array([np.nan, 0.0]), seed=1))
    assert np.all(np.abs(samples[:, 0]) < 8) and np.all(samples[:, 1] == 0)
    completed, lp = m.map(np.array([[np.nan, 0.0]]))
    assert abs(float(_np(completed)[0, 0])) < 1e-6  # the mean of unit 1
    assert _close(_np(lp), reference.log_prob(graph, params, _np(completed)), 1e-6)


def test_the_emitted_torch_module_takes_the_same_care(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import importlib
    import sys

    import torch
    from pcdsl.backends.torch.emit import emit_module

    graph, params = _imbalanced()
    emit_module(compile_plan(graph, params), tmp_path, "stable_circuit")
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module("stable_circuit")
    finally:
        sys.path.remove(str(tmp_path))
    x = np.array([[20.0, 0.0], [0.0, 0.0]])
    got = module.load(dtype="float32").log_prob(torch.as_tensor(x)).numpy()
    assert _close(got, reference.log_prob(graph, params, x), 1e-6)


def _extreme(seed: int) -> tuple[CircuitGraph, Parameters, np.ndarray]:
    """A random circuit whose sum rows hold exact zeros and 1e-30s, with Gaussian leaves at scales
    1e-3..1e5 (offsets up to 30 stds), and rows sampled from it and pushed into its tails."""
    graph, params = random_circuit(seed, num_vars=5, real=True)
    rng = np.random.default_rng(seed)
    for group, w in params.weights.items():
        w = w.copy()
        if w.shape[1] > 1:
            cells = rng.random(w.shape)
            w[cells < 0.25] = 0.0
            w[(cells >= 0.25) & (cells < 0.45)] = 1e-30
            w[np.arange(w.shape[0]), rng.integers(w.shape[1], size=w.shape[0])] = 1.0  # each row keeps mass
        params.weights[group] = w / w.sum(axis=1, keepdims=True)
    scale = scale_gaussians(graph, params, rng, offset=30, spread=(0.2, 2.0))
    x = reference.sample(graph, params, 24, seed=seed)
    for v, s in scale.items():
        x[::3, v] += s * rng.normal(0, 20, size=len(x[::3]))  # into the tails: tiny, still finite
    return graph, params, x


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=12, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10**6))
def test_float32_agrees_with_the_float64_reference_on_extreme_circuits(backend: str, seed: int) -> None:
    graph, params, x = _extreme(seed)
    exact = reference.log_prob(graph, params, x)
    finite = np.isfinite(exact) & (np.abs(exact) < np.finfo(np.float32).max)
    got = _np(_model(graph, params, backend, "float32").log_prob(x))
    assert not np.isnan(got).any()
    assert _close(got[finite], exact[finite], FLOAT32_RTOL), (got[finite] - exact[finite])
    flows = _model(graph, params, backend, "float32").flows(x)
    assert all(np.isfinite(_np(f)).all() for f in flows.weights.values())
    assert all(np.isfinite(_np(v)).all() for stats in flows.inputs.values() for v in stats.values())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numba_gemm_path_keeps_the_underflow_repair(dtype: str, seed: int) -> None:
    """Every dense fold through BLAS's gemm (blas=0) on the extreme circuits: the units whose
    shifted sums underflow are still recomputed (log-likelihoods) and sent edge by edge (flows)."""
    pytest.importorskip("numba")
    from pcdsl.backends.numba import kernels
    if not kernels.BLAS:
        pytest.skip("no BLAS for numba (SciPy is not installed)")
    graph, params, x = _extreme(seed)
    model = _model(graph, params, "numba", dtype)
    model.circuit.blas = 0
    exact = reference.log_prob(graph, params, x)
    finite = np.isfinite(exact) & (np.abs(exact) < np.finfo(np.float32).max)
    got = _np(model.log_prob(x))
    assert not np.isnan(got).any()
    rtol = FLOAT32_RTOL if dtype == "float32" else 1e-9
    assert _close(got[finite], exact[finite], rtol), (got[finite] - exact[finite])
    flows, want = model.flows(x), reference.flows(graph, params, x)
    for group, value in want.weights.items():
        assert _close(_np(flows.weights[group]), value, rtol), group


# ---- evidence of probability zero --------------------------------------------------------------

IMPOSSIBLE = """
circuit c { var a, b, c : bool
  leaf a0 = indicator(a, 0)  leaf a1 = indicator(a, 1)
  leaf b0 = bernoulli(b, p = 0)  leaf b1 = bernoulli(b, p = 0.7)
  leaf c0 = bernoulli(c, p = 0.4)  leaf c1 = bernoulli(c, p = 0)
  prod p0 = a0 * b0 * c0  prod p1 = a1 * b1 * c1
  sum root = 0.5 p0 + 0.5 p1 }"""


def _impossible_setup() -> tuple[CircuitGraph, Parameters, np.ndarray]:
    graph = pcdsl.check_text(IMPOSSIBLE).circuit("c")
    x = np.array([[0.0, 1, -1], [0, 0, -1], [-1, 1, 1]])  # rows 0 and 2 have probability 0
    return graph, initialise(graph), x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_undefined_answers_are_signalled_alike_everywhere(backend: str, dtype: str) -> None:
    """log p = -inf; conditionals on it NaN; samples and MAP completions NaN in their missing entries
    (-1 in the backends' integer results)."""
    graph, params, x = _impossible_setup()
    lp = reference.log_prob(graph, params, x)
    impossible = np.isneginf(lp)
    assert impossible.tolist() == [True, False, True]
    if backend == "reference":
        samples = reference.sample(graph, params, 3, evidence=x, seed=0)
        completed, map_lp = reference.map_state(graph, params, x)
    else:
        m = _model(graph, params, backend, dtype)
        assert np.array_equal(np.isneginf(_np(m.log_prob(x))), impossible)
        with np.errstate(invalid="ignore"):
            conditional = _np(m.conditional(x, [2]))  # p(c | a, b): undefined where p(a, b) = 0
        assert np.isnan(conditional[0]) and np.isfinite(conditional[1]) and np.isneginf(conditional[2])
        samples = _np(m.sample(3, evidence=x, seed=0))
        completed, map_lp = (_np(a) for a in m.map(x))
    missing = x == -1
    for rows in (samples, completed):
        # the backends give integers for an all-discrete circuit, -1 (missing) where the reference has NaN
        undefined = np.isnan(rows) if rows.dtype.kind == "f" else rows == -1
        assert rows.dtype.kind == ("f" if backend == "reference" else "i")
        assert np.array_equal(undefined, missing & impossible[:, None])
        assert np.array_equal(rows[~missing], x[~missing])  # observed entries come back as given
    assert np.array_equal(np.isneginf(map_lp), impossible)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_of_impossible_rows_leaves_every_parameter_finite(backend: str, dtype: str) -> None:
    graph, params, x = _impossible_setup()
    m = _model(graph, params, backend, dtype)
    flows = m.flows(x[[0, 2]])
    assert flows.log_likelihood == -math.inf
    assert all(np.all(_np(f) == 0) for f in flows.weights.values())
    updated = em_update(params, flows, step=0.5, pseudocount=0.1)
    for group, w in updated.weights.items():
        assert np.array_equal(w, params.weights[group])  # no flow, no change
    for node, p in updated.inputs.items():
        for key, value in p.items():
            assert np.array_equal(value, params.inputs[node][key])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_underflow_never_becomes_nan(backend: str, dtype: str) -> None:
    """Weights and leaf probabilities of 1e-30 and 1e-45 on 2,000 variables: every value far below
    the float range, no NaN in results, flows or the parameters EM computes from them."""
    n = 2000
    graph = CircuitGraph("tiny_numbers", tuple(Variable(f"x{i}", i, BOOL) for i in range(n)))
    for i in range(n):
        graph.add_input(f"a{i}", i, "bernoulli", 2, {"p": np.array([1e-30, 1e-45])})
    graph.add_product("prod", tuple(f"a{i}" for i in range(n)))
    graph.add_sum("root", ("prod",), 1, np.array([[1e-30, 1 - 1e-30]]))
    params = initialise(graph)
    x = np.ones((4, n))
    x[1, ::2] = -1
    m = _model(graph, params, backend, dtype)
    lp = _np(m.log_prob(x))
    assert not np.isnan(lp).any() and np.all(lp < -1e4)
    flows = m.flows(x)
    assert np.isfinite(flows.log_likelihood)
    learned = em_update(params, flows, step=0.3, pseudocount=0.0)
    assert all(np.isfinite(w).all() for w in learned.weights.values())
    assert all(np.isfinite(v).all() for p in learned.inputs.values() for v in p.values())


def test_a_hundred_thousand_variables() -> None:
    """10^5 variables: a mixture of two fully factorised distributions compiles, evaluates, learns
    on both backends and in both dtypes, with no NaN anywhere."""
    from pcdsl.ir.validate import validate
    from pcdsl.structures.fully_factorized import fully_factorized

    n = 100_000
    graph = CircuitGraph("wide", tuple(Variable(f"x{i}", i, BOOL) for i in range(n)))
    fully_factorized(graph, np.arange(n), prefix="ff", units=2)
    assert not [d for d in validate(graph) if d.is_error]
    params = initialise(graph)
    x = np.random.default_rng(0).integers(0, 2, size=(8, n)).astype(np.float64)
    x[0, :1000] = -1
    exact = reference.log_prob(graph, params, x)
    plan = compile_plan(graph, params)
    for backend in BACKENDS:
        for dtype in DTYPES:
            m = lower(plan, backend, dtype=dtype)
            assert _close(_np(m.log_prob(x)), exact, 1e-5 if dtype == "float32" else 1e-9)
            flows = m.flows(x)
            learned = em_update(params, flows, step=1.0, pseudocount=0.1)
            assert all(np.isfinite(w).all() for w in learned.weights.values())
            assert all(np.isfinite(v).all() for p in learned.inputs.values() for v in p.values())


# ---- the GPU's sync-free sum rules, run on the CPU --------------------------------------------

def _same_answers(graph: CircuitGraph, params: Parameters, x: np.ndarray, dtype: str) -> None:
    """The sync-free torch rules (a GPU's default) give bit for bit what the syncing rules give."""
    syncing, free = _model(graph, params, "torch", dtype), _model(graph, params, "torch", dtype)
    free.sync_free = True
    assert free.sync_free and not syncing.sync_free
    np.testing.assert_array_equal(_np(free.log_prob(x)), _np(syncing.log_prob(x)))
    ours, theirs = free.flows(x), syncing.flows(x)
    assert ours.log_likelihood == theirs.log_likelihood
    for group, value in theirs.weights.items():
        np.testing.assert_array_equal(_np(ours.weights[group]), _np(value))
    for node, stats in theirs.inputs.items():
        for key, value in stats.items():
            np.testing.assert_array_equal(_np(ours.inputs[node][key]), _np(value))


@pytest.mark.parametrize("capacity", [1024, 1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sync_free_sums_repair_underflow_exactly_as_the_syncing_ones(dtype: str, capacity: int,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Capacity 1: more lost units than repaired, so the pass reruns with the syncing rules."""
    import pcdsl.backends.torch.layers as layers

    monkeypatch.setattr(layers, "REPAIR_CAPACITY", capacity)
    graph, params = _imbalanced()
    x = np.array([[20.0, 0.0], [0.0, 0.0], [20.0, 300.0], [20.0, 0.0]])
    _same_answers(graph, params, x, dtype)
    for seed in (3, 11):
        _same_answers(*_extreme(seed), "float32")
