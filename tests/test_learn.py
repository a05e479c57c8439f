"""Learning: EM monotonicity, parameter recovery, agreement with the reference flows,
schedules, model files and the train command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from circuits import random_circuit
from hypothesis import given, settings
from hypothesis import strategies as st

import pcdsl
from pcdsl import reference
from pcdsl.cli import main
from pcdsl.io.model import ModelFileError, load_model, save_model
from pcdsl.learn.em import batches, em_update, full_batch_flows
from pcdsl.learn.train import Stage, Trainer, mean_ll, schedule
from pcdsl.params import initialise

from conftest import EXAMPLES

NLTCS = EXAMPLES / "data" / "debd" / "nltcs" / "nltcs"


BACKENDS = ["torch", "numba"]


@given(st.integers(0, 5000), st.integers(1, 700))
def test_mini_batches_cover_every_row_once_in_near_equal_sizes(n: int, size: int) -> None:
    parts = list(batches(n, size, np.random.default_rng(n)))
    rows = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    assert sorted(rows.tolist()) == list(range(n))
    assert len(parts) == -(-n // size)  # as many batches as with a remainder batch, none smaller
    if parts:
        sizes = [len(p) for p in parts]
        assert max(sizes) <= size and max(sizes) - min(sizes) <= 1


def _torch(graph, params, backend: str = "torch"):  # type: ignore[no-untyped-def]
    return pcdsl.compile(graph, backend, params=params, dtype="float64")


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10**6))
def test_full_batch_em_never_decreases_the_likelihood(backend: str, seed: int) -> None:
    graph, truth = random_circuit(seed, num_vars=4)
    data = reference.sample(graph, truth, 300, seed=seed)
    data[np.random.default_rng(seed).random(data.shape) < 0.1] = -1  # EM over the marginal
    params = initialise(graph, seed + 1)
    model = _torch(graph, params, backend)
    last = -np.inf
    for _ in range(8):
        flows = full_batch_flows(model, data)
        assert flows.log_likelihood >= last - 1e-9
        last = flows.log_likelihood
        params = em_update(params, flows, step=1.0, pseudocount=0.0)
        model.set_parameters(params)


def test_em_recovers_known_parameters() -> None:
    """Deterministic mixture (indicators split on z): EM finds the truth within 0.02 from 20,000 samples."""
    text = """
    circuit truth { var z : bool  var a : categorical(3)  var b : bool
      leaf z0 = indicator(z, 0)  leaf z1 = indicator(z, 1)
      leaf a0 = categorical(a, [0.7, 0.2, 0.1])  leaf a1 = categorical(a, [0.1, 0.3, 0.6])
      leaf b0 = bernoulli(b, p = 0.9)  leaf b1 = bernoulli(b, p = 0.25)
      prod c0 = z0 * a0 * b0  prod c1 = z1 * a1 * b1
      sum root = 0.35 c0 + 0.65 c1 }
    circuit learner { var z : bool  var a : categorical(3)  var b : bool
      leaf z0 = indicator(z, 0)  leaf z1 = indicator(z, 1)
      leaf a0 = categorical(a)  leaf a1 = categorical(a)  leaf b0 = bernoulli(b)  leaf b1 = bernoulli(b)
      prod c0 = z0 * a0 * b0  prod c1 = z1 * a1 * b1
      sum root = c0 + c1 }"""
    checked = pcdsl.check_text(text)
    truth_graph, learner = checked.circuit("truth"), checked.circuit("learner")
    truth = initialise(truth_graph)
    data = reference.sample(truth_graph, truth, 20_000, seed=7)
    params = initialise(learner, seed=3)
    model = _torch(learner, params)
    for _ in range(3):
        params = em_update(params, full_batch_flows(model, data), step=1.0, pseudocount=0.0)
        model.set_parameters(params)
    tolerance = 0.02
    assert np.abs(params.weights["root"] - [[0.35, 0.65]]).max() < tolerance
    assert np.abs(params.inputs["a0"]["probs"] - [[0.7, 0.2, 0.1]]).max() < tolerance
    assert np.abs(params.inputs["a1"]["probs"] - [[0.1, 0.3, 0.6]]).max() < tolerance
    assert abs(params.inputs["b0"]["p"][0] - 0.9) < tolerance and abs(params.inputs["b1"]["p"][0] - 0.25) < tolerance


@pytest.mark.parametrize("backend", BACKENDS)
def test_em_steps_from_backend_and_reference_flows_agree(backend: str) -> None:
    graph, params = random_circuit(12, num_vars=5)
    data = reference.sample(graph, params, 200, seed=1)
    data[::3, 1] = -1
    start = initialise(graph, 5)
    model = _torch(graph, start, backend)
    ours = em_update(start, full_batch_flows(model, data, batch_size=64), step=0.3, pseudocount=0.1)
    theirs = em_update(start, reference.flows(graph, start, data), step=0.3, pseudocount=0.1)
    for group in theirs.weights:
        assert np.abs(ours.weights[group] - theirs.weights[group]).max() < 1e-9
    for node in theirs.inputs:
        for key in theirs.inputs[node]:
            assert np.abs(ours.inputs[node][key] - theirs.inputs[node][key]).max() < 1e-9


def test_tied_sums_share_weights_after_training() -> None:
    graph = pcdsl.load(EXAMPLES / "groups.pc")
    params = initialise(graph)
    data = np.random.default_rng(0).integers(0, 4, size=(200, 4)).astype(float)
    model = _torch(graph, params)
    params = em_update(params, full_batch_flows(model, data), step=1.0)
    assert "bottom_mix" not in params.weights and "top_mix" in params.weights
    flows = model.flows(data)
    assert flows.weights["top_mix"].shape == (4, 4)  # one group: both sums' flows added


def test_schedule_is_piecewise_linear() -> None:
    assert schedule((0.1,), 0.7) == 0.1
    assert schedule((0.1, 0.01), 0.0) == 0.1 and abs(schedule((0.1, 0.01), 1.0) - 0.01) < 1e-15
    assert abs(schedule((1.0, 0.5, 0.0), 0.25) - 0.75) < 1e-12
    assert abs(schedule((1.0, 0.5, 0.0), 0.75) - 0.25) < 1e-12


def test_trainer_selects_on_valid_and_stops_early() -> None:
    """150 training rows and a large HCLT overfit: valid peaks, then patience stops training."""
    graph = pcdsl.load(EXAMPLES / "hclt_nltcs.pc", "nltcs_hclt")
    train, valid = (np.loadtxt(f"{NLTCS}.{s}.data", delimiter=",") for s in ("train", "valid"))
    params = initialise(graph)
    model = _torch(graph, params)
    valid = valid[:1000]
    trainer = Trainer(model, params, train[:150], valid, progress=False)
    best = trainer.run([Stage("em", 2, 50, (0.2, 0.05)), Stage("full_em", 60, pseudocount=0.01, patience=2)])
    assert len(trainer.history) < 62  # patience stopped the full-batch stage
    scores = [e.valid_ll for e in trainer.history]
    assert scores[-1] < max(scores)  # it stopped because valid got worse
    assert abs(mean_ll(model, valid) - max(scores)) < 1e-9  # the model holds the best parameters
    assert best is trainer.best[1]  # type: ignore[index]
    assert scores[-1] > -16 * np.log(2)  # better than uniform


def test_model_file_round_trip(tmp_path: Path) -> None:
    for name in ("groups.pc", "gaussians.pc", "hclt_nltcs.pc"):
        graph = pcdsl.load(EXAMPLES / name)
        params = initialise(graph, 4)
        path = save_model(tmp_path / "m.safetensors", graph, params)
        graph2, params2 = load_model(path)
        x = reference.sample(graph, params, 20, seed=2)
        assert np.abs(reference.log_prob(graph, params, x) - reference.log_prob(graph2, params2, x)).max() < 1e-12
        assert [n.name for n in graph.nodes()] == [n.name for n in graph2.nodes()]
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "junk.safetensors")


def test_train_command_writes_a_model_that_eval_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nltcs.safetensors"
    status = main(["train", str(EXAMPLES / "rat.pc"), "--circuit", "nltcs_independent",
                   "--data", f"{NLTCS}.valid.data", "--test", f"{NLTCS}.test.data",
                   "--epochs", "1", "--full-epochs", "2", "-q", "-o", str(out)])
    assert status == 0 and out.exists()
    printed = capsys.readouterr().out
    test_ll = float(printed.split("test log-likelihood: ")[1].split()[0])
    assert main(["eval", str(out), "--data", f"{NLTCS}.test.data", "--dtype", "float64"]) == 0
    evaluated = float(capsys.readouterr().out.split("average log-likelihood ")[1].split()[0])
    assert abs(test_ll - evaluated) < 1e-3


def test_recipe_run_writes_its_directory_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    out = tmp_path / "run"
    assert main(["run", str(EXAMPLES / "nltcs.pc"), "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert f"test loglik = {report['test_loglik']:.4f}" in printed
    assert -6.3 < report["test_loglik"] < -5.9  # NLTCS; published HCLT: -6.00
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics and {"stage", "epoch", "train_ll", "valid_ll"} <= set(metrics[0])
    graph, params = load_model(out / "model.safetensors")
    assert len(graph.variables) == 16
    assert set(params.weights) == {n.name for n in graph.nodes() if n.kind.value == "sum"}
    # restarting a finished run checks the files its state vouches for and gives the same report
    # (runs stopped part-way resume: tests/test_crash.py)
    assert main(["run", str(EXAMPLES / "nltcs.pc"), "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "had finished; its files are intact" in printed and f"test loglik = {report['test_loglik']:.4f}" in printed
    assert len((out / "metrics.jsonl").read_text().splitlines()) == len(metrics)


def test_sgd_gradients_equal_finite_differences() -> None:
    from pcdsl.learn.sgd import Optimizer, _softmax

    graph, params = random_circuit(21, num_vars=4, real=True)
    x = reference.sample(graph, params, 30, seed=3)
    opt = Optimizer(params, "sgd")
    grads = opt._gradients(params, reference.flows(graph, params, x), len(x))
    rng = np.random.default_rng(0)
    for key in sorted(grads)[:: max(1, len(grads) // 6)]:
        index = tuple(int(rng.integers(s)) for s in grads[key].shape)

        def loglik(delta: float, key: str = key, index: tuple[int, ...] = index) -> float:
            theta = {k: v.copy() for k, v in opt.theta.items()}
            theta[key][index] += delta
            shifted = Optimizer(params, "sgd")
            shifted.theta = theta
            return float(reference.log_prob(graph, shifted._to_params(params), x).mean())

        numeric = (loglik(1e-6) - loglik(-1e-6)) / 2e-6
        assert abs(numeric - grads[key][index]) < 1e-5, key
    assert _softmax(np.zeros((1, 4))).sum() == 1.0


def test_adam_stage_improves_the_model() -> None:
    graph = pcdsl.load(EXAMPLES / "hclt_nltcs.pc", "nltcs_hclt")
    train = np.loadtxt(f"{NLTCS}.train.data", delimiter=",")[:3000]
    params = initialise(graph)
    model = _torch(graph, params)
    before = mean_ll(model, train)
    Trainer(model, params, train, progress=False).run([Stage("sgd", 2, 256, (0.05,), optimizer="adam")])
    assert mean_ll(model, train) > before + 1.0


def test_train_can_start_from_a_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = tmp_path / "first.safetensors"
    common = [str(EXAMPLES / "rat.pc"), "--circuit", "nltcs_independent", "--data", f"{NLTCS}.valid.data",
              "--epochs", "1", "--full-epochs", "0", "-q"]
    assert main(["train", *common, "-o", str(first)]) == 0
    again = str(tmp_path / "b.safetensors")
    assert main(["train", *common, "--init", str(first), "--full-epochs", "1", "-o", again]) == 0
    assert main(["train", str(EXAMPLES / "tiny.pc"), "--data", f"{NLTCS}.valid.data", "--init", str(first)]) == 1
    assert "different circuit structure" in capsys.readouterr().err


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_flows_over_batches_equals_one_batch_and_keeps_its_inputs(backend: str) -> None:
    """Flows added batch by batch (in place into the total from the second batch on) equal the
    flows of all rows at once; the batches' own flows are not written to."""
    from pcdsl.backends import lower

    from pcdsl.learn.em import add_flows
    from pcdsl.plan import compile_plan

    graph, params = random_circuit(4, num_vars=5)
    model = lower(compile_plan(graph, params), backend, dtype="float64")
    x = reference.sample(graph, params, 90, seed=4)
    whole = model.flows(x)
    total = None
    for rows in (slice(0, 30), slice(30, 60), slice(60, 90)):
        more = model.flows(x[rows])
        before = {g: np.array(f, copy=True) for g, f in more.weights.items()}
        total = add_flows(total, more)
        for group, f in more.weights.items():
            np.testing.assert_array_equal(np.asarray(f), before[group])
    assert total is not None
    assert total.log_likelihood == pytest.approx(whole.log_likelihood, rel=1e-9)
    for group, f in whole.weights.items():
        np.testing.assert_allclose(total.weights[group], np.asarray(f), rtol=1e-9, atol=1e-12)
    for node, stats in whole.inputs.items():
        for key, value in stats.items():
            np.testing.assert_allclose(total.inputs[node][key], np.asarray(value), rtol=1e-9, atol=1e-12)
