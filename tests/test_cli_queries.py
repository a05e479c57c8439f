"""The command line covers every query, and every command reads .pc source or a model file alike
and says which it read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pcdsl
from pcdsl.cli import main
from pcdsl.io.model import load_model, save_model
from pcdsl.params import initialise

from conftest import EXAMPLES

TINY = str(EXAMPLES / "tiny.pc")
ROWS = np.array([[0, 1, -1], [1, -1, 2], [-1, 0, 1]], dtype=np.float64)


@pytest.fixture
def data(tmp_path: Path) -> str:
    path = tmp_path / "rows.csv"
    path.write_text("0,1,-1\n1,?,2\n,0,1\n")
    return str(path)


@pytest.fixture
def reference_model() -> object:
    return pcdsl.compile(pcdsl.load(TINY), "torch", dtype="float64")


def _values(text: str) -> np.ndarray:
    return np.array([[float(v) for v in line.split(",")] for line in text.strip().splitlines()])


def test_query_marginal_is_the_default(data: str, reference_model: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", TINY, "--data", data, "--dtype", "float64"]) == 0
    out, err = capsys.readouterr()
    np.testing.assert_allclose(_values(out)[:, 0], reference_model.log_prob(ROWS))  # type: ignore[attr-defined]
    assert f"read .pc source {TINY} (circuit tiny)" in err and "log p(observed values) of 3 rows" in err


def test_query_conditional_by_names(data: str, reference_model: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", TINY, "--data", data, "--conditional", "c, a", "--dtype", "float64"]) == 0
    got = _values(capsys.readouterr().out)[:, 0]
    with np.errstate(invalid="ignore"):
        expected = reference_model.conditional(ROWS, ["a", "c"])  # type: ignore[attr-defined]
    np.testing.assert_allclose(got, expected)


def test_query_conditional_reads_array_names_with_commas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pc = tmp_path / "grid.pc"
    pc.write_text("circuit g { var x[2, 2] : bool\n  structure = fully_factorized(x) }\n")
    rows = tmp_path / "rows.csv"
    rows.write_text("0,1,1,0\n")
    assert main(["query", str(pc), "--data", str(rows), "--conditional", "x[0, 1],x[1,1]"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1


def test_query_map_writes_integer_completions(data: str, tmp_path: Path, reference_model: object,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "map.npy"
    assert main(["query", TINY, "--data", data, "--map", "-o", str(out), "--dtype", "float64"]) == 0
    completed = np.load(out)
    assert completed.dtype == np.int64
    np.testing.assert_array_equal(completed, reference_model.map(ROWS)[0])  # type: ignore[attr-defined]
    assert "wrote MAP completions of 3 rows" in capsys.readouterr().out


def test_eval_per_row_writes_every_log_likelihood(data: str, tmp_path: Path, reference_model: object,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ll.csv"
    assert main(["eval", TINY, "--data", data, "--per-row", "-o", str(out), "--dtype", "float64"]) == 0
    np.testing.assert_allclose(_values(out.read_text())[:, 0], reference_model.log_prob(ROWS))  # type: ignore[attr-defined]
    printed = capsys.readouterr().out
    assert "3 samples: average log-likelihood" in printed and f"wrote 3 log-likelihoods to {out}" in printed
    assert main(["eval", TINY, "--data", data, "--per-row"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3  # the summary went to stderr


def test_sample_given_evidence_rows(data: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sample", TINY, "--evidence", data]) == 0  # one sample per row
    drawn = _values(capsys.readouterr().out)
    observed = ROWS != -1
    assert drawn.shape == (3, 3) and (drawn[observed] == ROWS[observed]).all()
    one = tmp_path / "one.csv"
    one.write_text("1,-1,2\n")
    assert main(["sample", TINY, "--evidence", str(one), "-n", "5"]) == 0  # n samples of one row
    drawn = _values(capsys.readouterr().out)
    assert drawn.shape == (5, 3) and (drawn[:, 0] == 1).all() and (drawn[:, 2] == 2).all()


def test_sample_npy_of_a_discrete_circuit_is_integers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.npy"
    assert main(["sample", TINY, "-n", "4", "-o", str(out)]) == 0
    assert np.load(out).dtype == np.int64


def test_every_command_takes_a_model_file_and_says_so(tmp_path: Path, data: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    graph = pcdsl.load(TINY)
    model = str(save_model(tmp_path / "m.safetensors", graph, initialise(graph, 4)))
    said = f"read model file {model} (circuit tiny, trained parameters)"
    for argv in (["eval", model, "--data", data], ["query", model, "--data", data, "--map"],
                 ["sample", model, "-n", "2"], ["render", model, "-o", str(tmp_path / "m.dot")],
                 ["compile", model]):
        assert main(argv) == 0, argv
        assert said in capsys.readouterr().err, argv
    assert main(["check", model]) == 0
    assert capsys.readouterr().out.startswith(f"{model}: model file: circuit tiny")


def test_compile_of_a_model_file_emits_its_parameters(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    from safetensors.numpy import load_file

    graph = pcdsl.load(TINY)
    params = initialise(graph, 4)
    params.weights["root"] = np.array([[0.123, 0.877]])
    model = str(save_model(tmp_path / "m.safetensors", graph, params))
    assert main(["compile", model, "-o", str(tmp_path / "out"), "--seed", "9"]) == 0
    tensors = load_file(str(tmp_path / "out" / "circuit" / "arrays.safetensors"))
    weights = [v for k, v in tensors.items() if k.endswith(".weights")]
    assert any(np.allclose(w.reshape(-1), [0.123, 0.877]) for w in weights)


def test_a_model_file_renamed_pc_is_still_read_as_a_model(tmp_path: Path, data: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    graph = pcdsl.load(TINY)
    renamed = tmp_path / "model.pc"
    renamed.write_bytes(save_model(tmp_path / "m.safetensors", graph, initialise(graph, 4)).read_bytes())
    assert main(["eval", str(renamed), "--data", data]) == 0
    assert f"read model file {renamed}" in capsys.readouterr().err


def test_train_without_output_says_where_the_model_went(tmp_path: Path, data: str, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", TINY, "--data", data, "-q", "--epochs", "1", "--full-epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "wrote tiny.trained.safetensors (no -o given" in out
    graph, _ = load_model(tmp_path / "tiny.trained.safetensors")
    assert graph.name == "tiny"
    # continuing from that file never overwrites it
    assert main(["train", "tiny.trained.safetensors", "--data", data, "-q", "--epochs", "1"]) == 0
    assert "wrote tiny.trained-again.safetensors" in capsys.readouterr().out


def test_run_says_which_report_split_is_missing_at_check_time(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "train.csv").write_text("0,1\n1,0\n")
    recipe = tmp_path / "r.pc"
    recipe.write_text('recipe r {\n  data = file("train.csv")\n  model = hclt(over = data, hidden = 2)\n'
                      "  train { em(epochs = 1) }\n  report loglik(test)\n}\n")
    assert main(["check", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert "error[E0605]: the report needs the test split, but `file(...)` data has a train split only" in err
    assert main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 1
    assert not (tmp_path / "run").exists()  # refused before any training
