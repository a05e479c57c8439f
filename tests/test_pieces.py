"""Large batches run in pieces whose value buffers hold a bounded number of values (slots x
samples): log_prob, conditional and flows give what one piece gives, on both backends."""

from __future__ import annotations

import numpy as np
import pytest
from circuits import random_circuit
from pcdsl.backends import lower

from pcdsl.plan import compile_plan

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
    count = len(pieces.circuit._pieces(53)) if backend == "numba" else -(-53 // pieces.piece)  # type: ignore[attr-defined]
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
    # a second, smaller batch reuses the buffers of the first
    np.testing.assert_allclose(_np(pieces.log_prob(x[:5])), _np(whole.log_prob(x[:5])), rtol=0, atol=ATOL)
