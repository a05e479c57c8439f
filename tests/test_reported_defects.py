"""The defects a new user reported (issue 11's opening paragraph), one test each, as reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pcdsl
from pcdsl.arguments import InvalidArgument
from pcdsl.cli import main
from pcdsl.io.model import load_model, save_model
from pcdsl.params import initialise

from conftest import EXAMPLES

TINY = str(EXAMPLES / "tiny.pc")
BACKENDS = ["torch", "numba"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        status = main(argv)
    except SystemExit as stop:  # argparse's usage errors
        status = int(stop.code or 0)
    out, err = capsys.readouterr()
    assert "internal error" not in err and "Traceback" not in err, err
    return status, out, err


@pytest.mark.parametrize("shape", ["matrix", "empty", "float", "bool", "uint8", "images"])
def test_npy_data_file_does_not_stop_eval_and_train_with_an_internal_error(
        shape: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = np.array([[0, 1, 2], [1, 0, 1], [0, 0, 0]])
    arrays = {"matrix": rows, "empty": rows[:0], "float": rows.astype(float), "bool": rows[:, :2].astype(bool),
              "uint8": rows.astype(np.uint8), "images": np.zeros((2, 3, 3), dtype=np.uint8)}
    data = tmp_path / "d.npy"
    np.save(data, arrays[shape])
    ok = shape in ("matrix", "float", "uint8")
    status, out, err = _run(["eval", TINY, "--data", str(data)], capsys)
    assert status == (0 if ok else 1)
    assert ("average log-likelihood" in out) if ok else str(data) in err
    status, _, err = _run(["train", TINY, "--data", str(data), "-q", "--epochs", "1", "--full-epochs", "1",
                           "-o", str(tmp_path / "m.safetensors")], capsys)
    assert status == (0 if ok else 1)


def test_npy_data_source_of_floats_or_bools_is_read_by_structure_learning(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    bits = (rng.random((100, 4)) < 0.5)
    for name, array in (("f.npy", bits.astype(float)), ("b.npy", bits)):
        np.save(tmp_path / name, array)
        pc = tmp_path / f"{name}.pc"
        pc.write_text(f'data train = file("{name}")\ncircuit h {{ var x[4] : bool\n'
                      "  structure = hclt(x, hidden = 2, data = train) }\n")
        assert len(pcdsl.load(pc)) > 4


def test_eval_with_a_negative_batch_is_a_usage_error_not_a_zero_average(capsys: pytest.CaptureFixture[str]) -> None:
    data = EXAMPLES / "data" / "debd" / "nltcs" / "nltcs.valid.data"
    status, out, err = _run(["eval", str(EXAMPLES / "hclt_nltcs.pc"), "--data", str(data), "--batch", "-5"], capsys)
    assert status == 2 and out == ""
    assert "argument --batch: must be at least 1, found -5" in err


def test_sample_with_a_negative_count_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _run(["sample", TINY, "-n", "-3"], capsys)
    assert status == 2 and "argument -n: must be at least 0, found -3" in err


def test_eval_on_a_missing_cuda_device_says_it_is_not_available(capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    data = tmp_path / "d.csv"
    data.write_text("0,1,2\n")
    status, _, err = _run(["eval", TINY, "--data", str(data), "--device", "cuda"], capsys)
    assert status == 2
    assert "error[E0807]: device 'cuda' is not available" in err and "(available: cpu)" in err


@pytest.mark.parametrize("backend", BACKENDS)
def test_categorical_value_of_one_and_a_half_is_refused_not_truncated(backend: str) -> None:
    model = pcdsl.compile(pcdsl.load(TINY), backend)
    with pytest.raises(InvalidArgument) as info:
        model.log_prob(np.array([[0, 1, 1.5]]))  # type: ignore[attr-defined]
    assert info.value.code == "E0803"
    assert "x[0, 2] (variable 'c') is 1.5, not a whole number" in str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conditional_on_an_unknown_variable_names_it_instead_of_a_bare_key_error(backend: str) -> None:
    model = pcdsl.compile(pcdsl.load(TINY), backend)
    with pytest.raises(pcdsl.PcdslError) as info:
        model.conditional(np.array([[0, 1, 1]]), query=["d"])  # type: ignore[attr-defined]
    assert not isinstance(info.value, KeyError)
    assert "query names no variable 'd' (variables: a, b, c)" in str(info.value)


def test_check_of_a_model_file_checks_the_model_instead_of_echoing_bytes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = pcdsl.load(TINY)
    model = save_model(tmp_path / "model.safetensors", graph, initialise(graph, 1))
    status, out, err = _run(["check", str(model)], capsys)
    assert status == 0 and err == ""
    assert out.startswith(f"{model}: model file: circuit tiny: 8 nodes")
    assert "UTF-8" not in out + err and "\ufffd" not in out + err


def test_train_of_a_model_file_continues_from_its_parameters(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    data = EXAMPLES / "data" / "debd" / "nltcs" / "nltcs.valid.data"
    common = ["--data", str(data), "-q", "--dtype", "float64"]
    first = tmp_path / "first.safetensors"
    assert _run(["train", str(EXAMPLES / "hclt_nltcs.pc"), *common, "--epochs", "2", "--full-epochs", "3",
                 "-o", str(first)], capsys)[0] == 0
    # zero epochs: the result is exactly the starting point, which must be the model's own parameters
    again = tmp_path / "again.safetensors"
    status, _, err = _run(["train", str(first), *common, "--epochs", "0", "--full-epochs", "0", "-o", str(again)],
                          capsys)
    assert status == 0 and f"starting from the parameters of {first}" in err
    (_, before), (_, after) = load_model(first), load_model(again)
    for group, weights in before.weights.items():
        np.testing.assert_array_equal(after.weights[group], weights)
    # and more epochs improve on it rather than starting over
    _, out, _ = _run(["train", str(first), *common, "--epochs", "1", "--full-epochs", "0", "-o", str(again)], capsys)
    fresh = _run(["train", str(EXAMPLES / "hclt_nltcs.pc"), *common, "--epochs", "1", "--full-epochs", "0",
                  "-o", str(tmp_path / "fresh.safetensors")], capsys)[1]
    def first_ll(text: str) -> float:
        return float(text.split("train ")[1].split()[0])
    assert first_ll(out) > first_ll(fresh) + 0.5
