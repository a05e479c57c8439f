"""The emitted torch module answers the queries of the emitted numba package -- conditional, MAP,
sampling with evidence, flows -- and agrees with the in-memory backends."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pcdsl
from pcdsl.params import initialise
from pcdsl.plan import InputLayer, SumLayer, compile_plan

from conftest import ATOL, EXAMPLES

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
CASES = [("tiny.pc", None), ("gaussians.pc", None), ("groups.pc", None), ("hclt_nltcs.pc", "nltcs_hclt")]
WITH_NUMBA = "gaussians.pc"  # the numba package compiles its kernels afresh in each folder: one case is enough


def _data(graph: pcdsl.CircuitGraph, rows: int = 24) -> np.ndarray:
    rng = np.random.default_rng(5)
    columns = []
    for v in graph.variables:
        size = v.domain.size
        values = rng.integers(0, size, rows).astype(np.float64) if size else rng.standard_normal(rows)
        values[rng.random(rows) < 0.3] = -1.0 if size else np.nan
        columns.append(values)
    return np.stack(columns, axis=1)


@pytest.fixture(scope="module", params=CASES, ids=[f for f, _ in CASES])
def emitted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from pcdsl.backends.numba.emit import emit_module as emit_numba
    from pcdsl.backends.torch.emit import emit_module as emit_torch

    file, circuit = request.param
    graph = pcdsl.load(EXAMPLES / file, circuit)
    params = initialise(graph, 7)
    plan = compile_plan(graph, params)
    folder = tmp_path_factory.mktemp("emitted")
    stem = Path(file).stem
    emit_torch(plan, folder, f"t_{stem}")
    if file == WITH_NUMBA:
        emit_numba(plan, folder, f"n_{stem}")
    sys.path.insert(0, str(folder))
    try:
        torch_module = importlib.import_module(f"t_{stem}")
        numba_package = importlib.import_module(f"n_{stem}") if file == WITH_NUMBA else None
    finally:
        sys.path.remove(str(folder))
    out = {"graph": graph, "plan": plan, "x": _data(graph),
           "torch": torch_module.load(dtype="float64"),
           "memory": pcdsl.compile(graph, "torch", params=params, dtype="float64")}
    if numba_package is not None:
        out["numba"] = numba_package.load(dtype="float64")
    return out


def test_conditional_matches(emitted: dict[str, Any]) -> None:
    x, query = emitted["x"], [0, len(emitted["graph"].variables) - 1]
    with np.errstate(invalid="ignore"):
        expected = emitted["memory"].conditional(x, query)
        got = emitted["torch"].conditional(x, query)
        np.testing.assert_allclose(got, expected, atol=ATOL)
        if "numba" in emitted:
            np.testing.assert_allclose(emitted["numba"].conditional(x, query), got, atol=ATOL)
    names = [emitted["graph"].variables[i].name for i in query]
    np.testing.assert_allclose(emitted["torch"].conditional(x, names), got, atol=ATOL)


def test_map_matches(emitted: dict[str, Any]) -> None:
    x = emitted["x"]
    completed, lp = emitted["torch"].map(x)
    expected, expected_lp = emitted["memory"].map(x)
    np.testing.assert_allclose(lp, expected_lp, atol=ATOL)
    np.testing.assert_allclose(completed, expected, atol=ATOL)
    assert completed.dtype == expected.dtype
    if "numba" in emitted:
        numba_completed, _ = emitted["numba"].map(x)
        np.testing.assert_allclose(numba_completed, completed, atol=ATOL)
        assert numba_completed.dtype == completed.dtype


def test_sampling_keeps_evidence_and_follows_the_counts(emitted: dict[str, Any]) -> None:
    x, model = emitted["x"], emitted["torch"]
    drawn = model.sample(len(x), evidence=x, seed=3)
    observed = ~np.isnan(x) & (x != -1)
    assert drawn.shape == x.shape and np.allclose(drawn[observed], x[observed])
    assert model.sample(5, evidence=x[0], seed=1).shape == (5, x.shape[1])
    free = model.sample(4, seed=2)
    assert free.shape == (4, x.shape[1]) and not np.isnan(np.asarray(free, dtype=float)).any()
    for runtime in (model, emitted.get("numba", model)):
        with pytest.raises(ValueError, match="give one row"):
            runtime.sample(3, evidence=x[:2])


def test_sampling_draws_from_the_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tiny: p(a = 1) = 0.3 * 0.2 + 0.7 * 0.9 = 0.69; the emitted package's draws agree."""
    from pcdsl.backends.torch.emit import emit_module

    graph = pcdsl.load(EXAMPLES / "tiny.pc")
    emit_module(compile_plan(graph, initialise(graph)), tmp_path, "tiny_draws")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = importlib.import_module("tiny_draws").load(dtype="float64")
    sys.modules.pop("tiny_draws", None)
    draws = model.sample(20_000, seed=0)
    assert abs(draws[:, 0].mean() - 0.69) < 0.015


def test_flows_match_the_in_memory_backend(emitted: dict[str, Any]) -> None:
    x, plan = emitted["x"], emitted["plan"]
    got = emitted["torch"].flows(x)
    expected = emitted["memory"].flows(x)
    assert abs(got["log_likelihood"] - expected.log_likelihood) < 1e-8
    if "numba" in emitted:
        assert abs(emitted["numba"].flows(x)["log_likelihood"] - got["log_likelihood"]) < 1e-8
    for i, layer in enumerate(plan.layers):
        if isinstance(layer, SumLayer):
            per_group: dict[str, np.ndarray] = {}
            for fold, (group, row) in enumerate(zip(layer.groups, layer.rows, strict=True)):
                block = per_group.setdefault(group, np.zeros_like(np.asarray(expected.weights[group])))
                block[row:row + layer.shape[1]] += got[f"layer{i}_weights"][fold]
            for group, block in per_group.items():
                np.testing.assert_allclose(block, expected.weights[group], atol=1e-8)
        elif isinstance(layer, InputLayer):
            for t, group in enumerate(layer.tables):
                rows = slice(t * layer.width, (t + 1) * layer.width)
                stats = expected.inputs.get(group, {})
                if "counts" in stats:
                    k = stats["counts"].shape[1]
                    np.testing.assert_allclose(got[f"layer{i}_counts"][rows, :k], stats["counts"], atol=1e-8)
                for key in ("n", "dx", "dxx"):
                    if key in stats:
                        np.testing.assert_allclose(got[f"layer{i}_{key}"][rows], stats[key], atol=1e-8)


def test_torch_in_torch_out(emitted: dict[str, Any]) -> None:
    x = torch.from_numpy(emitted["x"])
    model = emitted["torch"]
    assert isinstance(model.log_prob(x), torch.Tensor)
    assert isinstance(model.map(x)[0], torch.Tensor)
    assert isinstance(model.sample(2, evidence=x[:1]), torch.Tensor)
    assert isinstance(model.flows(x)["log_likelihood"], float)
