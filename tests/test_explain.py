"""`pcdsl explain CODE`: for every code a reason, a minimal failing example and the fix; every
.pc example and every circuit or vtree file (.jpc, .psdd, .sdd, .vtree) really fails with its
code, and every Python example raises it."""

from __future__ import annotations

from pathlib import Path

import pytest

import pcdsl
from pcdsl.arguments import InvalidArgument
from pcdsl.cli import main
from pcdsl.codes import CODES
from pcdsl.explanations import EXPLANATIONS

from conftest import codes_of_files

FORMAT_FILES = ("jpc", "psdd", "sdd", "vtree")


def test_every_code_is_explained() -> None:
    assert set(EXPLANATIONS) == set(CODES)
    for code, entry in EXPLANATIONS.items():
        assert entry.why and entry.example and entry.fix, code


@pytest.mark.parametrize("code", sorted(c for c, e in EXPLANATIONS.items() if e.kind == "pc"))
def test_the_pc_example_fails_with_its_code(code: str) -> None:
    try:
        found = {d.code for d in pcdsl.check_text(EXPLANATIONS[code].example, "example.pc").warnings}
    except pcdsl.PcdslError as exc:
        found = {d.code for d in exc.diagnostics}
    assert code in found


@pytest.mark.parametrize("code", sorted(c for c, e in EXPLANATIONS.items() if e.kind in FORMAT_FILES))
def test_the_format_file_example_fails_with_its_code(code: str, tmp_path: Path) -> None:
    entry = EXPLANATIONS[code]
    files = [(entry.kind, entry.example)] + ([("vtree", entry.vtree)] if entry.vtree else [])
    assert code in codes_of_files(files, tmp_path)


def test_only_circuit_files_bring_a_vtree() -> None:
    assert {c for c, e in EXPLANATIONS.items() if e.vtree and e.kind not in ("jpc", "psdd", "sdd")} == set()


@pytest.mark.parametrize("code", sorted(c for c, e in EXPLANATIONS.items() if e.kind == "python"))
def test_the_python_example_raises_its_code(code: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        exec(EXPLANATIONS[code].example, {})  # our own example text
    assert info.value.code == code


def test_explain_prints_the_reason_the_example_and_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "e0203"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("E0203: a sum whose children cover different variables (not smooth)\n")
    assert "A file that fails with it:\n    circuit c {" in out and "\nFix: " in out


def test_explain_list_gives_every_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == sorted(CODES)



def test_explain_shows_a_circuit_file_and_the_vtree_beside_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "E0708"]) == 0
    out = capsys.readouterr().out
    assert "A .psdd file that fails with it:\n    psdd 5\n" in out
    assert "with, beside it, its .vtree file:\n    vtree 3\n    L 0 1\n" in out
