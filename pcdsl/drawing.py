"""Graphviz pictures of circuits (at the level of node groups or of regions), of single node
groups, and of layered plans (what a compiled model runs; :mod:`pcdsl.render_plan`).

The DOT text is deterministic (ids follow the graph's insertion order), so it can be
golden-tested; SVG, PNG and PDF come from the `dot` program. Pictures stay readable: large
circuits are drawn by region, deep or wide ones are cut (:mod:`pcdsl.render_fit`) with a note
of what was collapsed, and no picture is larger than ``MAX_PIXELS`` on its longest side. An
invalid circuit can be drawn too, its violations in red. :func:`picture` wraps any of them in a
:class:`Picture`, which Jupyter shows.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcdsl.diagnostics import Diagnostic
from pcdsl.diagnostics import render as render_diagnostic
from pcdsl.io.atomic import write_atomic
from pcdsl.ir.graph import CircuitGraph, Node
from pcdsl.plan import LayeredPlan
from pcdsl.render_fit import fit, note
from pcdsl.render_items import Item, circuit_items, highlight, region_items
from pcdsl.render_plan import _FONTS, _attrs, _quote, node_dot, node_label, plan_dot

__all__ = ["Picture", "RenderError", "draw", "node_label", "picture", "render", "render_file", "to_dot"]

FORMATS = ("dot", "svg", "png", "pdf")
LEVELS = ("auto", "circuit", "region")
AUTO_REGION_LIMIT = 300  # above this many node groups, the region level reads better
MAX_PIXELS = 8000  # the longest side of a PNG (at DPI); graphviz scales larger layouts down to it
DPI = 96
_PLACEHOLDER = {"shape": "box", "style": "dashed", "fontcolor": "#555555", "color": "#888888"}


class RenderError(Exception):
    """Rendering failed for a reason outside the circuit (no `dot`, unwritable file)."""


@dataclass(frozen=True)
class Drawing:
    """A picture's DOT text, the level it was drawn at, and what was collapsed (None: nothing)."""

    dot: str
    level: str
    note: str | None


def draw(graph: CircuitGraph, level: str = "auto", depth: int | None = None, max_nodes: int | None = None,
         problems: Sequence[Diagnostic] = ()) -> Drawing:
    """The picture of `graph`: at `level` ("auto": node groups when they fit, else regions), cut at
    `depth` and `max_nodes` (or where the picture would get too wide), with `problems`
    (diagnostics of an invalid circuit) highlighted."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r} (known: {', '.join(LEVELS)})")
    chosen = level
    if level == "auto":
        chosen = "circuit" if len(graph) <= AUTO_REGION_LIMIT else "region"
        if chosen == "circuit" and not _fits(graph, "circuit", depth, max_nodes):
            chosen = "region" if _fits(graph, "region", depth, max_nodes) else "circuit"
    items = circuit_items(graph) if chosen == "circuit" else region_items(graph)
    if problems:
        items = highlight(graph, items, chosen, problems)
    result = fit(items, depth, max_nodes)
    unit = "node groups" if chosen == "circuit" else "regions and partitions"
    told = note(result, unit, depth, max_nodes)
    if told is not None and level == "auto" and chosen == "region":
        told = f"{told}; drawn by region ({len(graph)} node groups)"
    elif told is None and level == "auto" and chosen == "region":
        told = f"drawn by region: {len(graph)} node groups are too many to read one by one (--level circuit)"
    name = graph.name if chosen == "circuit" else graph.name + " (regions)"
    return Drawing(_dot(name, items, result.kept, result.cut, told if told and not result.complete else None),
                   chosen, told)


def _fits(graph: CircuitGraph, level: str, depth: int | None, max_nodes: int | None) -> bool:
    items = circuit_items(graph) if level == "circuit" else region_items(graph)
    return fit(items, depth, max_nodes).complete


def _dot(name: str, items: dict[str, Item], kept: Sequence[str], cut: dict[str, int], told: str | None) -> str:
    lines = [f"digraph {_quote(name)} {{", '  rankdir="TB";', _FONTS]
    if told:
        lines.append(f"  label={_quote(told)};\n  labelloc=\"t\";")
    drawn = set(kept)
    order = [k for k in items if k in drawn]  # the items' own (deterministic) order
    for key in order:
        lines.append(f"  {key} {_attrs(**items[key].attrs)};")
    for key in order:
        if key in cut:
            count = cut[key]
            lines.append(f"  {key}_more {_attrs(label=f'... {count} more', **_PLACEHOLDER)};")
    for key in order:
        for child, label in items[key].children:
            if child in drawn:
                edge = f" {_attrs(label=label)}" if label else ""
                lines.append(f"  {key} -> {child}{edge};")
        if key in cut:
            lines.append(f'  {key} -> {key}_more [style="dashed"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def circuit_dot(graph: CircuitGraph) -> str:
    """One DOT node per node group: kind, scope and units; sum edges carry weights (all of them,
    however large the picture)."""
    items = circuit_items(graph)
    return _dot(graph.name, items, list(items), {}, None)


def region_dot(graph: CircuitGraph) -> str:
    """Node groups collapsed by scope: regions (boxes) and partitions (products), all of them."""
    items = region_items(graph)
    return _dot(graph.name + " (regions)", items, list(items), {}, None)


def to_dot(graph: CircuitGraph, level: str = "auto") -> str:
    return draw(graph, level).dot


def render_file(graph: CircuitGraph, out: str | Path, level: str = "auto", fmt: str | None = None,
                depth: int | None = None, max_nodes: int | None = None,
                problems: Sequence[Diagnostic] = ()) -> Path:
    """Write the picture to `out` (format from the suffix unless `fmt`), atomically."""
    return write_drawing(draw(graph, level, depth, max_nodes, problems), out, fmt)


def write_drawing(drawing: Drawing, out: str | Path, fmt: str | None = None) -> Path:
    """Write a drawing as DOT text or, through graphviz, as SVG, PNG or PDF (at most MAX_PIXELS
    on the longest side at DPI), atomically."""
    out = Path(out)
    fmt = fmt or out.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise RenderError(f"unknown picture format '{fmt}' (known: {', '.join(FORMATS)})")
    data = drawing.dot.encode("utf-8")
    if fmt != "dot":
        data = _run_dot(data, fmt)
    _atomic_write(out, data)
    return out


def _run_dot(dot: bytes, fmt: str) -> bytes:
    exe = shutil.which("dot")
    if exe is None:
        raise RenderError("the graphviz program 'dot' is not installed (Debian: apt-get install graphviz); "
                          "'.dot' output works without it")
    inches = (MAX_PIXELS - 16) / DPI  # a little room for graphviz's rounding and margins
    command = [exe, f"-T{fmt}", f"-Gdpi={DPI}", f"-Gsize={inches:.2f},{inches:.2f}"]
    proc = subprocess.run(command, input=dot, capture_output=True, timeout=600)
    if proc.returncode != 0:
        raise RenderError(f"dot failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def _atomic_write(path: Path, data: bytes) -> None:
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise RenderError(f"cannot write '{path}': {exc.strerror}") from None


@dataclass(frozen=True)
class Picture:
    """A rendered circuit, node group or plan: its DOT text, and SVG, PNG or PDF from graphviz's
    ``dot``. Jupyter shows it (``_repr_svg_``); without ``dot`` it shows this text instead."""

    dot: str

    def svg(self) -> str:
        """The picture as SVG text (needs graphviz's ``dot``)."""
        return _run_dot(self.dot.encode("utf-8"), "svg").decode("utf-8")

    def save(self, out: str | Path, fmt: str | None = None) -> Path:
        """Write the picture to `out` (format from the suffix unless `fmt`), atomically."""
        out = Path(out)
        fmt = fmt or out.suffix.lstrip(".").lower()
        if fmt not in FORMATS:
            raise RenderError(f"unknown picture format '{fmt}' (known: {', '.join(FORMATS)})")
        data = self.dot.encode("utf-8")
        _atomic_write(out, data if fmt == "dot" else _run_dot(data, fmt))
        return out

    def _repr_svg_(self) -> str | None:
        try:
            return self.svg()
        except RenderError:
            return None  # Jupyter falls back to the text form

    def __repr__(self) -> str:
        return f"Picture({self.dot.count(chr(10))} lines of DOT; .svg() or .save(path) to draw it)"


def picture(thing: Any, level: str = "auto") -> Picture:
    """The picture of a circuit graph (node groups or regions, see :func:`to_dot`), a node group,
    a layered plan, or anything that runs one (a compiled model, a circuit module)."""
    if isinstance(thing, CircuitGraph):
        return Picture(to_dot(thing, level))
    if isinstance(thing, Node):
        return Picture(node_dot(thing))
    plan = thing if isinstance(thing, LayeredPlan) else getattr(thing, "plan", None)
    if isinstance(plan, LayeredPlan):
        return Picture(plan_dot(plan))
    raise TypeError(f"cannot draw a {type(thing).__name__}: give a circuit graph, a node group, a plan or a model")


def render(thing: Any, level: str = "auto") -> Any:
    """``pcdsl.render(x)``: the :class:`Picture` of a circuit graph, node group, plan or compiled
    model; a :class:`~pcdsl.diagnostics.Diagnostic` renders as its text (file:line:col, the
    source line, a caret)."""
    if isinstance(thing, Diagnostic):
        return render_diagnostic(thing)
    return picture(thing, level)
