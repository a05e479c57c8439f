"""Pruned circuits skip the units the root does not reach (backends/numba/live.py): log p, every
flow, MAP and samples equal those of the same circuit run whole, and dead units count nothing."""

from __future__ import annotations

import numpy as np
import pytest
from circuits import pruned_circuit, random_circuit
from pcdsl.backends import lower

from pcdsl import reference
from pcdsl.plan import compile_plan

pytest.importorskip("numba")
TOL = 1e-9
CASES = [(seed, keep, real) for seed in (0, 2, 3) for keep in (0.0, 0.1, 0.3) for real in (False, True)]


def _model(seed: int, keep: float, real: bool):  # type: ignore[no-untyped-def]
    graph, params = pruned_circuit(seed, keep, real=real)
    model = lower(compile_plan(graph, params, sparse_density=0.5), "numba", dtype="float64")
    return graph, params, model


def _data(graph, params, n: int, seed: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    x = reference.sample(graph, params, n, seed=seed)
    x[np.random.default_rng(seed).random(x.shape) < 0.2] = np.nan
    return x


def _queries(circuit, x: np.ndarray, skip: bool) -> tuple:  # type: ignore[no-untyped-def, type-arg]
    circuit.skip = skip
    try:
        return circuit.log_prob(x), circuit.flows(x), circuit.map(x), circuit.sample(40, seed=5)
    finally:
        circuit.skip = True


def _same_flows(a: dict, b: dict) -> None:  # type: ignore[type-arg]
    assert a["log_likelihood"] == pytest.approx(b["log_likelihood"], rel=TOL, abs=TOL)
    for key in ("weights", "counts", "gaussian"):
        np.testing.assert_allclose(a[key], b[key], rtol=TOL, atol=TOL)


@pytest.mark.parametrize(("seed", "keep", "real"), CASES)
@pytest.mark.parametrize("scaled", [True, False])
def test_skipping_dead_units_gives_the_whole_circuits_results(seed: int, keep: float, real: bool,
                                                              scaled: bool) -> None:
    """Scaled kernels and log kernels alike: the same log p (and the reference's), flows, MAP and
    samples with and without skipping."""
    graph, params, model = _model(seed, keep, real)
    circuit = model.circuit
    assert not circuit.live.everything and circuit.live.slots.sum() < len(circuit.live.slots)
    circuit.scaled = scaled and circuit.scaled
    x = _data(graph, params, 150, seed)
    (ll, flows, (completed, best), samples), whole = _queries(circuit, x, True), _queries(circuit, x, False)
    np.testing.assert_allclose(ll, whole[0], rtol=TOL, atol=TOL)
    np.testing.assert_allclose(ll, reference.log_prob(graph, params, x), rtol=TOL, atol=TOL)
    _same_flows(flows, whole[1])
    np.testing.assert_array_equal(completed, whole[2][0])
    np.testing.assert_allclose(best, whole[2][1], rtol=TOL, atol=TOL)
    np.testing.assert_array_equal(samples, whole[3])


@pytest.mark.parametrize(("seed", "keep", "real"), CASES[:6])
def test_dead_units_have_no_effect_and_no_statistics(seed: int, keep: float, real: bool) -> None:
    """Parameters of dead categorical units change nothing; their counts and the weight flows of
    dead sparse units' edges are 0 (the flows' layout stays that of the parameters)."""
    graph, params, model = _model(seed, keep, real)
    c = model.circuit
    dead = np.setdiff1d(np.arange(len(c.cat)), c.live.cunits)
    assert len(dead)
    x = _data(graph, params, 120, seed)
    ll, flows = c.log_prob(x), c.flows(x)
    lp = c.lp.copy()
    for u in dead:  # random distributions in the dead units' rows of lp (rows a live unit shares stay)
        if not np.isin(c.cat[:, 2], c.cat[u, 2])[c.live.cunits].any():
            row = np.random.default_rng(int(u)).random(c.cat[u, 3])
            lp[c.cat[u, 2]:c.cat[u, 2] + c.cat[u, 3]] = np.log(row / row.sum())
            assert not flows["counts"][c.cat[u, 2]:c.cat[u, 2] + c.cat[u, 3]].any()
    c.set_arrays({"lp": lp, "gmean": c.gmean, "gstd": c.gstd, "weights": c.weights})
    np.testing.assert_allclose(c.log_prob(x), ll, rtol=TOL, atol=TOL)
    for op in c.ops[c.ops[:, 0] == 2]:  # sparse layers: edges of dead units carry no flow
        start, units, rows, weight = int(op[1]), int(op[2]) * int(op[3]), int(op[8]), int(op[6])
        indptr = c.sptr[rows:rows + units + 1]
        edges = np.repeat(c.live.slots[start:start + units] == 0, np.diff(indptr))
        assert not flows["weights"][weight:weight + len(edges)][edges].any()


def test_circuits_without_dead_units_run_whole() -> None:
    graph, params = random_circuit(1, num_vars=5)
    circuit = lower(compile_plan(graph, params), "numba", dtype="float64").circuit
    assert circuit.live.everything and circuit.live is circuit.whole
    assert circuit.live.slots.all() and circuit.live.folds.all() and len(circuit.live.cunits) == len(circuit.cat)


@pytest.mark.slow  # the emitted package compiles its kernels afresh (about a minute)
def test_an_emitted_package_skips_dead_units_too(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import importlib
    import sys

    from pcdsl.backends.numba.emit import emit_module

    graph, params = pruned_circuit(3, 0.0)
    plan = compile_plan(graph, params, sparse_density=0.5)
    emit_module(plan, tmp_path, "pruned_live")
    sys.path.insert(0, str(tmp_path))
    try:
        emitted = importlib.import_module("pruned_live").load()
    finally:
        sys.path.remove(str(tmp_path))
    model = lower(plan, "numba", dtype="float64").circuit
    assert not emitted.live.everything
    x = _data(graph, params, 100, 3)
    np.testing.assert_allclose(emitted.log_prob(x), model.log_prob(x), rtol=TOL, atol=TOL)
    _same_flows(emitted.flows(x), model.flows(x))
