"""Every shipped example checks cleanly and renders to SVG and PNG."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pcdsl.cli import main
from pcdsl.drawing import to_dot
from pcdsl.frontend import check_file

from conftest import EXAMPLES, require_dot

FILES = sorted(p.name for p in EXAMPLES.glob("*.pc"))


def test_examples_cover_the_language() -> None:
    text = "\n".join((EXAMPLES / f).read_text() for f in FILES)
    for needle in ("import ", "const ", "with units", "outer(", "tie =", "recipe ", "hclt(", "poon_domingos(",
                   "rat(", "quad_tree(", "fully_factorized(", "gaussian(", "categorical(", "bernoulli("):
        assert needle in text, f"no example uses {needle!r}"


@pytest.mark.parametrize("name", FILES)
def test_example_checks(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(EXAMPLES / name)]) == 0
    out = capsys.readouterr().out
    checked = check_file(EXAMPLES / name)
    assert checked.circuits or checked.recipes
    for circuit in checked.circuits:
        if checked.circuits[circuit].span.source is checked.program.main:
            assert f"circuit {circuit}:" in out and "smooth, decomposable" in out


@pytest.mark.parametrize("name", FILES)
def test_example_renders(name: str, tmp_path: Path) -> None:
    checked = check_file(EXAMPLES / name)
    for circuit, graph in checked.circuits.items():
        assert to_dot(graph) == to_dot(graph)  # deterministic
        if shutil.which("dot") is None:
            if require_dot():
                pytest.fail("graphviz 'dot' is required (PCDSL_REQUIRE_DOT is set)")
            pytest.skip("graphviz 'dot' is not installed")
        for fmt in ("svg", "png"):
            out = tmp_path / f"{circuit}.{fmt}"
            assert main(["render", str(EXAMPLES / name), "--circuit", circuit, "-o", str(out)]) == 0
            data = out.read_bytes()
            assert data.startswith(b"\x89PNG") if fmt == "png" else b"<svg" in data[:2000]
