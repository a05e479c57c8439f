"""Every construct a plan can hold has a lowering in every backend, or the backend declares it
unsupported and refuses it with a clear error. (The queries themselves are tested on every backend
in test_queries.py.)"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from circuits import all_assignments
from pcdsl.backends import CONSTRUCTS, Unsupported, available, constructs, lower

from pcdsl import reference
from pcdsl.ir.graph import BOOL, REAL, CircuitGraph, Domain, NodeKind, Variable
from pcdsl.params import Parameters, initialise
from pcdsl.plan import compile_plan
from pcdsl.syntax.leaves import FAMILIES

from conftest import ATOL, EXAMPLES


def circuit_with(construct: str) -> tuple[CircuitGraph, Parameters]:
    """A small mixture over two variables whose leaves are of the construct's family
    (categorical for "product" and "sum", which every circuit has)."""
    family = construct.removeprefix("input:") if construct.startswith("input:") else "categorical"
    domain = {"gaussian": REAL, "bernoulli": BOOL}.get(family, Domain("categorical", 3))
    graph = CircuitGraph("c", (Variable("a", 0, domain), Variable("b", 1, domain)))
    products = []
    for k in range(2):
        leaves = []
        for v in range(2):
            params = {"value": np.array([(k + v) % 3])} if family == "indicator" else None
            leaves.append(graph.add_input(f"l{k}{v}", v, family, 1, params).name)
        products.append(graph.add_product(f"p{k}", tuple(leaves)).name)
    graph.add_sum("root", tuple(products), 1)
    return graph, initialise(graph, 0)


def test_constructs_cover_every_leaf_family_and_node_kind() -> None:
    kinds = {k.value for k in NodeKind} - {"input"}
    assert set(CONSTRUCTS) == {f"input:{family}" for family in FAMILIES} | kinds


@pytest.mark.parametrize("backend", available())
@pytest.mark.parametrize("construct", CONSTRUCTS)
def test_every_construct_lowers_or_is_refused(backend: str, construct: str) -> None:
    graph, params = circuit_with(construct)
    plan = compile_plan(graph, params)
    assert construct in constructs(plan)
    module = importlib.import_module(f"pcdsl.backends.{backend}")
    if construct in module.UNSUPPORTED:
        with pytest.raises(Unsupported, match=construct):
            lower(plan, backend)
        return
    model = lower(plan, backend, dtype="float64")
    if construct == "input:gaussian":
        x = np.array([[0.3, -1.2], [np.nan, 2.0], [np.nan, np.nan]])
    else:
        x = np.concatenate([all_assignments(graph), [[-1, 0], [-1, -1]]]).astype(np.float64)
    got = np.asarray(model.log_prob(x))
    np.testing.assert_allclose(got, reference.log_prob(graph, params, x), rtol=0, atol=ATOL)


def test_an_unsupported_construct_is_refused_with_the_reason_and_an_alternative(
        monkeypatch: pytest.MonkeyPatch) -> None:
    numba_backend = importlib.import_module("pcdsl.backends.numba")
    monkeypatch.setitem(numba_backend.UNSUPPORTED, "input:gaussian", "no gaussian kernels")
    plan = compile_plan(*circuit_with("input:gaussian"))
    with pytest.raises(Unsupported, match=r"^the numba backend cannot lower input:gaussian \(no gaussian kernels\); "
                                          r"try --backend torch$"):
        lower(plan, "numba")
    lower(plan, "torch")  # the other backend still takes it


_CACHE_PROBE = """
import json, sys
import numpy as np
import pcdsl
from pcdsl.backends.numba import kernels, scaled

graph = pcdsl.load(sys.argv[1], "nltcs_hclt")
model = pcdsl.compile(graph, "numba", dtype="float32")
x = np.zeros((3, 16))
x[0, 2] = -1
model.log_prob(x), model.flows(x), model.map(x), model.sample(2)
print(json.dumps({name: [sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values())]
                  for name, f in (("forward", kernels.forward), ("scaled forward", scaled.forward),
                                  ("scaled flows", scaled.flows), ("input counts", kernels.input_counts),
                                  ("down", kernels.down))}))
"""


def test_numba_kernels_compile_once_and_later_processes_load_them_from_the_cache(tmp_path: Path) -> None:
    """A fresh cache: the first process compiles every kernel, the second only loads them."""
    pytest.importorskip("numba")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}

    def probe() -> dict[str, list[int]]:
        proc = subprocess.run([sys.executable, "-c", _CACHE_PROBE, str(EXAMPLES / "hclt_nltcs.pc")], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.splitlines()[-1])  # type: ignore[no-any-return]

    assert all(hits == 0 and misses > 0 for hits, misses in probe().values())
    assert all(hits > 0 and misses == 0 for hits, misses in probe().values())


def _wide_quad_tree() -> tuple[CircuitGraph, Parameters]:
    """A quad tree over a 4 x 4 grid with 8 units: folds of 8 units x 8 or 32 inputs."""
    from pcdsl.structures import generate

    graph = CircuitGraph("wide", tuple(Variable(f"p{i}", i, Domain("categorical", 5)) for i in range(16)))
    generate("quad_tree", graph, np.arange(16).reshape(4, 4), prefix="qt", units=8)
    return graph, initialise(graph, 3)


@pytest.mark.parametrize("blas", [-1, 0, 64])
def test_numba_dense_sums_by_gemm_or_by_loops_equal_the_reference(blas: int) -> None:
    """Dense folds go through BLAS's gemm (blas=0: every fold; 64: the wider ones) or the kernels'
    own loops (blas=-1): log-likelihoods and flows equal the reference evaluator's to 1e-9 in
    float64, over batches that take several tile sizes (1 sample up to whole tiles of 256)."""
    pytest.importorskip("numba")
    from pcdsl.backends.numba import kernels
    if blas >= 0 and not kernels.BLAS:
        pytest.skip("no BLAS for numba (SciPy is not installed)")
    graph, params = _wide_quad_tree()
    model = lower(compile_plan(graph, params), "numba", dtype="float64")
    model.circuit.blas = blas
    rng = np.random.default_rng(5)
    for n in (1, 70, 300):
        x = rng.integers(0, 5, size=(n, 16)).astype(np.float64)
        x[rng.random(x.shape) < 0.2] = -1
        np.testing.assert_allclose(model.log_prob(x), reference.log_prob(graph, params, x), rtol=0, atol=ATOL)
        got, want = model.flows(x), reference.flows(graph, params, x)
        assert abs(got.log_likelihood - want.log_likelihood) < ATOL * n
        for group, flows in want.weights.items():
            np.testing.assert_allclose(got.weights[group], flows, rtol=1e-9, atol=ATOL)
        for node, stats in want.inputs.items():
            np.testing.assert_allclose(got.inputs[node]["counts"], stats["counts"], rtol=1e-9, atol=ATOL)
