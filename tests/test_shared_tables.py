"""Tied leaves share one parameter table (every unit maps to a row; tied units read the same
rows): a tied circuit answers every query exactly as the untied circuit with copied parameters,
on both backends, and its flows are the untied flows added up per tie group."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
from circuits import all_assignments
from pcdsl.backends import lower

from pcdsl import reference
from pcdsl.distill.compose import PatchShape, block_family, compose
from pcdsl.distill.lvd import latent_circuit
from pcdsl.ir.graph import CircuitGraph, Domain, Variable
from pcdsl.ir.validate import validate
from pcdsl.learn.em import em_update
from pcdsl.params import Parameters, initialise, input_group, weight_group
from pcdsl.plan import InputLayer, compile_plan

from conftest import ATOL

BACKENDS = ["torch", "numba"]
SIDE, PATCH, LEVELS, K, HIDDEN = 4, 2, 3, 2, 2  # a 4x4 image of 2x2 patches: 4 positions


def _np(a):  # type: ignore[no-untyped-def]
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def _distilled(shared: bool) -> tuple[CircuitGraph, Parameters]:
    """A small distilled circuit (compose), the patch circuits tied across positions or each
    position's own copy of the same parameters."""
    cols = SIDE // PATCH
    positions = [[((i // cols) * PATCH + dy) * SIDE + (i % cols) * PATCH + dx for dy in range(PATCH)
                  for dx in range(PATCH)] for i in range(cols * cols)]
    shape = PatchShape(PATCH * PATCH, ((0, 1), (0, 2), (2, 3)), HIDDEN, K)
    family = block_family(shape, [LEVELS] * shape.dims)
    z = np.random.default_rng(0).integers(0, K, size=(50, len(positions)))
    top = latent_circuit(len(positions), K, z, hidden=2)
    variables = tuple(Variable(f"x{i}", i, Domain("categorical", LEVELS)) for i in range(SIDE * SIDE))
    patch = initialise(family.graph, 1)
    copies = [patch] * (1 if shared else len(positions))
    return compose(top, initialise(top, 2), family, copies, variables, positions, shared, "d")


def _mixed(tied: bool) -> tuple[CircuitGraph, Parameters]:
    """Leaves of every family with 3, 2 and 1 readers per table (categorical a: three, bernoulli
    b: two, gaussian g: two, categorical c: one), untied when `tied` is False (each its own copy)."""
    cat3, real, boolean = Domain("categorical", 3), Domain("real"), Domain("bool", 2)
    variables = (Variable("x0", 0, cat3), Variable("x1", 1, cat3), Variable("x2", 2, cat3), Variable("x3", 3, cat3),
                 Variable("y0", 4, boolean), Variable("y1", 5, boolean), Variable("r0", 6, real),
                 Variable("r1", 7, real))
    g = CircuitGraph("mixed", variables)
    spec = [("a0", 0, "categorical", None), ("c", 3, "categorical", None), ("a1", 1, "categorical", "a0"),
            ("b0", 4, "bernoulli", None), ("a2", 2, "categorical", "a0"), ("b1", 5, "bernoulli", "b0"),
            ("g0", 6, "gaussian", None), ("g1", 7, "gaussian", "g0")]
    for name, var, family, tie in spec:
        g.add_input(name, var, family, 2, tie=tie if tied else None)
    g.add_product("p", ("a0", "a1", "b0", "g0"), "hadamard")
    g.add_sum("s", ("p",), 2)
    g.add_product("q", ("a2", "c", "b1", "g1"), "hadamard")
    g.add_sum("t", ("q",), 2)
    g.add_product("pq", ("s", "t"), "kronecker")
    g.add_sum("root", ("pq",), 1)
    params = initialise(g if tied else _mixed(True)[0], 3)  # the tied graph's draws, copied when untied
    if not tied:  # each copy gets its owner's parameters
        owner = {"a1": "a0", "a2": "a0", "b1": "b0", "g1": "g0"}
        params.inputs.update({copy: params.inputs[src] for copy, src in owner.items()})
    return g, params


def _mixed_data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.integers(0, 3, (n, 4)), rng.integers(0, 2, (n, 2)), rng.standard_normal((n, 2))],
                       axis=1).astype(np.float64)
    x[:, :6][rng.random((n, 6)) < 0.2] = -1
    x[:, 6:][rng.random((n, 2)) < 0.2] = np.nan
    return x


def _image_data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, LEVELS, (n, SIDE * SIDE)).astype(np.float64)
    x[rng.random(x.shape) < 0.2] = -1
    return x


def _group_of(graph: CircuitGraph) -> dict[str, str]:
    """Every parameter key of the untied graph -> its key in the tied one (pos{i}/ -> pos0/)."""
    out = {}
    for node in graph.nodes():
        key = input_group(node) if node.kind.name == "INPUT" else weight_group(node)
        out[key] = "pos0/" + key.split("/", 1)[1] if key.startswith("pos") else key
    return out


def _summed(flows, rename: dict[str, str]) -> dict[str, dict[str, np.ndarray]]:  # type: ignore[no-untyped-def]
    """Untied flows added up per tie group."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for group, stats in flows.inputs.items():
        slot = out.setdefault(rename[group], {})
        for key, value in stats.items():
            slot[key] = slot.get(key, 0) + _np(value)
    for group, w in flows.weights.items():
        slot = out.setdefault(rename[group], {})
        slot["weights"] = slot.get("weights", 0) + _np(w)
    return out


def _compare_flows(tied, untied, rename: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    expected = _summed(untied, rename)
    got = _summed(tied, {g: g for g in [*tied.inputs, *tied.weights]})
    assert set(got) == set(expected)
    for group, stats in expected.items():
        assert set(got[group]) == set(stats), group
        for key, value in stats.items():
            np.testing.assert_allclose(got[group][key], value, rtol=1e-9, atol=ATOL, err_msg=f"{group} {key}")
    assert tied.log_likelihood == pytest.approx(untied.log_likelihood, rel=1e-12)


def test_tied_leaves_are_one_table_in_the_plan() -> None:
    graph, params = _distilled(shared=True)
    assert validate(graph) == []
    (layer,) = [la for la in compile_plan(graph, params).layers if isinstance(la, InputLayer)]
    positions, pixels = (SIDE // PATCH) ** 2, PATCH * PATCH
    assert len(layer.groups) == positions * pixels and len(layer.tables) == pixels
    assert layer.params["log_probs"].shape == (pixels * K * HIDDEN, LEVELS)  # not one copy per position
    for node, group in enumerate(layer.groups):  # each unit reads its group's rows
        rows = layer.rows[node * layer.width:(node + 1) * layer.width]
        np.testing.assert_array_equal(layer.params["log_probs"][rows], np.log(params.inputs[group]["probs"]))
    (free,) = [la for la in compile_plan(*_distilled(shared=False)).layers if isinstance(la, InputLayer)]
    assert len(free.tables) == len(free.groups)
    np.testing.assert_array_equal(free.rows, np.arange(len(free.var)))  # untied: row u is unit u


@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_patch_circuits_answer_as_their_copies(backend: str) -> None:
    tied_g, tied_p = _distilled(shared=True)
    free_g, free_p = _distilled(shared=False)
    tied = lower(compile_plan(tied_g, tied_p), backend, dtype="float64")
    free = lower(compile_plan(free_g, free_p), backend, dtype="float64")
    x = _image_data(60, 1)
    expected = reference.log_prob(free_g, free_p, x)
    np.testing.assert_allclose(_np(tied.log_prob(x)), expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(_np(free.log_prob(x)), expected, rtol=0, atol=ATOL)
    _compare_flows(tied.flows(x), free.flows(x), _group_of(free_g))
    completed, lp = tied.map(x[:20])
    free_completed, free_lp = free.map(x[:20])
    np.testing.assert_array_equal(_np(completed), _np(free_completed))
    np.testing.assert_allclose(_np(lp), _np(free_lp), rtol=0, atol=ATOL)
    np.testing.assert_array_equal(_np(tied.sample(30, seed=4)), _np(free.sample(30, seed=4)))
    np.testing.assert_array_equal(_np(tied.sample(5, evidence=x[0], seed=5)),
                                  _np(free.sample(5, evidence=x[0], seed=5)))
    query = np.arange(SIDE * SIDE) < 5
    full = np.where(x[:10] < 0, 0, x[:10])
    np.testing.assert_allclose(_np(tied.conditional(full, query)), _np(free.conditional(full, query)),
                               rtol=0, atol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_em_step_on_shared_tables_matches_the_copies(backend: str) -> None:
    tied_g, tied_p = _distilled(shared=True)
    free_g, free_p = _distilled(shared=False)
    tied = lower(compile_plan(tied_g, tied_p), backend, dtype="float64")
    x = _image_data(80, 2)
    new = em_update(tied_p, tied.flows(x), step=0.5, pseudocount=0.1)
    tied.set_parameters(new)
    rename = _group_of(free_g)  # the untied circuit with the new shared values at every position
    copied = Parameters({g: new.inputs[rename[g]] for g in free_p.inputs},
                        {g: new.weights[rename[g]] for g in free_p.weights})
    y = _image_data(40, 3)
    np.testing.assert_allclose(_np(tied.log_prob(y)), reference.log_prob(free_g, copied, y), rtol=0, atol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tables_read_by_different_numbers_of_leaves_of_every_family(backend: str) -> None:
    tied_g, tied_p = _mixed(tied=True)
    free_g, free_p = _mixed(tied=False)
    assert validate(tied_g) == [] and validate(free_g) == []
    layers = [la for la in compile_plan(tied_g, tied_p).layers if isinstance(la, InputLayer)]
    assert sorted(len(la.tables) for la in layers) == [1, 3]  # gaussian: g0; categorical: a0, c, b0
    tied = lower(compile_plan(tied_g, tied_p), backend, dtype="float64")
    free = lower(compile_plan(free_g, free_p), backend, dtype="float64")
    x = _mixed_data(50, 4)
    expected = reference.log_prob(free_g, free_p, x)
    np.testing.assert_allclose(_np(tied.log_prob(x)), expected, rtol=0, atol=ATOL)
    owner = {"a1": "a0", "a2": "a0", "b1": "b0", "g1": "g0"}
    _compare_flows(tied.flows(x), free.flows(x), {g: owner.get(g, g) for g in [*free_p.inputs, *free_p.weights]})
    completed, lp = tied.map(x[:10])
    free_completed, free_lp = free.map(x[:10])
    np.testing.assert_array_equal(_np(completed), _np(free_completed))
    np.testing.assert_allclose(_np(lp), _np(free_lp), rtol=0, atol=ATOL)
    np.testing.assert_array_equal(_np(tied.sample(20, seed=6)), _np(free.sample(20, seed=6)))


def test_tied_flows_match_the_reference_on_every_world() -> None:
    graph, params = _mixed(tied=True)
    worlds = all_assignments(CircuitGraph("w", graph.variables[:6]))
    x = np.concatenate([worlds, np.full((len(worlds), 2), 0.3)], axis=1)[::7]
    ref = reference.flows(graph, params, x)
    for backend in BACKENDS:
        got = lower(compile_plan(graph, params), backend, dtype="float64").flows(x)
        for group, stats in ref.inputs.items():
            for key, value in stats.items():
                np.testing.assert_allclose(_np(got.inputs[group][key]), value, rtol=1e-9, atol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_emitted_code_of_a_shared_circuit(backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The emitted module (torch) or package (numba) reads the shared tables as the model does."""
    graph, params = _distilled(shared=True)
    plan = compile_plan(graph, params)
    x = _image_data(30, 7)
    expected = reference.log_prob(graph, params, x)
    monkeypatch.syspath_prepend(str(tmp_path))
    if backend == "torch":
        import torch
        from pcdsl.backends.torch.emit import emit_module

        emit_module(plan, tmp_path, "shared_torch")
        module = importlib.import_module("shared_torch")
        got = module.load(dtype="float64").log_prob(torch.from_numpy(x)).numpy()
    else:
        from pcdsl.backends.numba.emit import emit_module

        emit_module(plan, tmp_path, "shared_numba")
        module = importlib.import_module("shared_numba")
        circuit = module.load(dtype="float64")
        got = circuit.log_prob(x)
        flows = circuit.flows(x)
        assert len(flows["counts"]) == plan.input_layers()[0].params["log_probs"].size  # one table, not copies
    for name in ("shared_torch", "shared_numba"):
        sys.modules.pop(name, None)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def _interleaved(tied: bool) -> tuple[CircuitGraph, Parameters]:
    """Two mixtures that read their leaves row by row (a0, c0 | a1, c1): the readers of a table do
    not lie side by side in the input layer."""
    cat3 = Domain("categorical", 3)
    g = CircuitGraph("interleaved", (Variable("x0", 0, cat3), Variable("x1", 1, cat3)))
    g.add_input("a0", 0, "categorical", 2)
    g.add_input("c0", 0, "categorical", 2)
    g.add_input("a1", 1, "categorical", 2, tie="a0" if tied else None)
    g.add_input("c1", 1, "categorical", 2, tie="c0" if tied else None)
    g.add_sum("s0", ("a0", "c0"), 2)
    g.add_sum("s1", ("a1", "c1"), 2)
    g.add_product("p", ("s0", "s1"), "kronecker")
    g.add_sum("root", ("p",), 1)
    params = initialise(g if tied else _interleaved(True)[0], 5)  # the tied graph's draws, copied when untied
    if not tied:
        params.inputs.update({"a1": params.inputs["a0"], "c1": params.inputs["c0"]})
    return g, params


@pytest.mark.parametrize("backend", BACKENDS)
def test_tied_leaves_that_do_not_lie_side_by_side(backend: str) -> None:
    tied_g, tied_p = _interleaved(tied=True)
    free_g, free_p = _interleaved(tied=False)
    (layer,) = compile_plan(tied_g, tied_p).input_layers()
    assert layer.groups in (("a0", "c0", "a0", "c0"), ("c0", "a0", "c0", "a0"))  # readers apart
    tied = lower(compile_plan(tied_g, tied_p), backend, dtype="float64")
    free = lower(compile_plan(free_g, free_p), backend, dtype="float64")
    x = all_assignments(tied_g)
    x = np.concatenate([x, [[-1, 0], [1, -1], [-1, -1]]])
    np.testing.assert_allclose(_np(tied.log_prob(x)), reference.log_prob(free_g, free_p, x), rtol=0, atol=ATOL)
    _compare_flows(tied.flows(x), free.flows(x), {"a1": "a0", "c1": "c0", "a0": "a0", "c0": "c0", "s0": "s0",
                                                  "s1": "s1", "root": "root"})
    np.testing.assert_array_equal(_np(tied.sample(20, seed=2)), _np(free.sample(20, seed=2)))
