"""What a picture of a circuit is made of, before layout: one :class:`Item` per drawn box or
ellipse, with its DOT attributes and its children, at the level of node groups or of regions.

Scope labels are short and honest: a run of consecutive variables is ``{x[0] .. x[9]} 10 vars``,
a block of an array ``x[0:7, 7:14] (49 vars)``, anything else says it is not contiguous.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pcdsl.diagnostics import Diagnostic
from pcdsl.ir.graph import CircuitGraph, Node, NodeKind
from pcdsl.ir.scope import Scope
from pcdsl.ir.validate import scope_text

PROBLEM = {"color": "#c62828", "fontcolor": "#c62828", "penwidth": "3"}  # a violation, highlighted
_INDEXED = re.compile(r"^(.*)\[(\d+(?:, *\d+)*)\]$")


@dataclass(frozen=True)
class Item:
    """One drawn node: DOT attributes, children (key, edge label), and an estimate of its width."""

    key: str
    attrs: dict[str, str]
    children: tuple[tuple[str, str], ...]

    @property
    def width(self) -> int:
        """Estimated pixels at 96 dpi: 14 pt Helvetica, ellipses wider than their text."""
        lines = self.attrs.get("label", "").split("\n")
        text = max((len(line) for line in lines), default=1) * 10 + 40
        return int(text * (1.4 if self.attrs.get("shape") in ("ellipse", "circle") else 1.0)) + 24


# ---- scope labels ----------------------------------------------------------------------------
def scope_label(graph: CircuitGraph, scope: Scope, most: int = 4) -> str:
    """A short label for a scope: its names when few, else a range, an array block, or the first
    and last names with a note that the scope is not contiguous."""
    variables = [graph.variables[i] for i in scope if i < len(graph.variables)]
    names = [v.name for v in variables]
    if len(names) <= most:
        return "{" + ", ".join(names) + "}"
    block = _array_block(names)
    if block is not None:
        return f"{block} ({len(names)} vars)"
    indices = [v.index for v in variables]
    if indices[-1] - indices[0] + 1 == len(indices):
        return f"{{{names[0]} .. {names[-1]}}} {len(names)} vars"
    return f"{{{names[0]}, {names[1]}, .. {names[-1]}}} {len(names)} vars, not contiguous"


def _array_block(names: Sequence[str]) -> str | None:
    """`x[0:7, 7:14]` when the names are exactly a rectangular block of one array, else None."""
    parsed = [_INDEXED.match(n) for n in names]
    if not all(parsed) or len({m.group(1) for m in parsed if m}) != 1:
        return None
    index = np.array([[int(i) for i in m.group(2).split(",")] for m in parsed if m])
    if index.ndim != 2:
        return None
    low, high = index.min(axis=0), index.max(axis=0) + 1
    if int(np.prod(high - low)) != len({tuple(r) for r in index.tolist()}) or len(index) != int(np.prod(high - low)):
        return None
    base = parsed[0].group(1) if parsed[0] else ""
    return f"{base}[{', '.join(f'{a}:{b}' for a, b in zip(low.tolist(), high.tolist(), strict=True))}]"


# ---- node groups -----------------------------------------------------------------------------
def _units(node: Node) -> str:
    return f" x{node.num_units}" if node.num_units > 1 else ""


def _fmt(value: object) -> str:
    array = np.asarray(value).reshape(-1)
    items = [f"{x:.3g}" if isinstance(x, (float, np.floating)) else str(x) for x in array[:6]]
    text = ", ".join(items) + (", ..." if array.size > 6 else "")
    return text if array.size == 1 else f"[{text}]"


def _input_label(graph: CircuitGraph, node: Node) -> str:
    assert node.var is not None
    label = f"{node.family}({graph.variables[node.var].name}){_units(node)}"
    if node.params is not None and node.num_units == 1:
        label += "\n" + ", ".join(f"{k}={_fmt(v)}" for k, v in node.params.items())
    return label


def circuit_items(graph: CircuitGraph) -> dict[str, Item]:
    """One item per node group (keys n0, n1, ... in insertion order)."""
    ids = {n.name: f"n{i}" for i, n in enumerate(graph.nodes())}
    items: dict[str, Item] = {}
    for node in graph.nodes():
        tooltip = f"{node.name}: {node.kind.value}{_units(node)} over {scope_text(graph, node.scope)}"
        if node.kind is NodeKind.INPUT:
            attrs = {"label": _input_label(graph, node), "shape": "box", "style": "rounded", "tooltip": tooltip}
        elif node.kind is NodeKind.PRODUCT:
            symbol = "⊗" if node.pattern == "kronecker" else "×"
            attrs = {"label": f"{symbol}{_units(node)}\n{node.name}\n{scope_label(graph, node.scope)}",
                     "shape": "ellipse", "tooltip": tooltip}
        else:
            tied = f"\ntied: {node.tie}" if node.tie else ""
            attrs = {"label": f"+{_units(node)}\n{node.name}\n{scope_label(graph, node.scope)}{tied}",
                     "shape": "ellipse", "style": "filled", "fillcolor": "#dde8f7", "tooltip": tooltip}
        edges = []
        for position, child in enumerate(node.children):
            label = ""
            if node.weights is not None and node.weights.shape == (1, len(node.children)):
                label = f"{node.weights[0, position]:.3g}"
            edges.append((ids[child], label))
        items[ids[node.name]] = Item(ids[node.name], attrs, tuple(edges))
    return items


# ---- regions ---------------------------------------------------------------------------------
def region_items(graph: CircuitGraph) -> dict[str, Item]:
    """Node groups collapsed by scope: regions (boxes, r0 ...) and partitions (products, p0 ...)."""
    regions: dict[Scope, list[Node]] = {}
    partitions: dict[tuple[Scope, tuple[Scope, ...]], list[Node]] = {}
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
    order = sorted(regions, key=lambda s: (-len(s), s))
    rid = {scope: f"r{i}" for i, scope in enumerate(order)}
    below: dict[Scope, list[tuple[str, str]]] = {scope: [] for scope in order}
    items: dict[str, Item] = {}
    for i, ((scope, child_scopes), nodes) in enumerate(partitions.items()):
        units = sum(n.num_units for n in nodes)
        below[scope].append((f"p{i}", ""))
        items[f"p{i}"] = Item(f"p{i}", {"label": f"× {units}", "shape": "circle",
                                        "tooltip": ", ".join(n.name for n in nodes[:20])},
                              tuple((rid[s], "") for s in child_scopes))
    for scope in order:
        nodes = regions[scope]
        units = sum(n.num_units for n in nodes)
        kinds = sorted({n.kind.value for n in nodes})
        label = f"{scope_label(graph, scope)}\n{', '.join(kinds) or 'products'}: {units} unit{'s' * (units != 1)}"
        items[rid[scope]] = Item(rid[scope], {"label": label, "shape": "box", "tooltip": scope_text(graph, scope)},
                                 tuple(below[scope]))
    return {k: items[k] for k in [rid[s] for s in order] + [k for k in items if k.startswith("p")]}


def highlight(graph: CircuitGraph, items: dict[str, Item], level: str,
              problems: Sequence[Diagnostic]) -> dict[str, Item]:
    """Items whose node groups a diagnostic points at, drawn red with the codes beside them."""
    codes: dict[str, list[str]] = {}
    ids = {n.name: f"n{i}" for i, n in enumerate(graph.nodes())}
    order = sorted({n.scope for n in graph.nodes() if n.kind is not NodeKind.PRODUCT}
                   | _partition_scopes(graph), key=lambda s: (-len(s), s))
    rid = {scope: f"r{i}" for i, scope in enumerate(order)}
    for d in problems:
        for node in graph.nodes():
            if node.span == d.span and node.span.source is d.span.source and node.span.line > 0:
                key = ids[node.name] if level == "circuit" else rid.get(node.scope)
                if key is not None and d.code not in codes.setdefault(key, []):
                    codes[key].append(d.code)
    out = dict(items)
    for key, found in codes.items():
        if key in out:
            item = out[key]
            attrs = {**item.attrs, **PROBLEM, "xlabel": " ".join(found),
                     "tooltip": item.attrs.get("tooltip", "") + " -- " + ", ".join(found)}
            out[key] = Item(key, attrs, item.children)
    return out


def _partition_scopes(graph: CircuitGraph) -> set[Scope]:
    scopes: set[Scope] = set()
    for node in graph.nodes():
        if node.kind is NodeKind.PRODUCT:
            scopes.add(node.scope)
            scopes.update(graph.node(c).scope for c in node.children)
    return scopes
