"""What keeps large circuits cheap, on both backends: batches run in pieces whose value buffers
hold a bounded number of values (slots x samples), with the results of one piece; and
set_parameters reloads only the layers whose parameter groups changed, with the results of a
fresh compile."""

from __future__ import annotations

import numpy as np
import pytest
from circuits import random_circuit
from pcdsl.backends import lower

from pcdsl.learn.em import em_update
from pcdsl.params import Parameters
from pcdsl.plan import InputLayer, SumLayer, compile_plan

from conftest import ATOL


def _np(a):  # type: ignore[no-untyped-def]
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def _data(graph, n: int, seed: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    columns = []
    for v in graph.variables:
        if v.domain.is_discrete:
            column = rng.integers(0, v.domain.size, n).astype(np.float64)
            column[rng.random(n) < 0.2] = -1
        else:
            column = rng.standard_normal(n)
            column[rng.random(n) < 0.2] = np.nan
        columns.append(column)
    return np.stack(columns, axis=1)


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_batch_in_pieces_answers_as_in_one(backend: str, seed: int) -> None:
    graph, params = random_circuit(seed, num_vars=5, real=seed == 1)
    plan = compile_plan(graph, params)
    options = {"tile": 4} if backend == "numba" else {}
    whole = lower(plan, backend, dtype="float64", buffer_values=1 << 40, **options)
    pieces = lower(plan, backend, dtype="float64", buffer_values=plan.num_slots * 8, **options)
    # torch: 8 samples a piece; numba: whole tiles for each thread, so at most 8 samples per thread
    count = len(pieces.circuit._pieces(53)) if backend == "numba" else -(-53 // pieces.circuit.piece)  # type: ignore[attr-defined]
    assert count > 2
    x = _data(graph, 53, seed)
    np.testing.assert_allclose(_np(pieces.log_prob(x)), _np(whole.log_prob(x)), rtol=0, atol=ATOL)
    query = np.arange(len(graph.variables)) < 2
    full = _data(graph, 53, seed + 10)
    full[np.isnan(full)] = 0.5
    full[full == -1] = 0
    np.testing.assert_allclose(_np(pieces.conditional(full, query)), _np(whole.conditional(full, query)),
                               rtol=0, atol=ATOL)
    ours, theirs = pieces.flows(x), whole.flows(x)
    assert ours.log_likelihood == pytest.approx(theirs.log_likelihood, rel=1e-12)
    assert set(ours.weights) == set(theirs.weights) and set(ours.inputs) == set(theirs.inputs)
    for group, w in theirs.weights.items():
        np.testing.assert_allclose(_np(ours.weights[group]), _np(w), rtol=1e-12, atol=ATOL)
    for group, stats in theirs.inputs.items():
        for key, value in stats.items():
            np.testing.assert_allclose(_np(ours.inputs[group][key]), _np(value), rtol=1e-12, atol=ATOL)
    again = pieces.flows(x)  # the buffers a pass leaves behind do not leak into the next
    for group, w in ours.weights.items():
        np.testing.assert_array_equal(_np(again.weights[group]), _np(w))
    # a second, smaller batch reuses the buffers of the first
    np.testing.assert_allclose(_np(pieces.log_prob(x[:5])), _np(whole.log_prob(x[:5])), rtol=0, atol=ATOL)


def _fresh(graph, params: Parameters, backend: str):  # type: ignore[no-untyped-def]
    return lower(compile_plan(graph, params), backend, dtype="float64")


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_set_parameters_reloads_what_changed_and_answers_as_a_fresh_compile(backend: str) -> None:
    graph, params = random_circuit(2, num_vars=5, real=True)
    model = _fresh(graph, params, backend)
    x = _data(graph, 40, 3)
    updated = em_update(params, model.flows(x), step=0.5, pseudocount=0.1)
    model.set_parameters(updated)  # the first call loads every layer
    np.testing.assert_allclose(_np(model.log_prob(x)), _np(_fresh(graph, updated, backend).log_prob(x)),
                               rtol=0, atol=ATOL)
    # change one sum group and one leaf group; the other layers keep what they hold
    sums = [la for la in model.plan.layers if isinstance(la, SumLayer)]
    leaves = [la for la in model.plan.layers if isinstance(la, InputLayer)]
    group, leaf = sums[0].groups[0], leaves[-1].tables[0]
    partial = Parameters(dict(updated.inputs), dict(updated.weights), updated.fixed)
    partial.weights[group] = np.full_like(updated.weights[group], 1.0 / updated.weights[group].shape[1])
    partial.inputs[leaf] = {k: v.copy() for k, v in updated.inputs[leaf].items()}
    key = "probs" if "probs" in partial.inputs[leaf] else "p" if "p" in partial.inputs[leaf] else "mean"
    partial.inputs[leaf][key] = np.flip(partial.inputs[leaf][key], axis=-1).copy()
    _, changed = model._changes(partial)  # type: ignore[attr-defined]
    readers = [i for i, la in enumerate(model.plan.layers) if (isinstance(la, SumLayer) and group in la.groups)
               or (isinstance(la, InputLayer) and leaf in la.tables)]
    assert changed == readers and len(changed) < len(model.layer_groups)  # type: ignore[attr-defined]
    model.set_parameters(partial)
    np.testing.assert_allclose(_np(model.log_prob(x)), _np(_fresh(graph, partial, backend).log_prob(x)),
                               rtol=0, atol=ATOL)
    ours, theirs = model.flows(x), _fresh(graph, partial, backend).flows(x)
    for g, w in theirs.weights.items():
        np.testing.assert_allclose(_np(ours.weights[g]), _np(w), rtol=1e-12, atol=ATOL)
    # values changed in place in the same arrays count as changed too
    partial.weights[group][:] = updated.weights[group]
    model.set_parameters(partial)
    np.testing.assert_allclose(_np(model.log_prob(x)), _np(_fresh(graph, partial, backend).log_prob(x)),
                               rtol=0, atol=ATOL)
    assert model._changes(partial) == (set(), [])  # type: ignore[attr-defined]
