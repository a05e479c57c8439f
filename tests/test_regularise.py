"""Data softening and entropy regularisation (pcdsl.learn.regularise) against brute force."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from circuits import all_assignments, deterministic_circuit, random_circuit

import pcdsl
from pcdsl import reference
from pcdsl.cli import main
from pcdsl.ir.graph import NodeKind
from pcdsl.learn.em import em_update, full_batch_flows
from pcdsl.learn.regularise import (
    entropy_normalise,
    entropy_weights,
    normalise,
    reach,
    soften_table,
    softened,
    unsoften,
)
from pcdsl.learn.train import Stage, Trainer, mean_ll
from pcdsl.params import Parameters, initialise
from pcdsl.run import stages

from conftest import EXAMPLES

TOL = 1e-9


def _entropy(theta: np.ndarray) -> np.ndarray:
    return -np.where(theta > 0, theta * np.log(np.where(theta > 0, theta, 1.0)), 0.0).sum(axis=-1)


def _objective(g: np.ndarray, lam: float, theta: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(theta)  # -inf at the simplex's edge: only G = 0 may put theta there
        return np.where(g > 0, g * logs, 0.0).sum(axis=-1) + lam * _entropy(theta)


@pytest.mark.parametrize("k", [2, 3])
def test_entropy_m_step_is_the_maximum_over_the_simplex(k: int) -> None:
    """The Newton solution beats 200,000 random points of the simplex (and, for k = 2, a fine grid)."""
    rng = np.random.default_rng(k)
    points = rng.dirichlet(np.full(k, 0.5), size=200_000)
    if k == 2:
        grid = np.linspace(0.0, 1.0, 200_001)
        points = np.concatenate([points, np.stack([grid, 1 - grid], axis=1)])
    for trial in range(40):
        g = rng.exponential(1.0, size=k) * rng.choice([0.01, 1.0, 100.0])
        if trial % 5 == 0:
            g[0] = 0.0  # a child no data reaches
        lam = float(rng.choice([1e-3, 0.1, 1.0, 10.0, 1000.0]))
        theta = entropy_normalise(g[None], 0.0, np.array([lam]))[0]
        assert abs(theta.sum() - 1) < TOL and ((theta > 0) | (g == 0)).all()  # exp(-G/lam) may underflow
        assert _objective(g, lam, theta) >= _objective(g, lam, points).max() - TOL
        assert _entropy(theta) >= _entropy(normalise(g[None], 0.0)[0]) - TOL  # more entropy than plain EM


def test_entropy_zero_is_plain_em_exactly() -> None:
    graph, params = random_circuit(4, num_vars=5)
    data = reference.sample(graph, params, 100, seed=2)
    flows = reference.flows(graph, params, data)
    weights = entropy_weights(reach(_torch(graph, params), 5), 0.0, len(data))
    plain, zero = em_update(params, flows, 0.5, 0.1), em_update(params, flows, 0.5, 0.1, entropy=weights)
    for group in plain.weights:
        assert np.array_equal(plain.weights[group], zero.weights[group])
    for node in plain.inputs:
        for key in plain.inputs[node]:
            assert np.array_equal(plain.inputs[node][key], zero.inputs[node][key])


def test_entropy_weights_are_reach_probabilities() -> None:
    """For a deterministic circuit H(X, Z) = H(X): sum_n r_n H(theta_n) equals the enumerated entropy."""
    for seed in range(5):
        graph, params = deterministic_circuit(seed, num_vars=3)
        r = entropy_weights(reach(_torch(graph, params), 3), 1.0, 1)
        rows = {**params.weights, **{n: p["probs"] if "probs" in p else np.stack([1 - p["p"], p["p"]], axis=1)
                                     for n, p in params.inputs.items() if "probs" in p or "p" in p}}
        decomposed = sum(float((r[name] * _entropy(theta)).sum()) for name, theta in rows.items())
        p = np.exp(reference.log_prob(graph, params, all_assignments(graph)))
        assert abs(decomposed - _entropy(p)) < 1e-9


def test_entropy_regularised_training_raises_entropy() -> None:
    graph, _ = random_circuit(9, num_vars=5)
    data = reference.sample(graph, random_circuit(9, num_vars=5)[1], 60, seed=1)
    results = []
    for tau in (0.0, 0.05):
        params = initialise(graph, 3)
        trainer = Trainer(_torch(graph, params), params, data, progress=False)
        final = trainer.run([Stage("full_em", 20, pseudocount=0.0, entropy=tau)])
        p = np.exp(reference.log_prob(graph, final, all_assignments(graph)))
        results.append((_entropy(p), float(np.mean(reference.log_prob(graph, final, data)))))
    (h_plain, ll_plain), (h_reg, ll_reg) = results
    assert h_reg > h_plain and ll_reg < ll_plain


def _no_indicators(seed: int) -> tuple[pcdsl.ir.graph.CircuitGraph, Parameters]:
    while True:  # indicator leaves stay hard evidence; these tests soften every variable
        graph, params = random_circuit(seed, num_vars=4)
        if all(n.family != "indicator" for n in graph.nodes() if n.kind is NodeKind.INPUT):
            return graph, params
        seed += 1000


def _kernel(size: int, beta: float) -> np.ndarray:
    return soften_table(np.eye(size), beta)  # K[v, u] = k(v | u)


def _soft_loglik(graph, params, rows: np.ndarray, beta: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    """log sum_x' prod_i k(x_i | x'_i) p(x'), by enumerating x'."""
    worlds = all_assignments(graph)
    p = np.exp(reference.log_prob(graph, params, worlds))
    out = []
    for row in rows:
        k = np.ones(len(worlds))
        for i, var in enumerate(graph.variables):
            k *= _kernel(var.domain.size, beta)[int(row[i]), worlds[:, i].astype(int)]  # type: ignore[arg-type]
        out.append(np.log((k * p).sum()))
    return np.array(out)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_softened_leaves_give_the_soft_evidence_likelihood(seed: int) -> None:
    graph, params = _no_indicators(seed)
    rows = reference.sample(graph, params, 20, seed=seed)
    for beta in (0.0, 0.01, 0.2):
        ours = reference.log_prob(graph, softened(params, beta), rows)
        assert np.abs(ours - _soft_loglik(graph, params, rows, beta)).max() < 1e-9


def test_unsoftened_counts_are_the_expected_counts_of_the_true_values() -> None:
    """EM's expected count of value u at a leaf unit is theta_u d/dtheta_u sum log L_soft (finite differences)."""
    graph, params = _no_indicators(5)
    rows, beta, h = reference.sample(graph, params, 15, seed=4), 0.1, 1e-6
    flows = unsoften(reference.flows(graph, softened(params, beta), rows), params, beta)
    checked = 0
    for node, p in params.inputs.items():
        if "probs" not in p:
            continue  # Bernoulli leaves take the same path with the table (1 - p, p)
        for unit, value in np.ndindex(*p["probs"].shape):
            moved = [p["probs"].copy(), p["probs"].copy()]
            moved[0][unit, value] *= 1 + h
            moved[1][unit, value] *= 1 - h
            lls = [_soft_loglik(graph, Parameters({**params.inputs, node: {"probs": m}}, params.weights), rows,
                                beta).sum() for m in moved]
            expected = p["probs"][unit, value] * (lls[0] - lls[1]) / (2 * h * p["probs"][unit, value])
            assert abs(flows.inputs[node]["counts"][unit, value] - expected) < 1e-5
            checked += 1
    assert checked > 0


def test_softened_full_batch_em_never_decreases_the_softened_likelihood() -> None:
    graph, truth = _no_indicators(7)
    data = reference.sample(graph, truth, 300, seed=3)
    data[np.random.default_rng(3).random(data.shape) < 0.1] = -1  # missing values stay marginalised
    params, beta, last = initialise(graph, 11), 0.05, -np.inf
    model = _torch(graph, params)
    for _ in range(10):
        model.set_parameters(softened(params, beta))
        flows = full_batch_flows(model, data)
        assert flows.log_likelihood >= last - 1e-9
        last = flows.log_likelihood
        params = em_update(params, unsoften(flows, params, beta), step=1.0, pseudocount=0.0)


def test_softened_training_scores_valid_on_the_plain_parameters() -> None:
    graph, truth = _no_indicators(2)
    train, valid = (reference.sample(graph, truth, n, seed=s) for n, s in ((200, 1), (100, 2)))
    params = initialise(graph, 5)
    model = _torch(graph, params)
    trainer = Trainer(model, params, train, valid, progress=False)
    trainer.run([Stage("em", 2, 50, (0.3,), soften=0.02, entropy=0.01),
                 Stage("full_em", 5, soften=0.02, entropy=0.01)])
    best = max(e.valid_ll for e in trainer.history if e.valid_ll is not None)
    assert abs(mean_ll(model, valid) - best) < 1e-9  # the model holds the best plain parameters


def test_recipe_stages_take_soften_and_entropy(tmp_path: Path) -> None:
    path = tmp_path / "r.pc"
    path.write_text('recipe r {\n  data = debd("nltcs")\n  model = hclt(over = data, hidden = 4)\n'
                    '  train { em(epochs = 1, soften = 0.002, entropy = 0.001); full_em(epochs = 2) }\n}\n')
    spec = pcdsl.check_file(path).recipes["r"]
    first, second = stages(spec)
    assert (first.soften, first.entropy) == (0.002, 0.001) and (second.soften, second.entropy) == (0.0, 0.0)


def _torch(graph, params):  # type: ignore[no-untyped-def]
    return pcdsl.compile(graph, params=params, dtype="float64")


def test_train_command_takes_soften_and_entropy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = EXAMPLES / "data" / "debd" / "nltcs" / "nltcs"
    args = ["train", str(EXAMPLES / "hclt_nltcs.pc"), "--data", f"{data}.valid.data", "--epochs", "1",
            "--full-epochs", "2", "-q", "-o", str(tmp_path / "m.safetensors")]
    assert main([*args, "--soften", "0.01", "--entropy", "0.001"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*args, "--soften", "0.7"])
    assert "--soften: must be a finite number in [0, 0.5], found 0.7" in capsys.readouterr().err
