"""Circuit files of other tools (.jpc, .psdd + .vtree, .sdd + .vtree, .vtree, gzipped):
round trips to identical log-likelihoods, the PSDD running example, SDD model counts against
brute force, files checked by an independent reader written from the formats' documentation,
deep files, and the commands and API on imported circuits."""

from __future__ import annotations

import gzip
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from circuits import random_circuit
from format_helpers import (
    DocumentedReader,
    SddCompiler,
    check_normalised_psdd,
    jpc_log_likelihood,
    psdd_log_likelihood,
    random_psdd,
    random_vtree_order,
    sdd_truth,
    vtree_file_text,
)

import pcdsl
import pcdsl.codes
from pcdsl import reference
from pcdsl.diagnostics import PcdslError
from pcdsl.io.flat import FormatError, from_graph, to_graph
from pcdsl.io.formats import convert, format_of, read_circuit, write_circuit
from pcdsl.io.jpc import jpc_text, read_jpc
from pcdsl.io.psdd import psdd_text, read_psdd
from pcdsl.io.vtree_file import read_vtree, vtree_text
from pcdsl.ir.graph import CircuitGraph
from pcdsl.params import Parameters

TOL = 1e-12  # float64 round trips
RUNNING_EXAMPLE = """c the PSDD running example: P(A) = 0.7, P(B | A) = 0.9, P(B | not A) = 0.2
psdd 5
L 0 0 1
L 1 0 -1
T 2 2 2 -0.10536051565782628
T 3 2 2 -1.6094379124341003
D 4 1 2 0 2 -0.35667494393873245 1 3 -1.2039728043259361
"""
AB_VTREE = "vtree 3\nL 0 1\nL 2 2\nI 1 0 2\n"


def data(graph: CircuitGraph, seed: int, rows: int = 40) -> np.ndarray:
    """Random rows over the circuit's variables, a fifth of the values missing."""
    rng = np.random.default_rng(seed)
    columns = []
    for v in graph.variables:
        column = rng.integers(0, v.domain.size, rows).astype(float) if v.domain.is_discrete else rng.normal(size=rows)
        missing = rng.random(rows) < 0.2
        column[missing] = -1 if v.domain.is_discrete else np.nan
        columns.append(column)
    return np.stack(columns, axis=1)


def same_ll(a: np.ndarray, b: np.ndarray) -> None:
    assert np.array_equal(np.isneginf(a), np.isneginf(b))
    finite = np.isfinite(a)
    assert np.max(np.abs(a[finite] - b[finite]), initial=0.0) <= TOL


def ll(graph: CircuitGraph, params: Parameters, x: np.ndarray) -> np.ndarray:
    return reference.log_prob(graph, params, x)


# ---- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("suffix", ["jpc", "jpc.gz"])
def test_jpc_round_trip_keeps_log_likelihoods(seed: int, suffix: str, tmp_path: Path) -> None:
    graph, params = random_circuit(seed, num_vars=4, real=seed % 3 == 0)  # vector groups, kronecker, all leaves
    x = data(graph, seed)
    path = write_circuit(tmp_path / f"m.{suffix}", graph, params)[0]
    back = read_circuit(path)
    same_ll(ll(graph, params, x), ll(back.graph, back.params, x))
    assert [v.name for v in back.graph.variables] == [v.name for v in graph.variables]  # kept by the comments
    again = write_circuit(tmp_path / f"again.{suffix}", back.graph, back.params)[0]
    if suffix == "jpc":  # a second trip writes the same file, up to the last digit of exp(log(w))
        assert_same_numbers(again.read_text(), path.read_text())


def assert_same_numbers(a: str, b: str) -> None:
    """Two texts with equal words, numbers equal to 1e-14 (relative)."""
    words_a, words_b = a.split(), b.split()
    assert len(words_a) == len(words_b)
    for x, y in zip(words_a, words_b, strict=True):
        if x != y:
            assert float(x) == pytest.approx(float(y), rel=1e-14), (x, y)


@pytest.mark.parametrize("seed", range(8))
def test_psdd_round_trip_keeps_log_likelihoods_and_vtree(seed: int, tmp_path: Path) -> None:
    graph, params = random_psdd(seed, num_vars=int(2 + seed % 5))
    x = data(graph, seed)
    written = write_circuit(tmp_path / "m.psdd", graph, params)
    assert [p.name for p in written] == ["m.psdd", "m.vtree"]
    back = read_circuit(tmp_path / "m.psdd")  # checked against the vtree beside it
    same_ll(ll(graph, params, x), ll(back.graph, back.params, x))
    assert back.vtree is not None and len(back.vtree) == 2 * len(graph.variables) - 1
    write_circuit(tmp_path / "again.psdd", back.graph, back.params, back.vtree)
    assert_same_numbers((tmp_path / "again.psdd").read_text(), (tmp_path / "m.psdd").read_text())
    assert (tmp_path / "again.vtree").read_text() == (tmp_path / "m.vtree").read_text()


@pytest.mark.parametrize("seed", range(6))
def test_native_and_pc_round_trips_through_jpc(seed: int, tmp_path: Path) -> None:
    graph, params = random_circuit(seed, num_vars=3, real=seed % 2 == 0)
    x = data(graph, seed)
    expected = ll(graph, params, x)
    convert_chain = ["a.jpc", "b.safetensors", "c.jpc.gz", "d.pc", "e.safetensors", "f.jpc"]
    write_circuit(tmp_path / convert_chain[0], graph, params)
    for src, dst in itertools.pairwise(convert_chain):
        convert(tmp_path / src, tmp_path / dst)
        g, p = pcdsl.load_model(tmp_path / dst) if not dst.endswith(".pc") else _pc(tmp_path / dst)
        same_ll(expected, ll(g, p, x))


def _pc(path: Path) -> tuple[CircuitGraph, Parameters]:
    from pcdsl.params import initialise

    graph = pcdsl.load(path)
    assert all(n.params is not None or n.kind.value != "input" for n in graph.nodes())  # every parameter written
    return graph, initialise(graph, seed=12345)


def test_psdd_converts_to_jpc_with_vtree_ids(tmp_path: Path) -> None:
    graph, params = random_psdd(3, num_vars=4)
    write_circuit(tmp_path / "m.psdd", graph, params)
    written = convert(tmp_path / "m.psdd", tmp_path / "s.jpc")
    assert [p.name for p in written] == ["s.jpc", "s.vtree"]
    back = read_circuit(tmp_path / "s.jpc")  # its vtree ids are checked against s.vtree
    x = data(graph, 3)
    same_ll(ll(graph, params, x), ll(back.graph, back.params, x))
    assert {int(line.split()[2]) for line in (tmp_path / "s.jpc").read_text().splitlines()
            if line[:1] in "LCPS" and not line.startswith("c")} != {0}


# ---- the running example, binomials, SDDs -----------------------------------------------------------
def test_psdd_running_example_reads_to_its_joint(tmp_path: Path) -> None:
    (tmp_path / "ab.psdd").write_text(RUNNING_EXAMPLE)
    (tmp_path / "ab.vtree").write_text(AB_VTREE)
    imported = read_circuit(tmp_path / "ab.psdd")
    x = np.array([[1, 1], [1, 0], [0, 1], [0, 0], [1, -1], [-1, -1]], dtype=float)
    p = np.exp(ll(imported.graph, imported.params, x))
    assert np.allclose(p, [0.63, 0.07, 0.06, 0.24, 0.7, 1.0], rtol=1e-15, atol=0)
    assert imported.vtree is not None and imported.vtree.text() == "(x[0] x[1])"
    compiled = pcdsl.compile(imported.graph, "torch", dtype="float64")
    assert np.allclose(np.exp(np.asarray(compiled.log_prob(x[:4]))), [0.63, 0.07, 0.06, 0.24], rtol=1e-15, atol=0)


def test_binomial_leaves_read_as_their_probabilities(tmp_path: Path) -> None:
    text = ("jpc 5\nB 0 0 1 3 -1.6094379124341003\nB 1 0 1 3 -0.2231435513142097\nB 2 0 2 1 -0.6931471805599453\n"
            "S 3 0 2 0 -0.35667494393873245 1 -1.2039728043259361\nP 4 0 2 3 2\n")
    (tmp_path / "b.jpc").write_text(text)
    back = read_circuit(tmp_path / "b.jpc")
    assert [v.domain.size for v in back.graph.variables] == [4, 2]
    x = np.array([[k, v] for k in range(4) for v in range(2)], dtype=float)

    def binomial(n: int, p: float, k: int) -> float:
        return math.comb(n, k) * p**k * (1 - p) ** (n - k)

    expected = [(0.7 * binomial(3, 0.2, k) + 0.3 * binomial(3, 0.8, k)) * 0.5 for k, _ in x.astype(int)]
    assert np.allclose(np.exp(ll(back.graph, back.params, x)), expected, rtol=1e-13, atol=0)
    write_circuit(tmp_path / "c.jpc", back.graph, back.params)  # binomials come back as C lines
    assert "\nB " not in (tmp_path / "c.jpc").read_text()
    again = read_circuit(tmp_path / "c.jpc")
    same_ll(ll(back.graph, back.params, x), ll(again.graph, again.params, x))


def _random_sdd(seed: int, tmp_path: Path) -> tuple[Path, np.ndarray, int]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 7))
    tree = random_vtree_order(rng, list(range(n)))
    compiler = SddCompiler(n, tree)
    table = rng.random(2**n) < rng.uniform(0.1, 0.9)
    table[int(rng.integers(2**n))] = True  # satisfiable
    text = compiler.text(compiler.compile(len(tree) - 1, table))
    path = tmp_path / f"r{seed}.sdd"
    path.write_text(text)
    (tmp_path / f"r{seed}.vtree").write_text(vtree_file_text(tree))
    assert [sdd_truth(text, a) for a in itertools.product([0, 1], repeat=n)] == table.tolist()
    return path, table, n


@pytest.mark.parametrize("seed", range(16))
def test_sdd_model_counts_equal_brute_force(seed: int, tmp_path: Path) -> None:
    path, table, n = _random_sdd(seed, tmp_path)
    imported = read_circuit(path)
    assignments = np.array(list(itertools.product([0, 1], repeat=n)), dtype=float)
    assert imported.model_count == int(table.sum())
    model = pcdsl.compile(imported.graph, "torch", dtype="float64")
    # every model has probability 1 / count, every non-model 0
    p = np.exp(np.asarray(model.log_prob(assignments)))
    assert np.allclose(p * imported.model_count, table, atol=1e-9)
    # counts under partial evidence are model_count * p(evidence): a marginal query
    rng = np.random.default_rng(seed)
    for _ in range(5):
        evidence = np.where(rng.random(n) < 0.5, -1.0, rng.integers(0, 2, n).astype(float))
        fits = np.all((evidence < 0) | (assignments == evidence), axis=1)
        count = imported.model_count * np.exp(float(np.asarray(model.log_prob(evidence[None, :]))[0]))
        assert round(count) == int(table[fits].sum()) and abs(count - round(count)) < 1e-9
    assert pcdsl.check(path).properties[imported.graph.name].structured


def test_sdd_with_literal_weights_is_normalised_weighted_counting(tmp_path: Path) -> None:
    path, table, n = _random_sdd(5, tmp_path)
    weights = np.random.default_rng(1).uniform(0.1, 2.0, (n, 2))
    imported = read_circuit(path, weights=weights)
    assignments = np.array(list(itertools.product([0, 1], repeat=n)))
    w = np.prod(weights[np.arange(n), assignments], axis=1) * table
    assert imported.model_count is None and imported.log_weight == pytest.approx(math.log(w.sum()), rel=1e-12)
    assert np.allclose(np.exp(ll(imported.graph, imported.params, assignments.astype(float))), w / w.sum(), rtol=1e-12)


def test_sdd_of_the_docs_counts_three_models(tmp_path: Path) -> None:
    (tmp_path / "or.sdd").write_text("sdd 5\nL 0 0 1\nL 1 2 2\nL 2 0 -1\nT 3\nD 4 1 2 0 3 2 1\n")
    (tmp_path / "or.vtree").write_text(AB_VTREE)
    assert read_circuit(tmp_path / "or.sdd").model_count == 3
    (tmp_path / "none.sdd").write_text("sdd 1\nF 0\n")
    (tmp_path / "none.vtree").write_text(AB_VTREE)
    with pytest.raises(PcdslError) as info:
        read_circuit(tmp_path / "none.sdd")
    assert info.value.diagnostics[0].code == "E0710"


# ---- the independent reader --------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_written_jpc_follows_the_documented_format(seed: int) -> None:
    graph, params = random_circuit(seed, num_vars=4, real=seed % 2 == 1)
    text = jpc_text(from_graph(graph, params))
    reader = DocumentedReader(text, "jpc")
    x = data(graph, seed, rows=12)
    same_ll(ll(graph, params, x), jpc_log_likelihood(reader, x))


@pytest.mark.parametrize("seed", range(6))
def test_written_psdd_follows_the_documented_format(seed: int, tmp_path: Path) -> None:
    graph, params = random_psdd(seed, num_vars=4)
    write_circuit(tmp_path / "m.psdd", graph, params)
    psdd = DocumentedReader((tmp_path / "m.psdd").read_text(), "psdd")
    vtree = DocumentedReader((tmp_path / "m.vtree").read_text(), "vtree")
    check_normalised_psdd(psdd, vtree)
    x = data(graph, seed, rows=12)
    same_ll(ll(graph, params, x), psdd_log_likelihood(psdd, x))


# ---- files of every shape -----------------------------------------------------------------------
def test_a_million_node_chain_reads_without_recursion(tmp_path: Path) -> None:
    depth = 1_000_000
    sums = "\n".join(f"S {i} 0 2 {i - 1} -0.6931471805599453 0 -0.6931471805599453" for i in range(2, depth))
    (tmp_path / "chain.jpc").write_text(f"jpc {depth}\nL 0 0 1\nS 1 0 1 0 0.0\n{sums}\n")
    flat = read_jpc(tmp_path / "chain.jpc")
    assert len(flat) == depth and flat.num_edges() == 2 * depth - 3
    assert flat.node_children(depth - 1).tolist() == [depth - 2, 0]


@pytest.mark.slow
def test_a_million_node_chain_becomes_a_circuit(tmp_path: Path) -> None:
    depth = 1_000_000
    sums = "\n".join(f"S {i} 0 2 {i - 1} -0.6931471805599453 0 -0.6931471805599453" for i in range(2, depth))
    (tmp_path / "chain.jpc").write_text(f"jpc {depth}\nL 0 0 1\nS 1 0 1 0 0.0\n{sums}\n")
    graph = pcdsl.load(tmp_path / "chain.jpc")
    assert len(graph) == depth


def test_a_deep_vtree_reads_and_prints(tmp_path: Path) -> None:
    n = 100_000
    lines = [f"vtree {2 * n - 1}", f"L 0 {n}"]
    top = 0
    for i in range(1, n):
        lines += [f"L {2 * i - 1} {n - i}", f"I {2 * i} {2 * i - 1} {top}"]
        top = 2 * i
    (tmp_path / "deep.vtree").write_text("\n".join(lines) + "\n")
    tree = read_vtree(tmp_path / "deep.vtree").vtree
    assert tree.size(tree.root) == n and tree.text().startswith("(x[0] (x[1] ")
    assert read_vtree_roundtrip(tree, tmp_path)


def read_vtree_roundtrip(tree, tmp_path: Path) -> bool:  # type: ignore[no-untyped-def]
    (tmp_path / "again.vtree.gz").write_bytes(gzip.compress(vtree_text(tree).encode()))
    back = read_vtree(tmp_path / "again.vtree.gz").vtree
    return bool(np.array_equal(back.left, tree.left) and np.array_equal(back.var, tree.var))


def test_loose_whitespace_reads_like_single_spaces(tmp_path: Path) -> None:
    half = "-0.6931471805599453"
    (tmp_path / "a.jpc").write_text(f"c x\njpc 3\nL 0 0 1\nL  1\t0 -1 \r\nS 2 0 2 0 {half}  1 {half}\n")
    flat = read_jpc(tmp_path / "a.jpc")
    assert flat.children.tolist() == [0, 1] and np.allclose(flat.weights, 0.5)


def test_renormalise_accepts_rows_that_do_not_add_up(tmp_path: Path) -> None:
    (tmp_path / "a.jpc").write_text("jpc 3\nL 0 0 1\nL 1 0 -1\nS 2 0 2 0 0.0 1 0.0\n")
    with pytest.raises(PcdslError):
        read_circuit(tmp_path / "a.jpc")
    imported = read_circuit(tmp_path / "a.jpc", renormalise=True)
    assert np.allclose(imported.params.weights["n2"], 0.5)


def test_formats_by_extension() -> None:
    assert [format_of(p) for p in ("a.jpc", "A.JPC.GZ", "b.psdd.gz", "c.sdd", "d.vtree", "e.pc", "f.safetensors",
                                   "g.pc.gz", "h.txt")] == ["jpc", "jpc", "psdd", "sdd", "vtree", "pc", "safetensors",
                                                            None, None]


def test_what_a_psdd_cannot_hold_is_refused(tmp_path: Path) -> None:
    graph, params = random_circuit(2, num_vars=3, real=True)
    with pytest.raises(FormatError):
        write_circuit(tmp_path / "x.psdd", graph, params)
    with pytest.raises(FormatError, match=r"does not write \.sdd"):
        write_circuit(tmp_path / "x.sdd", graph, params)
    assert not (tmp_path / "x.psdd").exists()


def test_unreachable_nodes_are_left_out_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "a.jpc").write_text("jpc 4\nL 0 0 1\nL 1 0 -1\nL 2 0 1\nS 3 0 2 0 -0.6931471805599453 1 "
                                    "-0.6931471805599453\n")
    imported = read_circuit(tmp_path / "a.jpc")
    assert len(imported.graph) == 3 and [w.code for w in imported.warnings] == ["W0701"]


def test_flat_circuits_round_trip_through_graphs() -> None:
    graph, params = random_circuit(4, num_vars=4)
    flat = from_graph(graph, params)
    back, back_params, warnings = to_graph(flat)
    assert not warnings and len(back) == len(flat) == graph.num_units()
    x = data(graph, 4)
    same_ll(ll(graph, params, x), ll(back, back_params, x))


def test_psdd_text_reads_back_to_the_same_text(tmp_path: Path) -> None:
    (tmp_path / "ab.psdd").write_text(RUNNING_EXAMPLE)
    (tmp_path / "ab.vtree").write_text(AB_VTREE)
    vtree = read_vtree(tmp_path / "ab.vtree")
    flat = read_psdd(tmp_path / "ab.psdd", vtree)
    lines = [line for line in psdd_text(flat, vtree.vtree).splitlines() if not line.startswith("c")]
    assert lines == [line for line in RUNNING_EXAMPLE.splitlines() if not line.startswith("c")]


# ---- commands on imported circuits --------------------------------------------------------------
@pytest.fixture
def example_files(tmp_path: Path) -> Path:
    (tmp_path / "ab.psdd").write_text(RUNNING_EXAMPLE)
    (tmp_path / "ab.vtree").write_text(AB_VTREE)
    (tmp_path / "ab.psdd.gz").write_bytes(gzip.compress(RUNNING_EXAMPLE.encode()))
    (tmp_path / "or.sdd").write_text("sdd 5\nL 0 0 1\nL 1 2 2\nL 2 0 -1\nT 3\nD 4 1 2 0 3 2 1\n")
    (tmp_path / "or.vtree").write_text(AB_VTREE)
    (tmp_path / "x.data").write_text("1,1\n1,0\n0,1\n0,0\n")
    return tmp_path


def test_commands_accept_imported_circuits(example_files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pcdsl.cli import main

    d = example_files
    assert main(["check", str(d / "ab.psdd"), str(d / "or.sdd"), str(d / "ab.vtree")]) == 0
    out = capsys.readouterr().out
    assert "ab.psdd: circuit ab: " in out and "vtree (from its .vtree file): (x[0] x[1])" in out
    assert "or.sdd: models: 3" in out and "ab.vtree: vtree over 2 variables" in out
    assert main(["eval", str(d / "ab.psdd.gz"), "--data", str(d / "x.data"), "--dtype", "float64"]) == 0
    expected = np.mean(np.log([0.63, 0.07, 0.06, 0.24]))
    assert f"{expected:.4f}" in capsys.readouterr().out
    assert main(["sample", str(d / "or.sdd"), "-n", "50"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line]
    assert len(rows) == 50 and "0,0" not in rows  # samples are models of A or B
    assert main(["compile", str(d / "ab.psdd"), "--dump-plan"]) == 0
    assert main(["render", str(d / "ab.psdd"), "-o", str(d / "ab.dot")]) == 0
    assert (d / "ab.dot").read_text().startswith("digraph")


def test_circuit_files_where_they_do_not_belong_are_refused(example_files: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from pcdsl.cli import EXIT_USAGE, main

    d = example_files
    assert main(["eval", str(d / "ab.psdd"), "--data", str(d / "ab.psdd.gz")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "error[E0809]: --data " in err and "is a circuit file, not data" in err
    assert main(["run", str(d / "ab.psdd")]) == EXIT_USAGE
    assert "is a circuit file; pcdsl run takes a recipe" in capsys.readouterr().err
    assert main(["train", str(d / "ab.psdd"), "--data", str(d / "x.data"), "--init", str(d / "ab.psdd")]) == EXIT_USAGE
    assert "ab.psdd' is a circuit file and brings its own parameters" in capsys.readouterr().err
    (d / "ab.pc").write_text("circuit ab {\n  var x[2] : bool\n  leaf l0 = bernoulli(x[0])\n"
                             "  leaf l1 = bernoulli(x[1])\n  prod root = l0 * l1\n}\n")
    assert main(["train", str(d / "ab.pc"), "--data", str(d / "x.data"), "--init", str(d / "ab.psdd.gz")]) == 1
    assert "holds a different circuit structure" in capsys.readouterr().err  # read as a circuit, not as text


def test_convert_command_between_formats(example_files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pcdsl.cli import main

    d = example_files
    for target in ("ab.jpc", "ab.safetensors", "ab2.psdd.gz", "ab.pc", "copy.vtree.gz"):
        source = "ab.vtree" if target.endswith("vtree.gz") else "ab.psdd"
        assert main(["convert", str(d / source), "-o", str(d / target)]) == 0, target
    assert (d / "ab2.vtree").exists() and gzip.decompress((d / "ab2.psdd.gz").read_bytes()).startswith(b"c ")
    assert main(["check", str(d / "ab.pc")]) == 0
    assert main(["convert", str(d / "or.sdd"), "-o", str(d / "or.psdd")]) == 0  # uniform over A or B
    imported = read_circuit(d / "or.psdd")
    p = np.exp(ll(imported.graph, imported.params, np.array([[1, 1], [1, 0], [0, 1], [0, 0]], dtype=float)))
    assert np.allclose(p, [1 / 3, 1 / 3, 1 / 3, 0], atol=1e-15)
    assert main(["convert", str(d / "ab.psdd"), "-o", str(d / "only.vtree")]) == 0  # a circuit's vtree alone
    assert read_vtree(d / "only.vtree").vtree.text() == "(x[0] x[1])"
    capsys.readouterr()
    assert main(["convert", str(d / "ab.psdd"), "-o", str(d / "ab.sdd")]) == 1
    assert "does not write .sdd" in capsys.readouterr().err
    (d / "or.vtree").unlink()
    assert main(["check", str(d / "or.sdd")]) == 1
    assert "error[E0712]: " in capsys.readouterr().err
    (d / "empty.jpc").write_text("jpc 0\n")
    assert main(["check", str(d / "empty.jpc")]) == 1
    assert "empty.jpc:1:1: error[E0201]" in capsys.readouterr().err


def test_a_broken_file_is_a_located_diagnostic_not_a_traceback(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from pcdsl.cli import main

    (tmp_path / "bad.jpc").write_text("jpc 3\nL 0 0 1\nL 1 0 -1\nS 2 0 2 0 -0.6931471805599453 7 -0.6931471805599453\n")
    for command in (["check"], ["eval", "--data", str(tmp_path / "x.csv")], ["convert", "-o", str(tmp_path / "o.pc")]):
        assert main([command[0], str(tmp_path / "bad.jpc"), *command[1:]]) == 1
        err = capsys.readouterr().err
        assert f"{tmp_path / 'bad.jpc'}:4:31: error[E0706]: child 7 is not a node of this file" in err
        assert "Traceback" not in err


def test_api_loads_by_extension(example_files: Path) -> None:
    graph = pcdsl.load(example_files / "ab.psdd")
    model = pcdsl.compile(graph, "torch", dtype="float64")  # the file's parameters are on the nodes
    assert np.allclose(np.exp(np.asarray(model.log_prob(np.array([[1.0, 1.0]])))), 0.63)
    g, _ = pcdsl.load_model(example_files / "or.sdd")
    assert len(g.variables) == 2
    assert pcdsl.convert(example_files / "ab.psdd", example_files / "z.jpc") == [example_files / "z.jpc",
                                                                                 example_files / "z.vtree"]


# ---- random damage: a diagnostic or a circuit, never a traceback ----------------------------------
def _damaged(text: str, rng: np.random.Generator) -> str:
    lines = text.split("\n")
    i = int(rng.integers(len(lines)))
    words = lines[i].split(" ")
    j = int(rng.integers(len(words)))
    choice = int(rng.integers(7))
    if choice == 0:
        words[j] = str(int(rng.integers(-3, 12)))  # another id, count, variable or literal
    elif choice == 1:
        words[j] = rng.choice(["x", "1.5", "-inf", "nan", "1e400", "", "0x1", "1_0", "--1"])
    elif choice == 2:
        del words[j]
    elif choice == 3:
        words.insert(j, str(int(rng.integers(0, 9))))
    elif choice == 4:
        k = int(rng.integers(len(lines)))
        lines[i], lines[k] = lines[k], lines[i]
    elif choice == 5:
        return text[: int(rng.integers(max(1, len(text))))]  # cut anywhere
    else:
        words[0] = rng.choice(["L", "I", "C", "B", "G", "P", "S", "T", "D", "F", "c", "Q"])
    if choice != 4:
        lines[i] = " ".join(words)
    return "\n".join(lines)


@pytest.mark.parametrize("kind", ["jpc", "psdd", "sdd", "vtree"])
def test_damaged_files_give_diagnostics_not_tracebacks(kind: str, tmp_path: Path) -> None:
    from pcdsl.io.formats import check_path

    graph, params = random_psdd(1, num_vars=3)
    write_circuit(tmp_path / "good.psdd", graph, params)
    texts = {"jpc": jpc_text(from_graph(graph, params)), "psdd": (tmp_path / "good.psdd").read_text(),
             "vtree": (tmp_path / "good.vtree").read_text(),
             "sdd": "sdd 5\nL 0 0 1\nL 1 2 2\nL 2 0 -1\nT 3\nD 4 1 2 0 3 2 1\n"}
    vtree = texts["vtree"] if kind != "sdd" else AB_VTREE
    rng = np.random.default_rng(7)
    outcomes = {"read": 0, "refused": 0}
    for n in range(150):
        path = tmp_path / f"d{n}.{kind}"
        path.write_text(_damaged(texts[kind], rng))
        if kind != "vtree":
            (tmp_path / f"d{n}.vtree").write_text(vtree)
        try:
            check_path(path)
            outcomes["read"] += 1
        except PcdslError as exc:
            assert exc.diagnostics and all(d.code in pcdsl.codes.CODES for d in exc.diagnostics)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 50  # most damage is caught
