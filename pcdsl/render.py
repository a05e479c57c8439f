"""Graphviz pictures of circuits, at the level of node groups or of regions.

The DOT text is deterministic (ids follow the graph's insertion order), so it
can be golden-tested; SVG, PNG and PDF come from the `dot` program.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pcdsl.io.atomic import write_atomic
from pcdsl.ir.graph import CircuitGraph, Node, NodeKind
from pcdsl.ir.validate import scope_text

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
    import numpy as np

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


def render_file(graph: CircuitGraph, out: str | Path, level: str = "auto", fmt: str | None = None) -> Path:
    """Write the picture to `out` (format from the suffix unless `fmt`), atomically."""
    out = Path(out)
    fmt = fmt or out.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise RenderError(f"unknown picture format '{fmt}' (known: {', '.join(FORMATS)})")
    data = to_dot(graph, level).encode("utf-8")
    if fmt != "dot":
        data = _run_dot(data, fmt)
    _atomic_write(out, data)
    return out


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
