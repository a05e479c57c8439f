"""Pictures people can read: every example fits in 8,000 pixels, large circuits are cut with a
note of what was collapsed, invalid circuits are drawn with their violations in red, and scope
labels say when a scope is not a contiguous range."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

import pcdsl
from pcdsl.cli import main
from pcdsl.drawing import MAX_PIXELS, draw, render_file
from pcdsl.ir.graph import BOOL, CircuitGraph, Variable
from pcdsl.ir.scope import Scope
from pcdsl.render_items import scope_label

from conftest import EXAMPLES, ROOT, require_dot


def _need_dot() -> None:
    if shutil.which("dot") is None:
        if require_dot():
            pytest.fail("graphviz 'dot' is required here (PCDSL_REQUIRE_DOT=1)")
        pytest.skip("graphviz 'dot' is not installed")


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _example_circuits() -> list[tuple[str, str]]:
    out = []
    for file in sorted(EXAMPLES.glob("*.pc")):
        checked = pcdsl.check(file)
        out += [(file.name, name) for name, g in checked.circuits.items() if g.span.source is checked.program.main]
    return out


EXAMPLE_CIRCUITS = _example_circuits()


@pytest.mark.parametrize(("file", "circuit"), EXAMPLE_CIRCUITS, ids=[c for _, c in EXAMPLE_CIRCUITS])
def test_every_example_renders_a_png_at_most_8000_pixels(file: str, circuit: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    _need_dot()
    out = tmp_path / f"{circuit}.png"
    assert main(["render", str(EXAMPLES / file), "--circuit", circuit, "-o", str(out)]) == 0
    width, height = _png_size(out)
    assert max(width, height) <= MAX_PIXELS, (width, height)


def _wide(n: int) -> CircuitGraph:
    graph = CircuitGraph("wide", tuple(Variable(f"v{i}", i, BOOL) for i in range(n)))
    for i in range(n):
        graph.add_input(f"l{i}", i, "bernoulli", 1)
    graph.add_product("root", tuple(f"l{i}" for i in range(n)))
    return graph


def test_a_very_wide_circuit_is_cut_to_fit_and_says_so(tmp_path: Path) -> None:
    _need_dot()
    drawing = draw(_wide(3000), "circuit")
    assert drawing.note is not None and "drew " in drawing.note and "of 3001 node groups" in drawing.note
    assert "more" in drawing.dot and 'style="dashed"' in drawing.dot
    out = render_file(_wide(3000), tmp_path / "wide.png", "circuit")
    assert max(_png_size(out)) <= MAX_PIXELS


def test_even_everything_drawn_stays_under_the_cap(tmp_path: Path) -> None:
    _need_dot()
    out = render_file(_wide(600), tmp_path / "all.png", "circuit", max_nodes=10_000, depth=5)
    assert max(_png_size(out)) <= MAX_PIXELS  # graphviz scales the layout down


def test_depth_and_max_nodes_choose_what_is_drawn(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pd = str(EXAMPLES / "pd_fashion.pc")
    assert main(["render", pd, "-o", str(tmp_path / "pd.dot"), "--depth", "2"]) == 0
    printed = capsys.readouterr().out
    assert "region level" in printed and "note: drew " in printed and "(depth 2 of " in printed
    assert main(["render", pd, "-o", str(tmp_path / "few.dot"), "--level", "circuit", "--max-nodes", "5"]) == 0
    assert "note: drew 5 of " in capsys.readouterr().out
    assert (tmp_path / "few.dot").read_text().count("tooltip") == 5  # five nodes; placeholders have none


def test_auto_level_draws_large_circuits_by_region() -> None:
    graph = pcdsl.load(EXAMPLES / "pd_fashion.pc")
    assert draw(graph).level == "region"
    assert draw(pcdsl.load(EXAMPLES / "tiny.pc")).level == "circuit"
    assert draw(pcdsl.load(EXAMPLES / "tiny.pc")).note is None  # nothing collapsed, nothing said


def test_an_invalid_circuit_is_drawn_with_its_violations_in_red(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    bad = ROOT / "tests" / "golden" / "bad" / "not_smooth.pc"
    out = tmp_path / "bad.dot"
    assert main(["render", str(bad), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "error[E0203]" in err and "drew it anyway" in err
    dot = out.read_text()
    red = [line for line in dot.splitlines() if 'color="#c62828"' in line]
    assert len(red) == 1 and "root" in red[0] and 'xlabel="E0203"' in red[0]


def test_several_roots_are_all_drawn(tmp_path: Path) -> None:
    bad = ROOT / "tests" / "golden" / "bad" / "several_roots.pc"
    assert main(["render", str(bad), "-o", str(tmp_path / "roots.dot")]) == 1
    assert (tmp_path / "roots.dot").read_text().count("bernoulli") == 3


def test_scope_labels_say_when_a_scope_is_not_contiguous() -> None:
    graph = CircuitGraph("g", tuple(Variable(f"v{i}", i, BOOL) for i in range(10)))
    assert scope_label(graph, Scope(0b111)) == "{v0, v1, v2}"
    assert scope_label(graph, Scope(0b1111110)) == "{v1 .. v6} 6 vars"
    assert scope_label(graph, Scope(0b1010101010)) == "{v1, v3, .. v9} 5 vars, not contiguous"
    grid = CircuitGraph("x", tuple(Variable(f"x[{i}, {j}]", 4 * i + j, BOOL) for i in range(4) for j in range(4)))
    block = Scope.of(*(4 * i + j for i in range(2, 4) for j in range(1, 4)))
    assert scope_label(grid, block) == "x[2:4, 1:4] (6 vars)"
    ragged = block | Scope.of(0)
    assert scope_label(grid, ragged).endswith("7 vars, not contiguous")

