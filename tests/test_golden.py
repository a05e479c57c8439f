"""Golden tests: each bad file in tests/golden/bad renders exactly its .expected diagnostics.

Regenerate after an intended change with PCDSL_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pcdsl.diagnostics import PcdslError, render_all
from pcdsl.frontend import check_file

GOLDEN = Path("tests/golden/bad")
CASES = sorted(p.name for p in (Path(__file__).parent / "golden" / "bad").glob("*.pc"))


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", CASES)
def test_bad_file_renders_expected_diagnostics(name: str, in_root: Path) -> None:
    path = GOLDEN / name
    with pytest.raises(PcdslError) as info:
        check_file(path)
    got = render_all(info.value.diagnostics) + "\n"
    expected = path.with_suffix(".expected")
    if os.environ.get("PCDSL_UPDATE_GOLDEN"):
        expected.write_text(got, encoding="utf-8")
    assert expected.exists(), f"missing {expected}; run with PCDSL_UPDATE_GOLDEN=1"
    assert got == expected.read_text(encoding="utf-8")
    for d in info.value.diagnostics:  # every diagnostic points into a real file
        assert d.span.source is not None and d.span.line >= 1


IR_CASES = ["tiny", "groups", "gaussians", "rat"]


@pytest.mark.parametrize("name", IR_CASES)
def test_ir_dump_matches_golden(name: str, in_root: Path) -> None:
    from pcdsl.ir.dump import dump

    checked = check_file(Path("examples") / f"{name}.pc")
    got = "".join(dump(g) for g in checked.circuits.values())
    expected = Path("tests/golden/ir") / f"{name}.ir"
    if os.environ.get("PCDSL_UPDATE_GOLDEN"):
        expected.write_text(got, encoding="utf-8")
    assert got == expected.read_text(encoding="utf-8")
