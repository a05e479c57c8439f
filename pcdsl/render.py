"""Graphviz pictures of circuits (at the level of node groups or of regions), of single node
groups, and of layered plans (what a compiled model runs).

The DOT text is deterministic (ids follow the graph's insertion order), so it
can be golden-tested; SVG, PNG and PDF come from the `dot` program.
:func:`picture` wraps any of them in a :class:`Picture`, which Jupyter shows.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pcdsl.diagnostics import Diagnostic
from pcdsl.diagnostics import render as render_diagnostic
from pcdsl.io.atomic import write_atomic
from pcdsl.ir.graph import CircuitGraph, Node, NodeKind
from pcdsl.ir.validate import scope_text
from pcdsl.plan import InputLayer, LayeredPlan, ProductLayer, SumLayer

FORMATS = ("dot", "svg", "png", "pdf")
AUTO_REGION_LIMIT = 300  # above this many node groups, the region level reads better
_FONTS = '  node [fontname="Helvetica"];\n  edge [fontname="Helvetica", fontsize=10];'


class RenderError(Exception):
    """Rendering failed for a reason outside the circuit (no `dot`, unwritable file)."""


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(**kw: str) -> str:
    return "[" + ", ".join(f"{k}={_quote(v)}" for k, v in sorted(kw.items())) + "]"


def _scope(graph: CircuitGraph, node: Node) -> str:
    return scope_text(graph, node.scope)


def _short_scope(graph: CircuitGraph, node: Node) -> str:
    names = graph.scope_names(node.scope)
    if len(names) <= 4:
        return "{" + ", ".join(names) + "}"
    return f"{{{names[0]} .. {names[-1]}}} ({len(names)} vars)"


def _units(node: Node) -> str:
    return f" x{node.num_units}" if node.num_units > 1 else ""


def _input_label(graph: CircuitGraph, node: Node) -> str:
    assert node.var is not None
    var = graph.variables[node.var].name
    label = f"{node.family}({var}){_units(node)}"
    if node.params is not None and node.num_units == 1:
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in node.params.items())
        label += f"\n{shown}"
    return label


def _fmt(value: object) -> str:
    array = np.asarray(value).reshape(-1)
    items = [f"{x:.3g}" if isinstance(x, (float, np.floating)) else str(x) for x in array[:6]]
    text = ", ".join(items) + (", ..." if array.size > 6 else "")
    return text if array.size == 1 else f"[{text}]"


def circuit_dot(graph: CircuitGraph) -> str:
    """One DOT node per node group: kind, scope and units; sum edges carry weights."""
    ids = {n.name: f"n{i}" for i, n in enumerate(graph.nodes())}
    lines = [f"digraph {_quote(graph.name)} {{", '  rankdir="TB";', _FONTS]
    for node in graph.nodes():
        tooltip = f"{node.name}: {node.kind.value}{_units(node)} over {_scope(graph, node)}"
        if node.kind is NodeKind.INPUT:
            attrs = _attrs(label=_input_label(graph, node), shape="box", style="rounded", tooltip=tooltip)
        elif node.kind is NodeKind.PRODUCT:
            symbol = "⊗" if node.pattern == "kronecker" else "×"
            attrs = _attrs(label=f"{symbol}{_units(node)}\n{node.name}\n{_short_scope(graph, node)}",
                           shape="ellipse", tooltip=tooltip)
        else:
            tied = f"\ntied: {node.tie}" if node.tie else ""
            attrs = _attrs(label=f"+{_units(node)}\n{node.name}\n{_short_scope(graph, node)}{tied}", shape="ellipse",
                           style="filled", fillcolor="#dde8f7", tooltip=tooltip)
        lines.append(f"  {ids[node.name]} {attrs};")
    for node in graph.nodes():
        for position, child in enumerate(node.children):
            label = ""
            if node.weights is not None and node.weights.shape == (1, len(node.children)):
                label = f"{node.weights[0, position]:.3g}"
            edge = f" {_attrs(label=label)}" if label else ""
            lines.append(f"  {ids[node.name]} -> {ids[child]}{edge};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def region_dot(graph: CircuitGraph) -> str:
    """Node groups collapsed by scope: regions (boxes) and partitions (products)."""
    regions: dict[int, list[Node]] = {}
    partitions: dict[tuple[int, tuple[int, ...]], list[Node]] = {}
    for node in graph.nodes():
        if node.kind is NodeKind.PRODUCT:
            key = (node.scope, tuple(sorted(graph.node(c).scope for c in node.children)))
            partitions.setdefault(key, []).append(node)
        else:
            regions.setdefault(node.scope, []).append(node)
    for scope, child_scopes in partitions:  # a product whose scope no sum covers is a region too
        regions.setdefault(scope, [])
        for s in child_scopes:
            regions.setdefault(s, [])
    rid = {scope: f"r{i}" for i, scope in enumerate(sorted(regions, key=lambda s: (-s.bit_count(), s)))}
    lines = [f"digraph {_quote(graph.name + ' (regions)')} {{", '  rankdir="TB";',
             _FONTS]
    for scope, rname in rid.items():
        nodes = regions[scope]
        units = sum(n.num_units for n in nodes)
        kinds = sorted({n.kind.value for n in nodes})
        label = f"{scope_text(graph, scope)}\n{', '.join(kinds) or 'products'}: {units} unit{'s' * (units != 1)}"
        lines.append(f"  {rname} {_attrs(label=label, shape='box')};")
    for i, ((scope, child_scopes), nodes) in enumerate(partitions.items()):
        units = sum(n.num_units for n in nodes)
        lines.append(f"  p{i} {_attrs(label=f'× {units}', shape='circle')};")
        lines.append(f"  {rid[scope]} -> p{i};")
        lines += [f"  p{i} -> {rid[s]};" for s in child_scopes]
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_dot(graph: CircuitGraph, level: str = "auto") -> str:
    if level == "auto":
        level = "region" if len(graph) > AUTO_REGION_LIMIT else "circuit"
    return region_dot(graph) if level == "region" else circuit_dot(graph)


def node_dot(node: Node) -> str:
    """One node group and the names of its children (a node alone does not know their kinds)."""
    lines = [f"digraph {_quote(node.name)} {{", '  rankdir="TB";', _FONTS]
    lines.append(f"  n0 {_attrs(label=node_label(node), shape='box' if node.kind is NodeKind.INPUT else 'ellipse')};")
    for i, child in enumerate(node.children):
        label = ""
        if node.weights is not None and node.weights.shape == (1, len(node.children)):
            label = f"{node.weights[0, i]:.3g}"
        lines.append(f"  c{i} {_attrs(label=child, shape='plain')};")
        lines.append(f"  n0 -> c{i}{' ' + _attrs(label=label) if label else ''};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def node_label(node: Node) -> str:
    """A node group in a few words: kind, name, units and what is special about it."""
    if node.kind is NodeKind.INPUT:
        kind = f"{node.family} leaf"
    elif node.kind is NodeKind.PRODUCT:
        kind = f"{node.pattern} product"
    else:
        kind = "sum"
    extras = [_count(node.num_units, "unit")]
    if node.children:
        extras.append(f"{len(node.children)} child{'ren' * (len(node.children) != 1)}")
    if node.blocks > 1:
        extras.append(f"{node.blocks} blocks")
    if node.tie:
        extras.append(f"tied to '{node.tie}'")
    if node.fixed:
        extras.append("fixed")
    return f"{kind} '{node.name}': {', '.join(extras)}"


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _layer_label(i: int, layer: InputLayer | ProductLayer | SumLayer) -> str:
    if isinstance(layer, InputLayer):
        families = ", ".join(sorted(set(layer.families)))
        return f"layer {i}: input ({families})\n{_count(len(layer.nodes), 'group')} of {_count(layer.width, 'unit')}"
    if isinstance(layer, ProductLayer):
        return f"layer {i}: product\n{_count(layer.index.shape[0], 'unit')}, fan-in {layer.index.shape[1]}"
    f, m, c = layer.shape
    return f"layer {i}: sum\n{_count(f, 'fold')} of {_count(m, 'unit')} over {_count(c, 'input')}\n" \
           f"{_count(f * m * c, 'edge')}"


def plan_dot(plan: LayeredPlan) -> str:
    """One DOT node per layer of a plan, with an edge to each layer it reads."""
    lines = [f"digraph {_quote(plan.name + ' (plan)')} {{", '  rankdir="BT";', _FONTS]
    starts = np.array([layer.start for layer in plan.layers])
    for i, layer in enumerate(plan.layers):
        fill = {"InputLayer": "#f3f3f3", "ProductLayer": "#ffffff", "SumLayer": "#dde8f7"}[type(layer).__name__]
        lines.append(f"  l{i} {_attrs(label=_layer_label(i, layer), shape='box', style='filled', fillcolor=fill)};")
        if isinstance(layer, InputLayer):
            continue
        slots = np.unique(layer.index)
        for j in np.unique(np.searchsorted(starts, slots[slots >= 2], side="right") - 1):
            lines.append(f"  l{int(j)} -> l{i};")
    lines.append("}")
    return "\n".join(lines) + "\n"


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


def render_file(graph: CircuitGraph, out: str | Path, level: str = "auto", fmt: str | None = None) -> Path:
    """Write the picture to `out` (format from the suffix unless `fmt`), atomically."""
    return Picture(to_dot(graph, level)).save(out, fmt)


def _run_dot(dot: bytes, fmt: str) -> bytes:
    exe = shutil.which("dot")
    if exe is None:
        raise RenderError("the graphviz program 'dot' is not installed (Debian: apt-get install graphviz); "
                          "'.dot' output works without it")
    proc = subprocess.run([exe, f"-T{fmt}"], input=dot, capture_output=True, timeout=600)
    if proc.returncode != 0:
        raise RenderError(f"dot failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def _atomic_write(path: Path, data: bytes) -> None:
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise RenderError(f"cannot write '{path}': {exc.strerror}") from None


def render(thing: Any, level: str = "auto") -> Any:
    """``pcdsl.render(x)``: the :class:`Picture` of a circuit graph, node group, plan or compiled
    model; a :class:`~pcdsl.diagnostics.Diagnostic` renders as its text (file:line:col, the
    source line, a caret)."""
    if isinstance(thing, Diagnostic):
        return render_diagnostic(thing)
    return picture(thing, level)


class _CallableModule(types.ModuleType):
    """This module is also the façade's function, so that ``pcdsl.render(graph)`` works
    whichever of the two the name ``pcdsl.render`` was last bound to by an import."""

    def __call__(self, thing: Any, level: str = "auto") -> Any:
        return render(thing, level)


sys.modules[__name__].__class__ = _CallableModule
