"""Sparse sum layers: a plan whose sums were pruned to exact zeros runs on the kept edges, and
every query gives what the dense evaluation of the same circuit gives (float64, 1e-9)."""

from __future__ import annotations

import numpy as np
import pytest
from circuits import pruned_circuit
from pcdsl.backends import lower

from pcdsl import reference
from pcdsl.params import Parameters
from pcdsl.plan import SparseSum, SumLayer, compile_plan, dump_plan, sparse_pattern

TOL = 1e-9
BACKENDS = ("numba", "torch")
SPARSE = 0.5  # the plan's threshold here, whatever the default (the circuits keep about 30% of edges)


@pytest.fixture(autouse=True)
def _torch_runs_every_sparse_layer_sparse(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU the torch backend runs only very sparse layers on their edges; here every one."""
    sparse = pytest.importorskip("pcdsl.backends.torch.sparse")
    monkeypatch.setattr(sparse, "CPU_SPARSE_DENSITY", 1.0)


def _data(graph, params: Parameters, n: int, seed: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    x = reference.sample(graph, params, n, seed=seed)
    x[np.random.default_rng(seed).random(x.shape) < 0.25] = np.nan  # some missing entries
    return x


def _pair(seed: int, backend: str, keep: float = 0.3):  # type: ignore[no-untyped-def]
    graph, params = pruned_circuit(seed, keep, real=seed % 2 == 1)
    plan = compile_plan(graph, params, sparse_density=SPARSE)
    assert any(isinstance(layer, SumLayer) and layer.sparse is not None for layer in plan.layers)
    dense = compile_plan(graph, params, sparse_density=0.0)
    assert all(layer.sparse is None for layer in dense.layers if isinstance(layer, SumLayer))
    return graph, params, lower(plan, backend, dtype="float64"), lower(dense, backend, dtype="float64")


def test_the_plan_keeps_mostly_zero_sum_layers_as_edge_lists() -> None:
    w = np.zeros((2, 3, 4))
    w[0, 0, 1] = w[0, 2, 3] = w[1, 1, 0] = 1.0
    pattern = sparse_pattern(w)
    assert isinstance(pattern, SparseSum) and pattern.edges == 3
    assert pattern.indptr.tolist() == [0, 1, 1, 2, 2, 3, 3] and pattern.cols.tolist() == [1, 3, 0]
    assert pattern.flat(4).tolist() == [1, 11, 16]  # positions in the flattened (F, M, C) block
    assert sparse_pattern(np.ones((2, 3, 4))) is None and sparse_pattern(w, density=0.0) is None
    graph, params = pruned_circuit(0)
    plan = compile_plan(graph, params, sparse_density=SPARSE)
    sparse = [layer for layer in plan.layers if isinstance(layer, SumLayer) and layer.sparse is not None]
    assert sparse and all(layer.edges == np.count_nonzero(layer.weights) for layer in sparse)
    assert f"sparse={sparse[0].edges}" in dump_plan(plan)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(4))
def test_every_query_on_sparse_layers_equals_the_dense_evaluation(backend: str, seed: int) -> None:
    pytest.importorskip(backend)
    graph, params, sparse, dense = _pair(seed, backend)
    _same_queries(graph, params, sparse, dense, seed)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("keep", [0.0, 0.1])
def test_units_of_one_edge_and_unread_inputs_equal_the_dense_evaluation(backend: str, keep: float) -> None:
    """Pruned hard, most units keep one edge (the numba kernels add its log weight instead of
    taking exp and log) and many inputs no edge at all (no exp for them)."""
    pytest.importorskip(backend)
    graph, params, sparse, dense = _pair(5, backend, keep)
    sums = [layer for layer in sparse.plan.layers if isinstance(layer, SumLayer) and layer.sparse is not None]
    fan_in = np.concatenate([np.diff(layer.sparse.indptr) for layer in sums if layer.sparse is not None])
    assert (fan_in == 1).mean() > 0.3 and (keep == 0.0) == (fan_in == 1).all()
    _same_queries(graph, params, sparse, dense, 5)


def _same_queries(graph, params: Parameters, sparse, dense, seed: int) -> None:  # type: ignore[no-untyped-def]
    """Every query of `sparse` equals that of `dense` (and log_prob the reference's), to TOL."""
    x = _data(graph, params, 70, seed)
    lp = sparse.log_prob(x)
    assert np.allclose(lp, dense.log_prob(x), atol=TOL, rtol=0)
    assert np.allclose(lp, reference.log_prob(graph, params, x), atol=TOL, rtol=0)
    full = reference.sample(graph, params, 70, seed=seed + 10)
    query = np.arange(len(graph.variables)) % 2 == 0
    assert np.allclose(sparse.conditional(full, query), dense.conditional(full, query), atol=TOL, rtol=0,
                       equal_nan=True)
    (completion, map_lp), (dense_completion, dense_lp) = sparse.map(x), dense.map(x)
    assert np.allclose(completion, dense_completion, atol=TOL, equal_nan=True)
    assert np.allclose(map_lp, dense_lp, atol=TOL, rtol=0)
    assert np.allclose(sparse.sample(50, seed=3), dense.sample(50, seed=3), atol=TOL, equal_nan=True)
    assert np.allclose(sparse.sample(70, evidence=x, seed=4), dense.sample(70, evidence=x, seed=4), atol=TOL,
                       equal_nan=True)
    got, want = sparse.flows(x), dense.flows(x)
    assert abs(got.log_likelihood - want.log_likelihood) < TOL * len(x)
    for group, value in want.weights.items():
        assert np.allclose(np.asarray(got.weights[group]), np.asarray(value), atol=TOL, rtol=0), group
    for group, stats in want.inputs.items():
        for k, value in stats.items():
            assert np.allclose(np.asarray(got.inputs[group][k]), np.asarray(value), atol=TOL, rtol=0), group


@pytest.mark.parametrize("backend", BACKENDS)
def test_new_parameters_that_move_the_zeros_rebuild_the_sparse_layers(backend: str) -> None:
    """EM with a pseudocount revives pruned edges (dense again); pruning again makes them sparse."""
    pytest.importorskip(backend)
    graph, params, sparse, _ = _pair(2, backend)
    x = _data(graph, params, 40, seed=5)
    revived = Parameters(params.inputs, {g: (w + 0.1) / (w + 0.1).sum(axis=1, keepdims=True)
                                         for g, w in params.weights.items()})
    sparse.set_parameters(revived)
    assert all(layer.sparse is None for layer in sparse.plan.layers if isinstance(layer, SumLayer))
    assert np.allclose(sparse.log_prob(x), reference.log_prob(graph, revived, x), atol=TOL, rtol=0)
    sparse.set_parameters(params)
    assert any(isinstance(layer, SumLayer) and layer.sparse is not None for layer in sparse.plan.layers)
    assert np.allclose(sparse.log_prob(x), reference.log_prob(graph, params, x), atol=TOL, rtol=0)
    flows = sparse.flows(x)
    assert np.allclose(flows.log_likelihood, reference.log_prob(graph, params, x).sum(), atol=TOL * len(x))


def test_the_emitted_torch_package_runs_sparse_layers_on_their_edges(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The emitted package runs the backend's sparse rules (with its own copy of the CPU
    threshold, unpatched here: a circuit that keeps 5% of its edges is sparse enough)."""
    pytest.importorskip("safetensors")
    import importlib
    import sys

    from pcdsl.backends.torch.emit import emit_module
    from pcdsl.backends.torch.layers import SumRule

    graph, params = pruned_circuit(2, keep=0.05)
    plan = compile_plan(graph, params, sparse_density=SPARSE)
    emit_module(plan, tmp_path, "sparse_emitted")
    monkeypatch.syspath_prepend(str(tmp_path))
    package = importlib.import_module("sparse_emitted")
    for name in [m for m in sys.modules if m.split(".")[0] == "sparse_emitted"]:
        del sys.modules[name]
    emitted = package.load(dtype="float64")
    assert any(type(rule).__name__ == "SumRule" and rule.edges is not None for rule in emitted.rules)
    model = lower(plan, "torch", dtype="float64")
    assert any(isinstance(rule, SumRule) and rule.edges is not None for rule in model.circuit.rules)
    x = _data(graph, params, 40, 2)
    np.testing.assert_allclose(emitted.log_prob(x), model.log_prob(x), rtol=0, atol=TOL)
    np.testing.assert_allclose(emitted.map(x)[0], model.map(x)[0], rtol=0, atol=TOL)
    got, expected = emitted.flows(x), model.circuit.flows(x)  # each layer's statistics
    assert got.keys() == expected.keys()
    for key, value in got.items():
        np.testing.assert_allclose(value, expected[key], rtol=TOL, atol=TOL, err_msg=key)


def test_the_torch_module_on_sparse_layers_gives_the_dense_gradients() -> None:
    torch = pytest.importorskip("torch")
    from pcdsl.backends.torch.module import CircuitModule

    graph, params = pruned_circuit(4)
    x = torch.as_tensor(_data(graph, params, 40, seed=6))
    grads = []
    for density in (SPARSE, 0.0):
        module = CircuitModule(compile_plan(graph, params, sparse_density=density), dtype=torch.float64)
        module(x).sum().backward()
        grads.append({name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=TOL, rtol=0), name


def test_prune_to_fraction_keeps_the_highest_flow_edges_and_every_units_best() -> None:
    from pcdsl.distill.grown import prune_to_fraction
    from pcdsl.reference import Flows

    w = np.full((3, 4), 0.25)
    f = np.array([[9.0, 8.0, 1.0, 0.0], [7.0, 6.0, 5.0, 0.5], [0.1, 0.3, 0.2, 0.0]])
    flows = Flows(weights={"s": f})
    out = prune_to_fraction(Parameters({}, {"s": w}), flows, ["s"], 0.5).weights["s"]
    assert (out > 0).tolist() == [[True, True, True, False], [True, True, True, False],
                                  [False, True, False, False]]  # the top 6 by flow, and row 2's best
    assert np.allclose(out.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="keep must lie in"):
        prune_to_fraction(Parameters({}, {"s": w}), flows, ["s"], 0.0)


def test_the_gpu_benchmark_runs_on_a_cpu_with_tiny_structures(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import importlib.util
    import json
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"
    spec = importlib.util.spec_from_file_location("gpu_bench", path)
    assert spec is not None and spec.loader is not None
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    out = tmp_path / "gpu.jsonl"
    monkeypatch.setattr(sys, "argv", ["gpu.py", "--device", "cpu", "--tiny", "--no-pyjuice", "--out", str(out)])
    gpu.main()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["structure"] for r in records] == ["hclt", "pd"]
    assert all(r["pcdsl"]["epoch_s"] > 0 and r["edges"] > 0 and r["device"].startswith("cpu") for r in records)


def test_only_inputs_read_by_units_of_two_or_more_edges_are_exponentiated() -> None:
    """numba's `slive`: per input of a sparse fold, whether a unit that needs exps reads it."""
    pytest.importorskip("numba")
    from pcdsl.backends.numba import kernels
    from pcdsl.backends.numba.runtime import _live_inputs

    op = np.zeros(kernels.OPS_COLUMNS, dtype=np.int64)
    op[[kernels.KIND, kernels.A, kernels.B, kernels.C, kernels.INDEX]] = kernels.SPARSE, 2, 3, 4, 2
    # fold 0: unit 0 reads inputs 0 and 1, unit 1 input 2 alone, unit 2 nothing; fold 1: unit 0 reads 3 and 1
    sptr = np.array([0, 2, 3, 3, 5, 5, 5])
    scol = np.array([0, 1, 2, 1, 3])
    live = _live_inputs(op[None, :], np.zeros(10, dtype=np.int64), sptr, scol)
    assert live.tolist() == [0, 0, 1, 1, 0, 0, 0, 1, 0, 1]
