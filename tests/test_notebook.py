"""Notebook display: circuits, node groups, plans, models and circuit modules have a one-line
repr with their sizes and properties and draw themselves as SVG (Jupyter's _repr_svg_);
pcdsl.render(x) returns the picture."""

from __future__ import annotations

import shutil

import pytest

import pcdsl
from pcdsl.drawing import Picture, RenderError

from conftest import EXAMPLES, require_dot


def _needs_dot() -> None:
    if shutil.which("dot") is None:
        if require_dot():
            pytest.fail("graphviz 'dot' is required (PCDSL_REQUIRE_DOT is set)")
        pytest.skip("graphviz 'dot' is not installed")


def _things() -> dict[str, object]:
    graph = pcdsl.load(EXAMPLES / "groups.pc")
    model = pcdsl.compile(graph)
    out: dict[str, object] = {"graph": graph, "node": graph.node("bottom_mix"), "plan": model.plan,  # type: ignore[attr-defined]
                              "model": model}
    try:
        out["module"] = model.module()  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - torch is part of the test install
        pass
    return out


def test_reprs_are_one_line_with_sizes_and_properties() -> None:
    things = _things()
    text = {name: repr(thing) for name, thing in things.items()}
    assert all("\n" not in t for t in text.values()), text
    assert text["graph"].startswith("CircuitGraph('groups': 4 variables, 10 node groups")
    assert "smooth, decomposable" in text["graph"] and "root 'root'" in text["graph"]
    assert text["node"] == "Node(sum 'bottom_mix': 4 units, 1 child, tied to 'top_mix')"
    assert text["plan"].startswith("LayeredPlan('groups': 4 variables, ") and "layers (1 input" in text["plan"]
    assert text["model"].startswith("TorchModel('groups'") and text["model"].endswith("; float32 cpu)")
    assert "CircuitModule('groups'" in text["module"] and "parameters learned" in text["module"]


def test_notebook_display_draws_svg() -> None:
    _needs_dot()
    for name, thing in _things().items():
        svg = thing._repr_svg_()  # type: ignore[attr-defined]
        assert svg is not None and "<svg" in svg[:2000], name
    graph = pcdsl.load(EXAMPLES / "tiny.pc")
    picture = pcdsl.render(graph)
    assert isinstance(picture, Picture) and "la0" in picture.svg() and picture._repr_svg_() == picture.svg()


def test_ipython_display_shows_the_svg() -> None:
    _needs_dot()
    ipython = pytest.importorskip("IPython.core.formatters")  # Jupyter's own display path, where installed
    graph = pcdsl.load(EXAMPLES / "tiny.pc")
    shown, _ = ipython.DisplayFormatter().format(graph)
    assert "<svg" in shown["image/svg+xml"][:2000] and shown["text/plain"].startswith("CircuitGraph(")


def test_pictures_save_and_say_when_graphviz_is_missing(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    model = pcdsl.compile(pcdsl.load(EXAMPLES / "tiny.pc"))
    picture = pcdsl.render(model)
    assert "l0 -> l1;" in picture.dot and "layer 2: sum" in picture.dot
    assert picture.save(tmp_path / "plan.dot").read_text() == picture.dot
    with pytest.raises(RenderError, match="unknown picture format 'gif'"):
        picture.save(tmp_path / "plan.gif")
    monkeypatch.setattr(shutil, "which", lambda _: None)
    assert picture._repr_svg_() is None  # Jupyter falls back to the text form
    with pytest.raises(RenderError, match="'dot' is not installed"):
        picture.svg()


def test_render_draws_pictures_and_still_renders_diagnostics() -> None:
    with pytest.raises(pcdsl.PcdslError) as caught:
        pcdsl.check_text("circuit c {\n  var a : bool\n  sum r = zz\n}\n", "bad.pc")
    text = pcdsl.render(caught.value.diagnostics[0])
    assert text.startswith("bad.pc:3:11: error[E0101]") and "^^" in text
    with pytest.raises(TypeError, match="cannot draw a int"):
        pcdsl.render(42)
    graph = pcdsl.load(EXAMPLES / "tiny.pc")
    assert pcdsl.render(graph, level="region").dot != pcdsl.render(graph).dot
    from pcdsl import drawing  # importing the module leaves the name pcdsl.render the function

    assert drawing.picture(graph) == pcdsl.render(graph)
