"""Bad Python calls, one case each, named after the mistake: each raises pcdsl.PcdslError (an
InvalidArgument is also a ValueError) with a message that names the argument and what it takes,
and both backends raise the same error with the same message for the same call."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pcdsl
from pcdsl.arguments import InvalidArgument
from pcdsl.io.model import save_model
from pcdsl.params import initialise

from conftest import EXAMPLES

BACKENDS = ["torch", "numba"]
MIXED = """circuit m {
  var a : bool
  var c : categorical(3)
  var r : real
  leaf la = bernoulli(a, p = 0.3)
  leaf lc = categorical(c, [0.2, 0.3, 0.5])
  leaf lr = gaussian(r, mean = 0.5, std = 2.0)
  prod root = la * lc * lr
}"""


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    graph = pcdsl.check_text(MIXED).circuit("m")
    return {b: pcdsl.compile(graph, b, dtype="float64") for b in BACKENDS}


def case(name: str, call: Callable[[Any], object], code: str, message: str) -> object:
    return pytest.param(call, code, message, id=name)


ROW = np.array([[0, 1, 0.5]])
QUERIES = [
    # ---- evidence ----
    case("log_prob_fraction_for_a_discrete_variable", lambda m: m.log_prob(np.array([[0, 1.5, 0.0]])), "E0803",
         "x[0, 1] (variable 'c') is 1.5, not a whole number; a discrete variable takes 0..2, or -1 for a missing"),
    case("log_prob_category_beyond_the_domain", lambda m: m.log_prob(np.array([[0, 3, 0.0]])), "E0804",
         "x[0, 1] (variable 'c') is 3, outside its domain 0..2"),
    case("log_prob_negative_category", lambda m: m.log_prob(np.array([[-2, 1, 0.0]])), "E0804",
         "x[0, 0] (variable 'a') is -2, outside its domain 0..1"),
    case("log_prob_infinite_real", lambda m: m.log_prob(np.array([[0, 1, np.inf]])), "E0804",
         "x[0, 2] (variable 'r') is inf; a real value must be finite"),
    case("log_prob_real_beyond_the_float_range", lambda m: m.log_prob(np.array([[0, 1, 1e200]])), "E0804",
         "of magnitude at most 1e+150"),
    case("log_prob_too_few_columns", lambda m: m.log_prob(np.zeros((2, 2))), "E0805",
         "x must have shape (batch, 3) (one column per variable) or (3,) for one row, found (2, 2)"),
    case("log_prob_one_row_of_the_wrong_length", lambda m: m.log_prob(np.zeros(4)), "E0805", "found (4,)"),
    case("log_prob_three_dimensional_batch", lambda m: m.log_prob(np.zeros((2, 3, 1))), "E0805",
         "found (2, 3, 1)"),
    case("log_prob_of_a_string", lambda m: m.log_prob("0,1,0.5"), "E0801",
         "x must be an array of numbers (batch, 3), found '0,1,0.5' (str)"),
    case("log_prob_of_none", lambda m: m.log_prob(None), "E0801", "found None (NoneType)"),
    case("log_prob_of_strings_in_an_array", lambda m: m.log_prob(np.array([["0", "1", "2"]])), "E0801",
         "x must hold numbers, found values of type <U1"),
    case("log_prob_of_objects", lambda m: m.log_prob(np.array([[{}, 1, 2]], dtype=object)), "E0801",
         "x must hold numbers, found values of type object"),
    case("log_prob_of_ragged_rows", lambda m: m.log_prob([[0, 1, 0.5], [0, 1]]), "E0805",
         "x must be a (batch, 3) array"),
    case("log_prob_of_complex_numbers", lambda m: m.log_prob(np.array([[0, 1, 1j]])), "E0801",
         "found values of type complex128"),
    case("log_prob_tensor_with_a_fraction", lambda m: m.log_prob(_tensor([[0.0, 0.5, 0.0]])), "E0803",
         "x[0, 1] (variable 'c') is 0.5, not a whole number"),
    case("log_prob_complex_tensor", lambda m: m.log_prob(_tensor([[0, 1, 1j]])), "E0801",
         "x must hold numbers, found a tensor of torch.complex"),
    # ---- queries ----
    case("conditional_on_an_unknown_variable", lambda m: m.conditional(ROW, ["d"]), "E0806",
         "query names no variable 'd' (variables: a, c, r)"),
    case("conditional_on_a_misspelt_variable", lambda m: m.conditional(ROW, "rr"), "E0806", "did you mean 'r'?"),
    case("conditional_index_beyond_the_variables", lambda m: m.conditional(ROW, [3]), "E0802",
         "query index 3 is outside 0..2 (the circuit has 3 variables)"),
    case("conditional_negative_index", lambda m: m.conditional(ROW, [-1]), "E0802", "query index -1 is outside 0..2"),
    case("conditional_mask_of_the_wrong_length", lambda m: m.conditional(ROW, np.array([True, False])), "E0805",
         "a boolean query mask must have one entry per variable, shape (3,), found (2,)"),
    case("conditional_fractional_indices", lambda m: m.conditional(ROW, [0.5]), "E0801",
         "query must be variable names, integer indices or a boolean mask, found values of type float64"),
    case("conditional_bad_evidence", lambda m: m.conditional(np.array([[2, 0, 0.0]]), [0]), "E0804",
         "x[0, 0] (variable 'a') is 2, outside its domain 0..1"),
    case("map_fraction_for_a_discrete_variable", lambda m: m.map(np.array([[0.5, -1, np.nan]])), "E0803",
         "x[0, 0] (variable 'a') is 0.5, not a whole number"),
    case("map_wrong_number_of_columns", lambda m: m.map(np.zeros((1, 5))), "E0805", "found (1, 5)"),
    case("flows_fraction_for_a_discrete_variable", lambda m: m.flows(np.array([[0, 2.5, 0.0]])), "E0803",
         "x[0, 1] (variable 'c') is 2.5, not a whole number"),
    case("flows_wrong_number_of_columns", lambda m: m.flows(np.zeros((3, 1))), "E0805", "found (3, 1)"),
    # ---- sampling ----
    case("sample_negative_count", lambda m: m.sample(-3), "E0802", "n must be at least 0, found -3"),
    case("sample_fractional_count", lambda m: m.sample(2.5), "E0801", "n must be a whole number, found 2.5 (float)"),
    case("sample_count_of_true", lambda m: m.sample(True), "E0801", "n must be a whole number, found True (bool)"),
    case("sample_count_as_text", lambda m: m.sample("10"), "E0801", "n must be a whole number, found '10' (str)"),
    case("sample_count_of_none", lambda m: m.sample(None), "E0801", "n must be a whole number, found None"),
    case("sample_negative_seed", lambda m: m.sample(2, seed=-1), "E0802", "seed must be 0..9223372036854775807"),
    case("sample_fractional_seed", lambda m: m.sample(2, seed=0.5), "E0801", "seed must be a whole number"),
    case("sample_seed_beyond_63_bits", lambda m: m.sample(2, seed=2**64), "E0802", "found 18446744073709551616"),
    case("sample_evidence_rows_do_not_match_the_count", lambda m: m.sample(3, evidence=np.full((2, 3), np.nan)),
         "E0805", "evidence has 2 rows, but n = 3: give one row (n samples from it) or n rows (one sample each)"),
    case("sample_evidence_out_of_the_domain", lambda m: m.sample(1, evidence=np.array([[0, 7, np.nan]])), "E0804",
         "evidence[0, 1] (variable 'c') is 7, outside its domain 0..2"),
    case("sample_evidence_of_the_wrong_width", lambda m: m.sample(1, evidence=np.zeros((1, 2))), "E0805",
         "evidence must have shape (batch, 3)"),
    case("sample_more_rows_than_memory_holds", lambda m: m.sample(10**15), "E0808",
         "sampling 1000000000000000 rows needs about"),
]


def _tensor(rows: list[list[Any]]) -> Any:
    torch = pytest.importorskip("torch")
    return torch.tensor(rows)


@pytest.mark.parametrize(("call", "code", "message"), QUERIES)
def test_bad_query_gives_the_same_error_on_every_backend(call: Callable[[Any], object], code: str, message: str,
                                                         models: dict[str, Any]) -> None:
    errors = {}
    for backend, model in models.items():
        with pytest.raises(InvalidArgument) as info:
            call(model)
        assert isinstance(info.value, pcdsl.PcdslError) and isinstance(info.value, ValueError)
        assert info.value.code == code, (backend, info.value)
        assert message in str(info.value), (backend, str(info.value))
        errors[backend] = (type(info.value), str(info.value))
    assert errors["torch"] == errors["numba"]


# ---- the façade: loading, compiling, evaluating ----------------------------------------------
@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    graph = pcdsl.load(EXAMPLES / "tiny.pc")
    return save_model(tmp_path_factory.mktemp("py") / "tiny.safetensors", graph, initialise(graph))


def _graph() -> pcdsl.CircuitGraph:
    return pcdsl.load(EXAMPLES / "tiny.pc")


def _no_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pcdsl.arguments.available_memory", lambda device="cpu": 1000)


FACADE = [
    case("compile_with_an_unknown_backend", lambda f: pcdsl.compile(_graph(), "jax"), "E0806",
         "unknown backend 'jax' (known: numba, torch)"),
    case("compile_with_a_misspelt_backend", lambda f: pcdsl.compile(_graph(), "troch"), "E0806",
         "did you mean 'torch'?"),
    case("compile_with_a_backend_that_is_not_a_name", lambda f: pcdsl.compile(_graph(), 3), "E0806",
         "unknown backend 3 (int)"),
    case("compile_a_path_instead_of_a_graph", lambda f: pcdsl.compile(str(EXAMPLES / "tiny.pc")), "E0801",
         "pcdsl.compile takes a CircuitGraph (from pcdsl.load or pcdsl.load_model), found str"),
    case("compile_with_half_precision", lambda f: pcdsl.compile(_graph(), dtype="float16"), "E0807",
         "dtype 'float16' is not available (available: float32, float64)"),
    case("compile_for_a_device_that_is_not_one", lambda f: pcdsl.compile(_graph(), device="gpu0"), "E0807",
         "device 'gpu0' is not a torch device"),
    case("compile_numba_for_a_gpu", lambda f: pcdsl.compile(_graph(), "numba", device="cuda"), "E0807",
         "device 'cuda' is not available to the numba backend, which runs on the CPU only"),
    case("compile_with_a_negative_seed", lambda f: pcdsl.compile(_graph(), seed=-5), "E0802",
         "seed must be 0..9223372036854775807, found -5"),
    case("compile_with_parameters_of_the_wrong_type", lambda f: pcdsl.compile(_graph(), params={"w": 1}), "E0801",
         "params must be pcdsl Parameters (from pcdsl.load_model or training), found dict"),
    case("load_a_model_file_as_source", lambda f: pcdsl.load(f), "E0809",
         "is a pcdsl model file, not .pc source; pcdsl.load_model(path) reads it"),
    case("check_a_model_file_as_source", lambda f: pcdsl.check(f), "E0809", "is a pcdsl model file, not .pc source"),
    case("load_model_of_pc_source", lambda f: pcdsl.load_model(EXAMPLES / "tiny.pc"), "E0809",
         "is text, not a pcdsl model file (.pc source?); pcdsl.load(path) reads .pc source"),
    case("load_a_misspelt_circuit", lambda f: pcdsl.load(EXAMPLES / "tiny.pc", "tinny"), "E0806",
         "no circuit 'tinny'"),
    case("load_a_number_instead_of_a_path", lambda f: pcdsl.load(42), "E0801",  # type: ignore[arg-type]
         "pcdsl.load takes a path (str or pathlib.Path), found int"),
    case("load_model_of_a_number", lambda f: pcdsl.load_model(7), "E0801",  # type: ignore[arg-type]
         "pcdsl.load_model takes a path (str or pathlib.Path), found int"),
    case("evaluate_with_a_batch_of_zero", lambda f: _evaluate(np.zeros((2, 3)), 0), "E0802",
         "batch_size must be at least 1, found 0"),
    case("evaluate_data_outside_the_domain", lambda f: _evaluate(np.full((2, 3), 4.0), 10), "E0804",
         "data[0, 0] (variable 'a') is 4, outside its domain 0..1"),
]


def _evaluate(data: np.ndarray, batch: int) -> object:
    from pcdsl.evaluate import evaluate

    return evaluate(pcdsl.compile(_graph(), "numba"), data, batch)


@pytest.mark.parametrize(("call", "code", "message"), FACADE)
def test_bad_call(call: Callable[[Path], object], code: str, message: str, model_file: Path) -> None:
    with pytest.raises(InvalidArgument) as info:
        call(model_file)
    assert info.value.code == code, info.value
    assert message in str(info.value)


def test_compiling_a_circuit_too_large_for_memory_says_how_large(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_memory(monkeypatch)
    with pytest.raises(InvalidArgument, match=r"circuit 'tiny' \(11 parameters, 10 units\) needs about .* KiB, "
                                              r"but cpu has 1000 bytes available") as info:
        pcdsl.compile(_graph())
    assert info.value.code == "E0808"


def test_unavailable_cuda_is_named() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InvalidArgument, match=r"device 'cuda:0' is not available: .*\(available: cpu\)"):
        pcdsl.compile(_graph(), device="cuda:0")


def test_there_are_at_least_forty_bad_python_calls() -> None:
    assert len(QUERIES) + len(FACADE) + 2 >= 40


def test_errors_render_with_their_code_and_help() -> None:
    with pytest.raises(InvalidArgument) as info:
        pcdsl.compile(_graph(), "troch")
    assert pcdsl.render_all(info.value.diagnostics) == (
        "error[E0806]: unknown backend 'troch' (known: numba, torch)\n  = help: did you mean 'torch'?")
