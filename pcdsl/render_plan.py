"""Pictures of single node groups and of layered plans (what a compiled model runs), as
deterministic DOT text (and the DOT quoting every picture uses); :func:`pcdsl.render.picture`
draws them."""

from __future__ import annotations

import numpy as np

from pcdsl.ir.graph import Node, NodeKind
from pcdsl.plan import InputLayer, LayeredPlan, ProductLayer, SumLayer

_FONTS = '  node [fontname="Helvetica"];\n  edge [fontname="Helvetica", fontsize=10];'


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(**kw: str) -> str:
    return "[" + ", ".join(f"{k}={_quote(v)}" for k, v in sorted(kw.items())) + "]"


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
