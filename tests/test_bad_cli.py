"""Bad command lines, one case each, named after the mistake: every one ends in exit 1 (the input
is wrong) or 2 (the command line is), with a message that names the problem, never in an
internal error (exit 3) or a traceback. A hypothesis test throws values at the numeric options."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pcdsl
from pcdsl.cli import main
from pcdsl.io.model import save_model
from pcdsl.params import initialise

from conftest import EXAMPLES


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Paths the cases refer to as {name}: good inputs and every kind of wrong one."""
    root = tmp_path_factory.mktemp("cli")
    graph = pcdsl.load(EXAMPLES / "tiny.pc")
    texts = {"data.csv": "0,1,2\n1,0,1\n0,0,-1\n", "two_rows.csv": "0,1,-1\n1,-1,2\n", "one_row.csv": "0,-1,-1\n",
             "out_of_domain.csv": "0,1,5\n", "fraction.csv": "0,1,1.5\n", "two_columns.csv": "0,1\n1,0\n",
             "ragged.csv": "0,1,2\n1,0\n", "words.csv": "a,b,c\n", "empty.csv": "", "infinite.csv": "0.5,inf,1\n",
             "text.safetensors": "this is not a model\n", "recipe.pc": "recipe r {\n  data = debd(\"nltcs\")\n"
             "  model = hclt(over = data, hidden = 2)\n  train { em(epochs = 1) }\n}\n"}
    for name, text in texts.items():
        (root / name).write_text(text)
    np.save(root / "empty.npy", np.zeros((0, 3)))
    save_model(root / "model.safetensors", graph, initialise(graph, 1))
    other = pcdsl.load(EXAMPLES / "gaussians.pc")
    save_model(root / "other.safetensors", other, initialise(other, 1))
    return {"tiny": str(EXAMPLES / "tiny.pc"), "gaussians": str(EXAMPLES / "gaussians.pc"),
            "pd": str(EXAMPLES / "pd_fashion.pc"), "model": str(root / "model.safetensors"),
            "other": str(root / "other.safetensors"), "out": str(root / "out"),
            **{name.replace(".", "_"): str(root / name) for name in [*texts, "empty.npy"]}}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        status = main(argv)
    except SystemExit as stop:  # argparse's usage errors
        status = int(stop.code) if isinstance(stop.code, int) else 2
    captured = capsys.readouterr()
    assert "internal error" not in captured.err and "Traceback" not in captured.err, captured.err
    return status, captured.err + captured.out


def case(name: str, command: str, status: int, message: str) -> object:
    return pytest.param(command, status, message, id=name)


EVAL = "eval {tiny} --data {data_csv}"
TRAIN = "train {tiny} --data {data_csv} -q --epochs 1 --full-epochs 1 -o {out}.safetensors"
CASES = [
    # ---- eval ----
    case("eval_batch_negative", EVAL + " --batch -5", 2, "argument --batch: must be at least 1, found -5"),
    case("eval_batch_zero", EVAL + " --batch 0", 2, "argument --batch: must be at least 1, found 0"),
    case("eval_batch_not_a_number", EVAL + " --batch ten", 2, "--batch: must be a whole number, found 'ten'"),
    case("eval_batch_fraction", EVAL + " --batch 2.5", 2, "--batch: must be a whole number, found '2.5'"),
    case("eval_without_data", "eval {tiny}", 2, "the following arguments are required: --data"),
    case("eval_data_file_missing", "eval {tiny} --data nowhere.csv", 1, "no such file: 'nowhere.csv'"),
    case("eval_data_value_out_of_domain", "eval {tiny} --data {out_of_domain_csv}", 1,
         "row 1, column 3 ('c'): 5 is not one of 0..2"),
    case("eval_data_fraction_for_discrete", "eval {tiny} --data {fraction_csv}", 1,
         "row 1, column 3 ('c'): 1.5 is not one of 0..2"),
    case("eval_data_wrong_number_of_columns", "eval {tiny} --data {two_columns_csv}", 1,
         "has 2 columns, but the circuit has 3 variables"),
    case("eval_data_ragged_rows", "eval {tiny} --data {ragged_csv}", 1, "rows have different numbers of values"),
    case("eval_data_not_numbers", "eval {tiny} --data {words_csv}", 1, "expected comma-separated numbers"),
    case("eval_data_empty_text", "eval {tiny} --data {empty_csv}", 1, "holds no samples"),
    case("eval_data_empty_npy", "eval {tiny} --data {empty_npy}", 1, "holds no samples"),
    case("eval_data_infinite_real", "eval {gaussians} --data {infinite_csv}", 1, "inf is not a number of magnitude"),
    case("eval_data_is_pc_source", "eval {tiny} --data {tiny}", 2, "--data '{tiny}' is .pc source, not data"),
    case("eval_data_is_a_model_file", "eval {tiny} --data {model}", 2, "is a model file, not data"),
    case("eval_unknown_backend", EVAL + " --backend jax", 2, "unknown backend 'jax' (known: numba, torch)"),
    case("eval_backend_typo", EVAL + " --backend nunba", 2, "did you mean 'numba'?"),
    case("eval_device_not_a_device", EVAL + " --device gpu0", 2, "device 'gpu0' is not a torch device"),
    case("eval_numba_on_a_gpu", EVAL + " --backend numba --device cuda", 2,
         "device 'cuda' is not available to the numba backend"),
    case("eval_dtype_half", EVAL + " --dtype float16", 2, "argument --dtype: invalid choice: 'float16'"),
    case("eval_seed_negative", EVAL + " --seed -1", 2, "argument --seed: must be between 0 and"),
    case("eval_seed_beyond_64_bits", EVAL + f" --seed {2**64}", 2, "argument --seed: must be between 0 and"),
    case("eval_unknown_circuit", EVAL + " --circuit tinny", 2, "no circuit 'tinny'"),
    case("eval_circuit_not_in_model_file", "eval {model} --data {data_csv} --circuit other", 2,
         "the model file '{model}' holds circuit 'tiny'"),
    case("eval_circuit_file_missing", "eval nowhere.pc --data {data_csv}", 1, "file 'nowhere.pc' does not exist"),
    case("eval_data_file_as_circuit", "eval {data_csv} --data {data_csv}", 2, "is a data file; FILE is a .pc file"),
    case("eval_output_unknown_format", EVAL + " --per-row -o {out}.xlsx", 2, "unknown output format '.xlsx'"),
    case("eval_text_named_safetensors", "eval {text_safetensors} --data {data_csv}", 2,
         "is text (.pc source?), not a model file"),
    case("eval_model_of_other_variables", "eval {other} --data {data_csv}", 1,
         "'{data_csv}', row 1, column 3 ('z'): 2 is not one of 0..1"),
    # ---- sample ----
    case("sample_count_negative", "sample {tiny} -n -3", 2, "argument -n: must be at least 0, found -3"),
    case("sample_count_fraction", "sample {tiny} -n 2.5", 2, "argument -n: must be a whole number"),
    case("sample_scale_zero", "sample {tiny} --scale 0", 2, "argument --scale: must be between 1 and 64"),
    case("sample_scale_huge", "sample {tiny} --scale 1000", 2, "argument --scale: must be between 1 and 64"),
    case("sample_evidence_rows_do_not_match_count", "sample {tiny} --evidence {two_rows_csv} -n 3", 1,
         "evidence has 2 rows, but n = 3"),
    case("sample_evidence_out_of_domain", "sample {tiny} --evidence {out_of_domain_csv}", 1,
         "5 is not one of 0..2"),
    case("sample_evidence_is_a_model_file", "sample {tiny} --evidence {model}", 2,
         "--evidence '{model}' is a model file, not data"),
    case("sample_output_unknown_format", "sample {tiny} -o {out}.xlsx", 2, "unknown output format '.xlsx'"),
    case("sample_picture_of_a_circuit_without_an_image", "sample {tiny} -o {out}.png", 2, "-o '{out}.png'"),
    case("sample_colour_unknown", "sample {tiny} --colour lab", 2, "argument --colour: invalid choice: 'lab'"),
    case("sample_more_rows_than_memory", "sample {tiny} -n 1000000000000000", 1,
         "error[E0808]: sampling 1000000000000000 rows needs about"),
    # ---- query ----
    case("query_conditional_unknown_variable", "query {tiny} --data {data_csv} --conditional cc", 2,
         "--conditional names no variable 'cc' (variables: a, b, c)"),
    case("query_conditional_names_nothing", "query {tiny} --data {data_csv} --conditional ,", 2,
         "--conditional ',' names no variable"),
    case("query_map_and_conditional_together", "query {tiny} --data {data_csv} --map --conditional a", 2,
         "not allowed with argument"),
    case("query_without_data", "query {tiny} --map", 2, "the following arguments are required: --data"),
    case("query_batch_zero", "query {tiny} --data {data_csv} --batch 0", 2, "argument --batch: must be at least 1"),
    case("query_output_unknown_format", "query {tiny} --data {data_csv} --map -o {out}.json", 2,
         "unknown output format '.json'"),
    case("query_data_wrong_number_of_columns", "query {tiny} --data {two_columns_csv} --map", 1,
         "has 2 columns, but the circuit has 3 variables"),
    # ---- train ----
    case("train_step_zero", TRAIN + " --step 0", 2, "argument --step: must be a finite number in (0, 1], found 0"),
    case("train_step_above_one", TRAIN + " --step 1.5", 2, "argument --step: must be a finite number in (0, 1]"),
    case("train_final_step_negative", TRAIN + " --final-step -0.1", 2, "argument --final-step: must be a finite"),
    case("train_step_not_a_number", TRAIN + " --step nan", 2, "argument --step: must be a finite number"),
    case("train_pseudocount_negative", TRAIN + " --pseudocount -1", 2, "argument --pseudocount: must be a finite"),
    case("train_pseudocount_infinite", TRAIN + " --pseudocount inf", 2, "argument --pseudocount: must be a finite"),
    case("train_epochs_negative", TRAIN + " --epochs -1", 2, "argument --epochs: must be at least 0"),
    case("train_patience_zero", TRAIN + " --patience 0", 2, "argument --patience: must be at least 1"),
    case("train_batch_zero", TRAIN + " --batch 0", 2, "argument --batch: must be at least 1"),
    case("train_soften_too_large", TRAIN + " --soften 0.7", 2,
         "argument --soften: must be a finite number in [0, 0.5]"),
    case("train_entropy_negative", TRAIN + " --entropy -0.01", 2, "argument --entropy: must be a finite number >= 0"),
    case("train_min_std_zero", TRAIN + " --min-std 0", 2, "argument --min-std: must be a finite number > 0"),
    case("train_gaussian_pseudocount_negative", TRAIN + " --gaussian-pseudocount -2", 2,
         "argument --gaussian-pseudocount: must be a finite number >= 0"),
    case("train_init_is_pc_source", TRAIN + " --init {tiny}", 2, "'{tiny}' is text (.pc source?), not a model file"),
    case("train_init_with_a_model_file", "train {model} --data {data_csv} -q --init {model}", 2,
         "is a model file and brings its own parameters"),
    case("train_init_of_another_structure", TRAIN + " --init {other}", 1, "holds a different circuit structure"),
    case("train_output_not_a_model_file", "train {tiny} --data {data_csv} -q -o {out}.csv", 2,
         "a model file is written as .safetensors"),
    case("train_valid_wrong_number_of_columns", TRAIN + " --valid {two_columns_csv}", 1,
         "has 2 columns, but the circuit has 3 variables"),
    # ---- render ----
    case("render_depth_zero", "render {tiny} -o {out}.dot --depth 0", 2, "argument --depth: must be at least 1"),
    case("render_max_nodes_zero", "render {tiny} -o {out}.dot --max-nodes 0", 2,
         "argument --max-nodes: must be at least 1"),
    case("render_unknown_format", "render {tiny} -o {out}.gif", 2, "unknown picture format 'gif'"),
    case("render_unknown_level", "render {tiny} -o {out}.dot --level nodes", 2, "argument --level: invalid choice"),
    case("render_without_output", "render {tiny}", 2, "the following arguments are required: -o/--output"),
    # ---- compile, run, check, explain ----
    case("compile_unknown_backend", "compile {tiny} --backend jax", 2, "unknown backend 'jax'"),
    case("compile_seed_negative", "compile {tiny} --seed -4", 2, "argument --seed: must be between 0 and"),
    case("run_a_model_file", "run {model}", 2, "is a model file; pcdsl run takes a recipe in a .pc file"),
    case("run_unknown_recipe", "run {recipe_pc} --recipe rr", 2, "no recipe 'rr'"),
    case("run_unknown_backend", "run {recipe_pc} --backend jax", 2, "argument --backend: invalid choice: 'jax'"),
    case("check_missing_file", "check nowhere.pc", 1, "file 'nowhere.pc' does not exist"),
    case("check_text_named_safetensors", "check {text_safetensors}", 1, "not a pcdsl model file"),
    case("check_without_files", "check", 2, "the following arguments are required: FILE"),
    case("explain_unknown_code", "explain E9999", 2, "unknown code 'E9999'"),
    case("explain_without_a_code", "explain", 2, "give a code"),
    case("unknown_command", "frobnicate x", 2, "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize(("command", "status", "message"), CASES)
def test_bad_command_line(command: str, status: int, message: str, files: dict[str, str],
                          capsys: pytest.CaptureFixture[str]) -> None:
    argv = [part.format(**files) for part in command.split()]
    got, text = run(argv, capsys)
    assert got == status, text
    assert message.format(**files) in text


def test_there_are_at_least_sixty_bad_command_lines() -> None:
    assert len(CASES) >= 60


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


# ---- hypothesis: any value for any numeric option --------------------------------------------
NUMERIC = [  # (command, option); every command runs on the tiny circuit and small files
    ("eval {tiny} --data {data_csv}", "--batch"), ("eval {tiny} --data {data_csv}", "--seed"),
    ("sample {tiny} -n 2", "--seed"), ("sample {tiny}", "-n"), ("sample {tiny} -n 2", "--scale"),
    ("query {tiny} --data {data_csv} --map", "--batch"), ("render {tiny} -o {out}.dot", "--depth"),
    ("render {tiny} -o {out}.dot", "--max-nodes"), ("compile {tiny}", "--seed"),
    *[(TRAIN.replace(" --epochs 1 --full-epochs 1", " --epochs 1 --full-epochs 0"), option)
      for option in ("--step", "--final-step", "--pseudocount", "--patience", "--batch", "--soften", "--entropy",
                     "--min-std", "--gaussian-pseudocount", "--seed")],
    (TRAIN.replace(" --epochs 1", ""), "--epochs"), (TRAIN.replace(" --full-epochs 1", ""), "--full-epochs"),
]
_EXPENSIVE = {"--epochs", "--full-epochs", "-n"}  # large valid values cost time: kept small (-n: or huge)
VALUES = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "-", "1e3", "0x10", "1_000", "nan", "-inf", "1/2", "٣", "None", "--batch"]),
    st.text(max_size=8),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(NUMERIC), value=VALUES)
def test_numeric_options_never_end_in_an_internal_error(which: tuple[str, str], value: str,
                                                        files: dict[str, str],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    command, option = which
    count = _whole(value)
    if option in _EXPENSIVE and count is not None and count > 50 and (option != "-n" or count < 10**13):
        value = "3"  # a valid count that runs quickly; a huge sample count must be refused, not run
    argv = [part.format(**files) for part in command.split()] + [f"{option}={value}"]
    status, text = run(argv, capsys)
    assert status in (0, 1, 2), text


def _whole(text: str) -> int | None:
    try:
        return int(text.strip().replace("_", ""), 10)
    except ValueError:
        return None
