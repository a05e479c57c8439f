"""`pcdsl explain CODE`: for every code a reason, a minimal failing example and the fix; every
.pc example really fails with its code and every Python example raises it."""

from __future__ import annotations

import pytest

import pcdsl
from pcdsl.arguments import InvalidArgument
from pcdsl.cli import main
from pcdsl.codes import CODES
from pcdsl.explanations import EXPLANATIONS


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

