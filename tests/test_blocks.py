"""Block-diagonal sums and tied leaves: the same distribution as the dense, untied circuit they
stand for, on the reference evaluator and on every backend; flows, EM and model files too."""

from __future__ import annotations

import numpy as np
import pytest
from circuits import all_assignments
from pcdsl.backends import lower

from pcdsl import reference
from pcdsl.io.model import load_model, save_model
from pcdsl.ir.graph import CircuitGraph, Domain, Variable
from pcdsl.ir.validate import validate
from pcdsl.learn.em import em_update
from pcdsl.params import Parameters, initialise
from pcdsl.plan import SumLayer, compile_plan

from conftest import ATOL

K, H = 3, 2  # blocks (clusters) and units per block
CAT3 = Domain("categorical", 3)


def _graph(blocks: int, tie_leaves: bool = False) -> CircuitGraph:
    """K cluster-conditioned mixtures over (a, b), then over c, as K heads under one root."""
    variables = tuple(Variable(n, i, CAT3) for i, n in enumerate("abcd"))
    g = CircuitGraph("blocks", variables)
    g.add_input("la", 0, "categorical", K * H)
    g.add_input("lb", 1, "categorical", K * H)
    g.add_input("lc", 2, "categorical", K * H)
    # d's leaf shares a's parameters when tied (a patch circuit reused at another position)
    g.add_input("ld", 3, "categorical", K * H, tie="la" if tie_leaves else None)
    g.add_product("p", ("la", "lb"), "hadamard")
    g.add_sum("s", ("p",), K * H, blocks=blocks)
    g.add_product("q", ("s", "lc", "ld"), "hadamard")
    g.add_sum("heads", ("q",), K, blocks=blocks)
    g.add_sum("root", ("heads",), 1)
    return g


def _block_params(seed: int) -> Parameters:
    return initialise(_graph(K), seed)


def _dense(params: Parameters) -> Parameters:
    """The block parameters written out as dense weight blocks with zeros off the diagonal."""
    dense = Parameters(params.inputs, dict(params.weights))
    for name in ("s", "heads"):
        if name not in params.weights:
            continue
        w = params.weights[name]
        run = w.shape[0] // K
        full = np.zeros((w.shape[0], w.shape[1] * K))
        for b in range(K):
            full[b * run:(b + 1) * run, b * w.shape[1]:(b + 1) * w.shape[1]] = w[b * run:(b + 1) * run]
        dense.weights[name] = full
    return dense


def _models(backend: str, graph: CircuitGraph, params: Parameters):  # type: ignore[no-untyped-def]
    if backend == "reference":
        return None
    return lower(compile_plan(graph, params), backend, dtype="float64")


def _np(a):  # type: ignore[no-untyped-def]
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def _data(graph: CircuitGraph, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = all_assignments(graph)[rng.permutation(81)[:40]].astype(np.float64)
    x[rng.random(x.shape) < 0.25] = -1
    return x


def test_block_shapes_and_sizes() -> None:
    g = _graph(K)
    assert validate(g) == []
    params = _block_params(0)
    assert params.weights["s"].shape == (K * H, H) and params.weights["heads"].shape == (K, H)
    dense = _graph(1)
    # the block circuit keeps 1/K of the dense sums' edges
    assert dense.num_edges() - g.num_edges() == (K * H * K * H + K * K * H) - (K * H * H + K * H)
    plan = compile_plan(g, params)
    folds = [layer.shape for layer in plan.layers if isinstance(layer, SumLayer)]
    assert (K, H, H) in folds and (K, 1, H) in folds  # one fold per block


@pytest.mark.parametrize("backend", ["reference", "torch", "numba"])
def test_blocks_equal_the_dense_circuit(backend: str) -> None:
    params = _block_params(1)
    g, dense_g, dense = _graph(K), _graph(1), _dense(params)
    worlds = all_assignments(g)
    expected = reference.log_prob(dense_g, dense, worlds)
    assert abs(np.exp(expected).sum() - 1) < 1e-9
    x = _data(g, 1)
    m = _models(backend, g, params)
    got = reference.log_prob(g, params, worlds) if m is None else _np(m.log_prob(worlds))
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
    ours = reference.flows(g, params, x) if m is None else m.flows(x)
    theirs = reference.flows(dense_g, dense, x)
    for name in ("s", "heads"):  # block flows are the dense flows on the diagonal blocks
        np.testing.assert_allclose(_dense(Parameters({}, {name: _np(ours.weights[name])})).weights[name],
                                   theirs.weights[name], rtol=0, atol=ATOL)
    for leaf in ("la", "lb", "lc", "ld"):
        np.testing.assert_allclose(_np(ours.inputs[leaf]["counts"]), theirs.inputs[leaf]["counts"], atol=ATOL)
    if m is not None:
        completed, lp = m.map(x[:10])
        _, ref_lp = reference.map_state(dense_g, dense, x[:10])
        np.testing.assert_allclose(_np(lp), ref_lp, atol=ATOL)  # the same MAP value (ties may pick others)
        np.testing.assert_allclose(reference.log_prob(g, params, _np(completed)), ref_lp, atol=ATOL)
        draws = _np(m.sample(2000, seed=3))
        assert np.isfinite(reference.log_prob(g, params, draws)).all()  # every draw has probability > 0


@pytest.mark.parametrize("backend", ["reference", "torch", "numba"])
def test_tied_leaves_share_parameters_and_add_their_flows(backend: str) -> None:
    tied_g, free_g = _graph(K, tie_leaves=True), _graph(K)
    assert validate(tied_g) == []
    params = initialise(tied_g, 2)
    assert "ld" not in params.inputs  # one stored group
    free = Parameters({**params.inputs, "ld": params.inputs["la"]}, params.weights)
    x = _data(tied_g, 2)
    m = _models(backend, tied_g, params)
    got = reference.log_prob(tied_g, params, x) if m is None else _np(m.log_prob(x))
    np.testing.assert_allclose(got, reference.log_prob(free_g, free, x), atol=ATOL)
    flows = reference.flows(tied_g, params, x) if m is None else m.flows(x)
    theirs = reference.flows(free_g, free, x)
    np.testing.assert_allclose(_np(flows.inputs["la"]["counts"]),
                               theirs.inputs["la"]["counts"] + theirs.inputs["ld"]["counts"], atol=ATOL)
    # an EM step keeps the tie: one table, learned from both positions
    new = em_update(params, flows, step=1.0, pseudocount=0.1)
    assert set(new.inputs) == set(params.inputs)


def test_full_batch_em_on_blocks_never_lowers_the_likelihood() -> None:
    g = _graph(K, tie_leaves=True)
    params = initialise(g, 4)
    x = _data(g, 4)
    model = lower(compile_plan(g, params), "torch", dtype="float64")
    last = -np.inf
    for _ in range(8):
        flows = model.flows(x)
        assert flows.log_likelihood >= last - 1e-9
        last = flows.log_likelihood
        params = em_update(params, flows, step=1.0, pseudocount=0.0)
        model.set_parameters(params)


def test_model_file_keeps_blocks_and_ties(tmp_path) -> None:  # type: ignore[no-untyped-def]
    g = _graph(K, tie_leaves=True)
    params = initialise(g, 5)
    path = save_model(tmp_path / "m.safetensors", g, params)
    g2, p2 = load_model(path)
    assert g2.node("s").blocks == K and g2.node("ld").tie == "la"
    worlds = all_assignments(g)
    np.testing.assert_allclose(reference.log_prob(g2, p2, worlds), reference.log_prob(g, params, worlds), atol=ATOL)


def test_bad_blocks_and_bad_leaf_ties_are_located_errors() -> None:
    variables = tuple(Variable(n, i, CAT3) for i, n in enumerate("ab"))
    g = CircuitGraph("bad", variables)
    g.add_input("la", 0, "categorical", 4)
    g.add_input("lb", 1, "categorical", 2, tie="la")  # different units
    g.add_product("p", ("la",), "hadamard")
    g.add_sum("s", ("p",), 4, blocks=3)  # 3 does not divide 4
    g.add_product("q", ("s", "lb"), "kronecker")
    g.add_sum("root", ("q",), 1)
    codes = sorted(d.code for d in validate(g))
    assert codes == ["E0208", "E0211"]
