"""Golden tests for broken circuit and vtree files: each renders exactly its .expected diagnostics,
with the same renderer as .pc files (file:line:col, the line, a caret).

A .vtree beside a .jpc/.psdd/.sdd of the same stem is that file's vtree, not a case of its own.
Regenerate after an intended change with PCDSL_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pcdsl.diagnostics import PcdslError, render_all
from pcdsl.io.formats import check_path, format_of

GOLDEN = Path("tests/golden/formats")
HERE = Path(__file__).parent / "golden" / "formats"


def _cases() -> list[str]:
    names = sorted(p.name for p in HERE.iterdir() if format_of(p) is not None)
    stems = {n.split(".")[0] for n in names if not n.endswith((".vtree", ".vtree.gz"))}
    return [n for n in names if not (n.endswith(".vtree") and n.split(".")[0] in stems)]


CASES = _cases()


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", CASES)
def test_broken_file_renders_expected_diagnostics(name: str, in_root: Path) -> None:
    path = GOLDEN / name
    with pytest.raises(PcdslError) as info:
        check_path(path)
    got = render_all(info.value.diagnostics) + "\n"
    expected = path.with_name(name + ".expected")
    if os.environ.get("PCDSL_UPDATE_GOLDEN"):
        expected.write_text(got, encoding="utf-8")
    assert expected.exists(), f"missing {expected}; run with PCDSL_UPDATE_GOLDEN=1"
    assert got == expected.read_text(encoding="utf-8")
    for d in info.value.diagnostics:  # located in the file (a gzip stream that ends early has no line)
        assert (d.span.source is not None and d.span.line >= 1) or d.code == "E0004"
