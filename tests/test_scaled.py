"""The numba backend's scaled kernels (values relative to a log scale per group of slots) give
the log kernels' log-likelihoods and flows, on every kind of circuit, and hand a tile back to the
log kernels where underflow would take digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from circuits import pruned_circuit, random_circuit
from pcdsl.backends import lower

import pcdsl
from pcdsl import reference
from pcdsl.params import initialise
from pcdsl.plan import compile_plan

pytest.importorskip("numba")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TOL = 1e-9


def _flows_close(a: dict, b: dict, tol: float) -> None:  # type: ignore[type-arg]
    assert a["log_likelihood"] == pytest.approx(b["log_likelihood"], rel=tol, abs=tol)
    for key in ("weights", "counts", "gaussian"):
        np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), rtol=tol, atol=tol)


def _both_ways(model, x: np.ndarray) -> tuple[np.ndarray, dict, np.ndarray, dict, np.ndarray]:  # type: ignore[no-untyped-def, type-arg]
    """(log_prob, flows) scaled, the same in logs, and the scaled forward's lost tiles."""
    circuit = model.circuit
    assert circuit.scaled
    scaled_ll, scaled_flows = circuit.log_prob(x), circuit.flows(x)
    index, real, _, _ = circuit._evidence(x)
    lost = circuit._forward_scaled(index, real)[2].copy()
    circuit.scaled = False
    try:
        return scaled_ll, scaled_flows, circuit.log_prob(x), circuit.flows(x), lost
    finally:
        circuit.scaled = True


def _data(graph, params, n: int, seed: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    x = reference.sample(graph, params, n, seed=seed)
    x[np.random.default_rng(seed).random(x.shape) < 0.2] = np.nan
    return x


@pytest.mark.parametrize("seed", range(6))
def test_random_circuits_scaled_equal_logs(seed: int) -> None:
    """Scalar and vector groups, hadamard and kronecker products, shared sub-circuits, gaussian,
    bernoulli, categorical and indicator leaves, missing values: the same log p and flows."""
    graph, params = random_circuit(seed, num_vars=5, real=seed % 2 == 1)
    model = lower(compile_plan(graph, params), "numba", dtype="float64")
    x = _data(graph, params, 150, seed)
    ll, flows, ll_log, flows_log, lost = _both_ways(model, x)
    assert not lost.any()
    np.testing.assert_allclose(ll, ll_log, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(ll, reference.log_prob(graph, params, x), rtol=TOL, atol=TOL)
    _flows_close(flows, flows_log, TOL)


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.3])
def test_pruned_circuits_on_sparse_layers_scaled_equal_logs(keep: float) -> None:
    graph, params = pruned_circuit(3, keep, real=True)
    plan = compile_plan(graph, params, sparse_density=0.5)
    model = lower(plan, "numba", dtype="float64")
    assert (model.circuit.ops[:, 0] == 2).any()  # sparse layers
    x = _data(graph, params, 150, 3)
    ll, flows, ll_log, flows_log, _ = _both_ways(model, x)
    np.testing.assert_allclose(ll, ll_log, rtol=TOL, atol=TOL)
    _flows_close(flows, flows_log, TOL)


@pytest.mark.parametrize("example", ["hclt_nltcs.pc", "rat.pc", "quad_tree.pc", "groups.pc"])
def test_example_circuits_scaled_equal_logs(example: str) -> None:
    graph = pcdsl.load(EXAMPLES / example)
    model = pcdsl.compile(graph, "numba", dtype="float64")
    x = model.sample(200, seed=1).astype(np.float64)
    x[np.random.default_rng(1).random(x.shape) < 0.2] = -1
    ll, flows, ll_log, flows_log, lost = _both_ways(model, x)
    assert not lost.any()
    np.testing.assert_allclose(ll, ll_log, rtol=TOL, atol=TOL)
    _flows_close(flows, flows_log, TOL)


FAR_APART = """
circuit far_apart {
  var a, b : categorical(3)
  leaf a0 = categorical(a, [0.98, 0.01, 0.01])
  leaf a1 = categorical(a, [1e-45, 0.5, 0.5])
  leaf b0 = categorical(b, [0.2, 0.3, 0.5])
  leaf b1 = categorical(b, [0.6, 0.2, 0.2])
  prod p0 = a0 * b0
  prod p1 = a1 * b1
  sum low = 0 p0 + 1 p1
  sum high = 0.5 p0 + 0.5 p1
  sum root = 1 low + 0 high
}
"""


def test_tiles_that_underflow_go_back_to_logs_and_give_their_results(tmp_path: Path) -> None:
    """float32: where a = 0, p1 lies 100 nats below p0, and the root reads it only (through
    `low`): the root's fold sums fall below the smallest float. Those tiles are recomputed in
    logs, the others stay scaled, and every result is the log kernels'."""
    source = tmp_path / "far.pc"
    source.write_text(FAR_APART)
    graph = pcdsl.load(source)
    model = pcdsl.compile(graph, "numba", dtype="float32")
    x = np.ones((400, 2))
    x[300:, 0] = 0  # the last tiles hold the far-apart samples
    ll, flows, ll_log, flows_log, lost = _both_ways(model, x)
    assert lost.any() and not lost.all()
    np.testing.assert_allclose(ll, ll_log, rtol=1e-6)
    np.testing.assert_allclose(ll, reference.log_prob(graph, initialise(graph, 0), x), rtol=1e-5)
    _flows_close(flows, flows_log, 1e-4)


def test_evidence_of_probability_zero_gives_minus_infinity_and_no_flow() -> None:
    graph = pcdsl.load(EXAMPLES / "hclt_nltcs.pc")
    model = pcdsl.compile(graph, "numba", dtype="float64")
    circuit = model.circuit
    lp = circuit.lp.copy()
    for _slot, var, off, _size in circuit.cat:
        if var == 3:
            lp[off] = -np.inf  # value 0 of variable 3 is impossible
    circuit.set_arrays({"lp": lp, "gmean": circuit.gmean, "gstd": circuit.gstd, "weights": circuit.weights})
    x = np.ones((40, len(circuit.variables)))
    x[::3, 3] = 0
    ll, flows, ll_log, flows_log, lost = _both_ways(model, x)
    assert lost.any()
    assert np.isneginf(ll[::3]).all() and np.isfinite(np.delete(ll, np.s_[::3])).all()
    np.testing.assert_allclose(ll, ll_log, rtol=TOL, atol=TOL)
    _flows_close(flows, flows_log, TOL)


FAR_OUT = """
circuit far_out {
  var u : real
  var a : bool
  leaf g0 = gaussian(u, mean = 0.0, std = 1e-5)
  leaf a0 = bernoulli(a, p = 0.2)
  leaf a1 = bernoulli(a, p = 0.9)
  prod p0 = g0 * a0
  prod p1 = g0 * a1
  sum root = 0.3 p0 + 0.7 p1
}
"""


def test_a_gaussian_density_that_underflows_to_zero_is_zero_on_both_paths(tmp_path: Path) -> None:
    """x = 1e150 with std 1e-5: z^2 overflows, the density is 0 (log -inf). The scaled path must
    not read it as a value of 1 at scale -inf (products of it feed a fold directly)."""
    source = tmp_path / "far_out.pc"
    source.write_text(FAR_OUT)
    model = pcdsl.compile(pcdsl.load(source), "numba", dtype="float64")
    x = np.array([[1e150, 1.0], [3.0, 1.0], [np.nan, 0.0]])
    ll, flows, ll_log, flows_log, _ = _both_ways(model, x)
    assert np.isneginf(ll[0]) and np.isfinite(ll[1:]).all()
    np.testing.assert_allclose(ll, ll_log, rtol=TOL)
    _flows_close(flows, flows_log, TOL)


def test_counts_are_zero_outside_each_rows_cardinality() -> None:
    """lp's rows are as wide as a layer's widest variable: their padding never counts, call
    after call (the count buffer is kept between calls)."""
    graph, params = random_circuit(0, num_vars=5)
    circuit = lower(compile_plan(graph, params), "numba", dtype="float64").circuit
    padding = np.isneginf(circuit.lp)
    assert padding.any()
    for seed in range(3):
        counts = circuit.flows(reference.sample(graph, params, 50, seed=seed))["counts"]
        assert (counts[padding] == 0).all() and counts.sum() > 0


@pytest.mark.parametrize(("seed", "keep"), [(0, None), (3, None), (0, 0.1), (2, 0.0)])
def test_flows_arrays_handed_out_are_never_written_while_held(seed: int, keep: float | None) -> None:
    """flows hands out its statistics arrays without a copy and takes one back into use only once
    nothing holds it: a result kept (or a view of it) stays as it was, and a result written to and
    dropped leaves no trace in the next (lp's padding and dead units' rows included)."""
    graph, params = random_circuit(seed, num_vars=5) if keep is None else pruned_circuit(seed, keep)
    model = lower(compile_plan(graph, params, sparse_density=0.5), "numba", dtype="float64")
    assert keep is None or not model.circuit.live.everything
    x1, x2 = _data(graph, params, 40, seed), _data(graph, params, 40, seed + 1)
    fresh = {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v for k, v in model.circuit.flows(x1).items()}
    held = model.circuit.flows(x1)
    view = held["counts"][:3]
    kept = {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v for k, v in held.items()}
    model.circuit.flows(x2)
    _flows_close(held, kept, 0.0)
    np.testing.assert_array_equal(view, kept["counts"][:3])
    del held, view
    scribbled = model.circuit.flows(x2)
    for key in ("weights", "counts"):
        scribbled[key][:] = 7.0
    del scribbled
    _flows_close(model.circuit.flows(x1), fresh, TOL)
    by_group = model.flows(x1)  # the backend's result: views of the same arrays
    before = {g: np.array(v, copy=True) for g, v in by_group.weights.items()}
    model.flows(x2)
    for group, value in by_group.weights.items():
        np.testing.assert_array_equal(value, before[group])
