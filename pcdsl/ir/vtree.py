"""Structured decomposability and the vtree it implies.

A decomposable circuit is structured-decomposable exactly when the scopes of
its products and of their children form a laminar family (any two are
disjoint or nested): the family's inclusion tree, binarised, is then a vtree
that every product respects.
"""

from __future__ import annotations

from pcdsl.ir.graph import CircuitGraph, NodeKind

MAX_TEXT = 240

Scope = frozenset[int]


def _bits(mask: int) -> Scope:
    out, i = [], 0
    while mask:
        if mask & 1:
            out.append(i)
        mask >>= 1
        i += 1
    return frozenset(out)


def implied_vtree(graph: CircuitGraph) -> str | None:
    """The vtree as nested parentheses of variable names, or None when there is none."""
    root = graph.root
    family = {_bits(root.scope)}
    for node in graph.nodes():
        if node.kind is NodeKind.PRODUCT:
            family.add(_bits(node.scope))
            family.update(_bits(graph.node(c).scope) for c in node.children)
    family.update(frozenset([v]) for v in _bits(root.scope))
    parent = _inclusion_tree(family)
    if parent is None:
        return None
    children: dict[Scope, list[Scope]] = {}
    for s, p in parent.items():
        children.setdefault(p, []).append(s)
    text = _text(graph, _bits(root.scope), children)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def _inclusion_tree(family: set[Scope]) -> dict[Scope, Scope] | None:
    """Parent of each set in a laminar family, or None if the family is not laminar."""
    ordered = sorted(family, key=lambda s: (-len(s), sorted(s)))
    owner: dict[int, Scope] = {}  # variable -> smallest set seen so far that contains it
    parent: dict[Scope, Scope] = {}
    for s in ordered[1:]:
        owners = {owner.get(v, ordered[0]) for v in s}
        if len(owners) != 1:
            return None
        parent[s] = owners.pop()
        for v in s:
            owner[v] = s
    return parent


def _text(graph: CircuitGraph, s: Scope, children: dict[Scope, list[Scope]], budget: list[int] | None = None) -> str:
    budget = budget if budget is not None else [MAX_TEXT * 2]
    if len(s) == 1:
        return graph.variables[next(iter(s))].name
    if budget[0] <= 0:
        return "..."
    parts = sorted(children.get(s, []), key=min)
    budget[0] -= len(parts)
    # binarise right-linearly: (a (b c)) for three children
    texts = [_text(graph, p, children, budget) for p in parts]
    out = texts[-1]
    for t in reversed(texts[:-1]):
        out = f"({t} {out})"
    return out
