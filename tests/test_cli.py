"""The `pcdsl` command: exit codes, summaries, errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pcdsl import __version__
from pcdsl.cli import main

from conftest import EXAMPLES, ROOT


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pcdsl {__version__}"


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("check", "render", "explain"):
        assert command in out


def test_no_command_is_a_usage_error() -> None:
    assert main([]) == 2


def test_unknown_flag_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        main(["check", "--frobnicate", "x.pc"])
    assert info.value.code == 2


def test_check_summary_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(EXAMPLES / "tiny.pc")]) == 0
    out = capsys.readouterr().out
    assert "circuit tiny: 8 nodes (8 units), 8 edges, 11 parameters, 3 variables" in out
    assert "smooth, decomposable" in out
    assert "structured-decomposable, vtree (a (b c))" in out
    assert "determinism not proved: sum 'root'" in out


def test_check_bad_file_exit_1_with_location(capsys: pytest.CaptureFixture[str], in_root: Path) -> None:
    assert main(["check", "tests/golden/bad/not_smooth.pc"]) == 1
    err = capsys.readouterr().err
    assert "tests/golden/bad/not_smooth.pc:8:3: error[E0203]" in err
    assert "Traceback" not in err


def test_check_many_files_reports_all(capsys: pytest.CaptureFixture[str], in_root: Path) -> None:
    status = main(["check", "examples/tiny.pc", "tests/golden/bad/negative_weight.pc", "missing.pc"])
    captured = capsys.readouterr()
    assert status == 1
    assert "circuit tiny:" in captured.out
    assert "error[E0302]" in captured.err and "error[E0004]: file 'missing.pc' does not exist" in captured.err


def test_render_unknown_circuit_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", str(EXAMPLES / "tiny.pc"), "--circuit", "tinny", "-o", str(tmp_path / "x.dot")]) == 2
    assert "did you mean 'tiny'?" in capsys.readouterr().err


def test_render_unknown_format_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", str(EXAMPLES / "tiny.pc"), "-o", str(tmp_path / "x.gif")]) == 2
    assert "unknown picture format 'gif'" in capsys.readouterr().err


def test_render_dot_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a.dot", tmp_path / "b.dot"
    assert main(["render", str(EXAMPLES / "tiny.pc"), "-o", str(a)]) == 0
    assert main(["render", str(EXAMPLES / "tiny.pc"), "-o", str(b)]) == 0
    assert a.read_text() == b.read_text()
    assert '"bernoulli(a)\\np=0.2"' in a.read_text()


def test_render_dot_golden(tmp_path: Path) -> None:
    out = tmp_path / "tiny.dot"
    assert main(["render", str(EXAMPLES / "tiny.pc"), "-o", str(out), "--level", "circuit"]) == 0
    assert out.read_text() == (ROOT / "tests" / "golden" / "tiny.dot").read_text()


def test_explain(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "e0203"]) == 0
    assert "not smooth" in capsys.readouterr().out
    assert main(["explain", "E9999"]) == 2


def test_every_code_used_is_explained() -> None:
    import re

    from pcdsl.codes import CODES

    used = set()
    for path in (ROOT / "pcdsl").rglob("*.py"):
        used |= set(re.findall(r'"([EW]\d{4})"', path.read_text()))
    assert used <= set(CODES), sorted(used - set(CODES))


def test_console_script_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "pcdsl.cli", "check", str(EXAMPLES / "tiny.pc")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "circuit tiny" in proc.stdout


def test_eval_reports_log_likelihood_and_bpd(capsys: pytest.CaptureFixture[str]) -> None:
    data = EXAMPLES / "data" / "debd" / "nltcs" / "nltcs.valid.data"
    assert main(["eval", str(EXAMPLES / "hclt_nltcs.pc"), "--data", str(data), "--dtype", "float64"]) == 0
    captured = capsys.readouterr()
    assert "2157 samples: average log-likelihood -" in captured.out and "bits per dimension" in captured.out
    assert "they are random, seed 0" in captured.err  # honest about unlearned parameters
    mean = float(captured.out.split("average log-likelihood ")[1].split()[0])
    assert -16 * 5 < mean < 0  # a normalised model over 16 binary variables


def test_eval_bad_data_is_an_input_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("0,1,5\n")
    assert main(["eval", str(EXAMPLES / "tiny.pc"), "--data", str(bad)]) == 1
    assert f"'{bad}', row 1, column 3 ('c'): 5 is not one of 0..2" in capsys.readouterr().err
    assert main(["eval", str(EXAMPLES / "tiny.pc"), "--data", str(tmp_path / "none.csv")]) == 1


def test_sample_prints_csv_and_writes_npy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    assert main(["sample", str(EXAMPLES / "tiny.pc"), "-n", "5", "--seed", "2"]) == 0
    rows = [line.split(",") for line in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == 5 and all(len(r) == 3 and r[2] in {"0", "1", "2"} for r in rows)
    out = tmp_path / "s.npy"
    assert main(["sample", str(EXAMPLES / "gaussians.pc"), "-n", "7", "-o", str(out)]) == 0
    samples = np.load(out)
    assert samples.shape == (7, 3) and set(np.unique(samples[:, 2])) <= {0.0, 1.0}
