"""Structured decomposability and the vtree it implies.

A decomposable circuit is structured-decomposable exactly when the scopes of
its products and of their children form a laminar family (any two are
disjoint or nested): the family's inclusion tree, binarised, is then a vtree
that every product respects.
"""

from __future__ import annotations

import numpy as np

from pcdsl.ir.graph import CircuitGraph, NodeKind

MAX_TEXT = 240

def _variables(mask: int, nbytes: int) -> np.ndarray:
    """The set bits of a scope mask, ascending: one pass in C over the mask's bytes (a scope of
    65,536 variables takes microseconds, not a Python loop per bit)."""
    if mask & (mask - 1) == 0:
        return np.array([mask.bit_length() - 1])
    bits = np.unpackbits(np.frombuffer(mask.to_bytes(nbytes, "little"), dtype=np.uint8), bitorder="little")
    return np.flatnonzero(bits)


def implied_vtree(graph: CircuitGraph) -> str | None:
    """The vtree as nested parentheses of variable names, or None when there is none."""
    root = graph.root.scope
    family = {root}
    for node in graph.nodes():
        if node.kind is NodeKind.PRODUCT:
            family.add(node.scope)
            family.update(graph.node(c).scope for c in node.children)
    nbytes = (root.bit_length() + 7) // 8
    family.update(1 << int(v) for v in _variables(root, nbytes))
    ordered = sorted(family, key=lambda m: (-m.bit_count(), m))
    members = [_variables(m, nbytes) for m in ordered]
    parent = _inclusion_tree(members, root.bit_length())
    if parent is None:
        return None
    children: dict[int, list[int]] = {}
    for i, p in enumerate(parent[1:], start=1):
        children.setdefault(p, []).append(i)
    text = _text(graph, 0, members, children)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def _inclusion_tree(members: list[np.ndarray], n: int) -> list[int] | None:
    """Parent of each set (`members`, distinct, largest first, the first holding every other) in
    a laminar family, or None if the family is not laminar. Each set's variables must all have
    the same smallest earlier set around them, which then is its parent: work in the sum of the
    sets' sizes (variables times depth for a laminar family)."""
    owner = np.zeros(n, dtype=np.int64)  # variable -> smallest set seen so far that holds it
    parent = [0]
    for i, s in enumerate(members[1:], start=1):
        around = owner[s]
        if (around != around[0]).any():
            return None
        parent.append(int(around[0]))
        owner[s] = i
    return parent


def _text(graph: CircuitGraph, s: int, members: list[np.ndarray], children: dict[int, list[int]],
          budget: list[int] | None = None) -> str:
    budget = budget if budget is not None else [MAX_TEXT * 2]
    if len(members[s]) == 1:
        return graph.variables[int(members[s][0])].name
    if budget[0] <= 0:
        return "..."
    parts = sorted(children.get(s, []), key=lambda p: int(members[p][0]))
    budget[0] -= len(parts)
    # binarise right-linearly: (a (b c)) for three children
    texts = [_text(graph, p, members, children, budget) for p in parts]
    out = texts[-1]
    for t in reversed(texts[:-1]):
        out = f"({t} {out})"
    return out
