"""Model files are checked on load (pcdsl/io/checks.py): each bad file is refused with one
message that names the file and the node or tensor at fault, and the CLI exits 1."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pcdsl
from pcdsl.cli import main
from pcdsl.io import checks
from pcdsl.io.model import ModelFileError, load_model, save_model
from pcdsl.params import initialise

from conftest import EXAMPLES

MIXED = """
circuit m { var a : bool  var c : categorical(3)  var h : real
  leaf a0 = bernoulli(a, p = 0.2)  leaf a1 = bernoulli(a, p = 0.9)
  leaf c0 = categorical(c, [0.1, 0.3, 0.6])  leaf c1 = indicator(c, 2)
  leaf h0 = gaussian(h, mean = 0, std = 1)  leaf h1 = gaussian(h, mean = 3, std = 0.5)
  prod p0 = a0 * c0 * h0  prod p1 = a1 * c1 * h1
  sum root = 0.3 p0 + 0.7 p1 }"""

Parts = tuple[dict[str, Any], dict[str, np.ndarray]]


def _parts(path: Path) -> Parts:
    from safetensors.numpy import load

    raw = path.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    return json.loads(header["__metadata__"]["pcdsl"]), dict(load(raw))


def _write(path: Path, meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save

    path.write_bytes(save(tensors, metadata={"pcdsl": json.dumps(meta)}))
    return path


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    graph = pcdsl.check_text(MIXED).circuit("m")
    return save_model(tmp_path / "mixed.safetensors", graph, initialise(graph))


@pytest.fixture
def tied(tmp_path: Path) -> Path:
    graph = pcdsl.load(EXAMPLES / "groups.pc")
    return save_model(tmp_path / "groups.safetensors", graph, initialise(graph))


def _node(meta: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in meta["nodes"] if n["name"] == name)


def _set(key: str, value: Any) -> Callable[[Parts], None]:
    def mutate(parts: Parts) -> None:
        parts[1][key] = np.array(value)
    return mutate


def _header(node: str, field: str, value: Any) -> Callable[[Parts], None]:
    def mutate(parts: Parts) -> None:
        _node(parts[0], node)[field] = value
    return mutate


def _drop(key: str) -> Callable[[Parts], None]:
    return lambda parts: parts[1].pop(key) and None


def _unsmooth(parts: Parts) -> None:
    _node(parts[0], "root")["children"] = ["p0", "p1", "h1"]  # h1 covers {h} only
    parts[1]["weights/root"] = np.array([[0.3, 0.4, 0.3]])


def _swap_first_nodes(parts: Parts) -> None:
    nodes = parts[0]["nodes"]
    nodes.insert(0, nodes.pop(nodes.index(_node(parts[0], "p0"))))


MIXED_CASES: dict[str, tuple[Callable[[Parts], None], str]] = {
    "weights adding to 1.8": (_set("weights/root", [[0.9, 0.9]]), "tensor 'weights/root': row 0 adds up to 1.8"),
    "a NaN weight": (_set("weights/root", [[np.nan, 0.7]]), "tensor 'weights/root': nan at (0, 0)"),
    "a negative weight": (_set("weights/root", [[-0.2, 1.2]]), "probabilities and weights lie in [0, 1]"),
    "Bernoulli p = 1.7": (_set("input/a0/p", [1.7]), "tensor 'input/a0/p': 1.7 at (0,)"),
    "categorical row adding to 0.9": (_set("input/c0/probs", [[0.1, 0.2, 0.6]]), "'input/c0/probs': row 0 adds up"),
    "std 0": (_set("input/h0/std", [0.0]), "tensor 'input/h0/std': std 0.0 at row 0: must lie in [1e-150, 1e+150]"),
    "infinite mean": (_set("input/h1/mean", [np.inf]), "tensor 'input/h1/mean': inf"),
    "indicator outside its domain": (_set("input/c1/value", np.array([5])), "indicator value 5 at row 0 is outside"),
    "a wrongly shaped block": (_set("weights/root", [[0.3, 0.3, 0.4]]), "is float64 (1, 3); the structure implies "
                               "float64 (1, 2)"),
    "float32 weights": (_set("weights/root", np.array([[0.3, 0.7]], dtype=np.float32)), "implies float64"),
    "a missing tensor": (_drop("input/h0/std"), "tensor 'input/h0/std' is missing"),
    "an extra tensor": (_set("input/zz/p", [0.5]), "tensor 'input/zz/p' belongs to no node"),
    "a non-decomposable product": (_header("p0", "children", ["a0", "a1", "c0", "h0"]), "not decomposable"),
    "a sum that is not smooth": (_unsmooth, "invalid structure: sum node 'root' is not smooth"),
    "a huge unit count": (_header("root", "units", 10**12), "node 'root' (nodes[8]): 'units' must be"),
    "a NaN unit count": (_header("root", "units", float("nan")), "'units' must be"),
    "a child declared after its parent": (_swap_first_nodes, "child 'a0' is not declared before it"),
    "an unknown kind": (_header("p0", "kind", "mystery"), "'kind' must be input, product or sum"),
    "a variable out of range": (_header("h0", "var", 7), "'var' must be a variable index"),
    "a family that does not fit": (_header("a0", "family", "gaussian"), "family 'gaussian' does not fit"),
    "a product of the wrong size": (_header("p0", "units", 3), "has 1 units, not 3"),
    "fixed that is not a boolean": (_header("root", "fixed", "yes"), "'fixed' must be true or false"),
}


@pytest.mark.parametrize("case", sorted(MIXED_CASES))
def test_each_defect_is_one_located_refusal(case: str, mixed: Path) -> None:
    mutate, expected = MIXED_CASES[case]
    parts = _parts(mixed)
    mutate(parts)
    bad = _write(mixed.with_name("bad.safetensors"), *parts)
    with pytest.raises(ModelFileError) as info:
        load_model(bad)
    message = str(info.value)
    assert message.startswith(f"{bad}: ") and "\n" not in message
    assert expected in message, message


TIE_CASES: dict[str, tuple[Callable[[Parts], None], str]] = {
    "a tie to a leaf": (_header("bottom_mix", "tie", "leaf_a"), "'tie' names 'leaf_a', which is not another sum"),
    "a tie to itself": (_header("bottom_mix", "tie", "bottom_mix"), "not another sum"),
    "a tie of the wrong shape": (_header("bottom_mix", "tie", "root"), "weights would have shape (4, 4), not (1, 16)"),
}


@pytest.mark.parametrize("case", sorted(TIE_CASES))
def test_ties_in_model_files_are_checked(case: str, tied: Path) -> None:
    meta, tensors = _parts(tied)
    assert _node(meta, "bottom_mix")["tie"] == "top_mix"
    mutate, expected = TIE_CASES[case]
    mutate((meta, tensors))
    bad = _write(tied.with_name("bad.safetensors"), meta, tensors)
    with pytest.raises(ModelFileError, match="bottom_mix") as info:
        load_model(bad)
    assert expected in str(info.value)


def test_files_that_are_not_models_or_too_large_are_refused(mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    junk = mixed.with_name("junk.safetensors")
    for data, expected in ((b"not a model", "not a pcdsl model file"),
                           ((10**12).to_bytes(8, "little") + b"{}", "a header of 1000000000000 bytes"),
                           (b"", "too short")):
        junk.write_bytes(data)
        with pytest.raises(ModelFileError, match=expected):
            load_model(junk)
    meta, tensors = _parts(mixed)
    with pytest.raises(ModelFileError, match="unsupported format 'pcdsl-model' version 2"):
        load_model(_write(junk, {**meta, "version": 2}, tensors))
    with pytest.raises(ModelFileError, match="unknown colour space 'hsv'"):
        load_model(_write(junk, {**meta, "colour": "hsv"}, tensors))
    assert load_model(_write(junk, {**meta, "colour": "ycbcr"}, tensors))[0].colour == "ycbcr"
    monkeypatch.setattr(checks, "MAX_MODEL_BYTES", 100)
    with pytest.raises(ModelFileError, match="a model file is at most 100"):
        load_model(mixed)


def test_renormalising_is_asked_for_and_warned_about(mixed: Path) -> None:
    meta, tensors = _parts(mixed)
    tensors["weights/root"] = np.array([[0.3, 0.6]])
    bad = _write(mixed.with_name("off.safetensors"), meta, tensors)
    with pytest.raises(ModelFileError, match="load with renormalise"):
        load_model(bad)
    with pytest.warns(checks.ModelFileWarning, match="renormalised 1 rows"):
        _, params = load_model(bad, renormalise=True)
    np.testing.assert_allclose(params.weights["root"], [[1 / 3, 2 / 3]])
    tensors["weights/root"] = np.array([[0.0, 0.0]])
    with pytest.raises(ModelFileError, match="an all-zero row cannot be renormalised"):
        load_model(_write(bad, meta, tensors), renormalise=True)


def test_the_cli_refuses_a_bad_model_with_exit_1_and_one_message(mixed: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "rows.csv"
    data.write_text("1,2,0.5\n0,0,-1.0\n")
    assert main(["eval", str(mixed), "--data", str(data), "--dtype", "float64"]) == 0
    capsys.readouterr()
    meta, tensors = _parts(mixed)
    tensors["weights/root"] = np.array([[0.9, 0.9]])
    bad = _write(tmp_path / "bad.safetensors", meta, tensors)
    assert main(["eval", str(bad), "--data", str(data)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "nan" not in err
    assert err.startswith(f"pcdsl eval: {bad}: tensor 'weights/root': row 0 adds up to 1.8")
    assert main(["eval", str(bad), "--data", str(data), "--renormalise"]) == 0
    assert "warning" in capsys.readouterr().err


def test_the_cli_refuses_data_that_does_not_fit(mixed: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    for text, expected in (("1,3,0.5\n", "row 1, column 2 ('c'): 3 is not one of 0..2"),
                           ("1,2,inf\n", "column 3 ('h'): inf is not a number of magnitude at most 1e+150"),
                           ("1,2\n", "has 2 columns, but the circuit has 3 variables")):
        data = tmp_path / "rows.csv"
        data.write_text(text)
        assert main(["eval", str(mixed), "--data", str(data)]) == 1
        assert expected in capsys.readouterr().err
