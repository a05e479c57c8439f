"""One Python API on every backend: numpy in, numpy out; torch in, torch out; integer samples and
completions for discrete circuits; sample(n, evidence) semantics; empty batches and zero counts
answered with empty results of the right type."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import pcdsl
from pcdsl.reference import Flows

from conftest import EXAMPLES

torch = pytest.importorskip("torch")
BACKENDS = ["torch", "numba"]


@pytest.fixture(scope="module", params=BACKENDS)
def tiny(request: pytest.FixtureRequest) -> Any:
    return pcdsl.compile(pcdsl.load(EXAMPLES / "tiny.pc"), request.param, dtype="float64")


@pytest.fixture(scope="module", params=BACKENDS)
def mixed(request: pytest.FixtureRequest) -> Any:
    return pcdsl.compile(pcdsl.load(EXAMPLES / "gaussians.pc"), request.param, dtype="float64")


X = np.array([[0, 1, -1], [1, -1, 2], [-1, -1, -1]], dtype=np.float64)


def _arrays(flows: Flows) -> list[Any]:
    return [*flows.weights.values(), *(v for stats in flows.inputs.values() for v in stats.values())]


def test_numpy_in_numpy_out(tiny: Any) -> None:
    assert isinstance(tiny.log_prob(X), np.ndarray)
    assert isinstance(tiny.conditional(X, ["c"]), np.ndarray)
    completed, lp = tiny.map(X)
    assert isinstance(completed, np.ndarray) and isinstance(lp, np.ndarray)
    assert isinstance(tiny.sample(3, evidence=X), np.ndarray)
    assert all(isinstance(v, np.ndarray) for v in _arrays(tiny.flows(X)))


def test_torch_in_torch_out(tiny: Any) -> None:
    x = torch.from_numpy(X)
    assert isinstance(tiny.log_prob(x), torch.Tensor)
    assert isinstance(tiny.conditional(x, ["c"]), torch.Tensor)
    completed, lp = tiny.map(x)
    assert isinstance(completed, torch.Tensor) and isinstance(lp, torch.Tensor)
    assert isinstance(tiny.sample(3, evidence=x), torch.Tensor)
    assert all(isinstance(v, torch.Tensor) for v in _arrays(tiny.flows(x)))
    np.testing.assert_allclose(tiny.log_prob(x).numpy(), tiny.log_prob(X))


def test_lists_are_arrays_too(tiny: Any) -> None:
    np.testing.assert_allclose(tiny.log_prob(X.tolist()), tiny.log_prob(X))
    np.testing.assert_allclose(tiny.log_prob([0, 1, 2]), tiny.log_prob(np.array([[0, 1, 2]])))  # one row


def test_discrete_circuits_give_integer_samples_and_completions(tiny: Any) -> None:
    samples = tiny.sample(50, seed=1)
    assert samples.dtype == np.int64 and samples.shape == (50, 3)
    assert samples.min() >= 0 and samples[:, 2].max() <= 2
    completed, _ = tiny.map(X)
    assert completed.dtype == np.int64 and not (completed == -1).any()
    assert tiny.sample(2, evidence=torch.from_numpy(X[:1])).dtype == torch.int64


def test_circuits_with_real_variables_give_floats_with_whole_discrete_columns(mixed: Any) -> None:
    samples = mixed.sample(20, seed=2)
    assert samples.dtype == np.float64
    assert set(np.unique(samples[:, 2])) <= {0.0, 1.0}


def test_one_evidence_row_gives_n_samples_that_keep_it(tiny: Any) -> None:
    drawn = tiny.sample(6, evidence=np.array([1, -1, 2]), seed=3)
    assert drawn.shape == (6, 3)
    assert (drawn[:, 0] == 1).all() and (drawn[:, 2] == 2).all()


def test_n_evidence_rows_give_one_sample_each(tiny: Any) -> None:
    drawn = tiny.sample(3, evidence=X, seed=3)
    observed = X != -1
    assert drawn.shape == (3, 3)
    assert (drawn[observed] == X[observed]).all()


def test_empty_batches_give_empty_results(tiny: Any) -> None:
    empty = np.zeros((0, 3))
    assert tiny.log_prob(empty).shape == (0,)
    assert tiny.conditional(empty, [0]).shape == (0,)
    completed, lp = tiny.map(empty)
    assert completed.shape == (0, 3) and completed.dtype == np.int64 and lp.shape == (0,)
    flows = tiny.flows(empty)
    assert flows.log_likelihood == 0.0 and all(not np.asarray(v).any() for v in _arrays(flows))
    assert tiny.log_prob(torch.zeros((0, 3))).shape == (0,)


def test_zero_samples_are_an_empty_result(tiny: Any) -> None:
    assert tiny.sample(0).shape == (0, 3)
    assert tiny.sample(0, evidence=np.zeros((0, 3))).shape == (0, 3)
    assert isinstance(tiny.sample(0, evidence=torch.zeros((1, 3))), torch.Tensor)


def test_query_variables_by_name_index_or_mask_agree(tiny: Any) -> None:
    by_name = tiny.conditional(X, ["c", "a"])
    np.testing.assert_allclose(by_name, tiny.conditional(X, [2, 0]))
    np.testing.assert_allclose(by_name, tiny.conditional(X, np.array([True, False, True])))
    np.testing.assert_allclose(tiny.conditional(X, "c"), tiny.conditional(X, [2]))


def test_both_backends_answer_alike() -> None:
    graph = pcdsl.load(EXAMPLES / "tiny.pc")
    a, b = (pcdsl.compile(graph, backend, dtype="float64") for backend in BACKENDS)
    np.testing.assert_allclose(a.log_prob(X), b.log_prob(X), atol=1e-12)
    np.testing.assert_allclose(a.conditional(X, ["b"]), b.conditional(X, ["b"]), atol=1e-12)
    np.testing.assert_array_equal(a.map(X)[0], b.map(X)[0])
    for group, value in a.flows(X).weights.items():
        np.testing.assert_allclose(value, b.flows(X).weights[group], atol=1e-12)


def test_evaluate_keeps_rows_and_answers_an_empty_dataset() -> None:
    from pcdsl.evaluate import evaluate

    model = pcdsl.compile(pcdsl.load(EXAMPLES / "tiny.pc"), "numba")
    score = evaluate(model, X, batch_size=2, keep_rows=True)
    np.testing.assert_allclose(score.per_row, model.log_prob(X))
    assert score.rows == 3 and abs(score.mean_log_likelihood - score.per_row.mean()) < 1e-12
    empty = evaluate(model, np.zeros((0, 3)))
    assert empty.rows == 0 and np.isnan(empty.mean_log_likelihood)
