"""Structured decomposability and the vtree it implies.

A decomposable circuit is structured-decomposable exactly when the scopes of
its products and of their children form a laminar family (any two are
disjoint or nested): the family's inclusion tree, binarised, is then a vtree
that every product respects. Scopes are :class:`~pcdsl.ir.scope.Scope` sets; the
tree is found in time linear in the sum of the family's set sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from pcdsl.ir.graph import CircuitGraph, NodeKind
from pcdsl.ir.scope import Scope

MAX_TEXT = 240


@dataclass(frozen=True)
class Laminar:
    """A laminar family's inclusion tree: `members[i]` the variables of set i (largest first, set 0
    the root), `children[i]` the sets directly below set i."""

    members: list[np.ndarray]
    children: dict[int, list[int]]


def laminar(family: set[Scope], root: Scope) -> Laminar | None:
    """The inclusion tree of the scopes `family` with `root` and every singleton of it added, or
    None when the family is not laminar."""
    # singletons are laminar with everything: they join at the end as variables
    ordered = sorted({m for m in family if len(m) > 1} | {root}, key=lambda m: (-len(m), m.low, m.bits))
    members = [m.variables() for m in ordered]
    owner = np.zeros(root.top, dtype=np.int64)
    parent = _inclusion_tree(members, root.top, owner)
    if parent is None:
        return None
    if len(members[0]) > 1:  # a one-variable root is its own (only) leaf
        singles = members[0]
        parent += owner[singles].tolist()
        members += list(singles[:, None])
    children: dict[int, list[int]] = {}
    for i, p in enumerate(parent[1:], start=1):
        children.setdefault(p, []).append(i)
    for kids in children.values():
        kids.sort(key=lambda i: int(members[i][0]))  # by their smallest variable
    return Laminar(members, children)


def implied_vtree(graph: CircuitGraph) -> str | None:
    """The vtree as nested parentheses of variable names, or None when there is none."""
    family = set()
    for node in graph.nodes():
        if node.kind is NodeKind.PRODUCT:
            family.add(node.scope)
            # a leaf's scope is one variable, which laminar() adds anyway
            family.update(child.scope for child in map(graph.node, node.children)
                          if child.kind is not NodeKind.INPUT)
    tree = laminar(family, graph.root.scope)
    if tree is None:
        return None
    text = _text(graph, 0, tree)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def _inclusion_tree(members: list[np.ndarray], n: int, owner: np.ndarray | None = None) -> list[int] | None:
    """Parent of each set (`members`, distinct, largest first, the first holding every other) in
    a laminar family, or None if the family is not laminar. Each set's variables must all have
    the same smallest earlier set around them, which then is its parent: work in the sum of the
    sets' sizes (variables times depth for a laminar family). `owner`, when given (n zeros), ends
    holding each variable's smallest set."""
    owner = np.zeros(n, dtype=np.int64) if owner is None else owner  # variable -> smallest set so far
    parent = [0]
    for i, s in enumerate(members[1:], start=1):
        around = owner[s]
        if (around != around[0]).any():
            return None
        parent.append(int(around[0]))
        owner[s] = i
    return parent


def _text(graph: CircuitGraph, s: int, tree: Laminar, budget: list[int] | None = None) -> str:
    budget = budget if budget is not None else [MAX_TEXT * 2]
    if len(tree.members[s]) == 1:
        return graph.variables[int(tree.members[s][0])].name
    if budget[0] <= 0:
        return "..."
    parts = tree.children.get(s, [])
    budget[0] -= len(parts)
    # binarise right-linearly: (a (b c)) for three children
    texts = [_text(graph, p, tree, budget) for p in parts]
    out = texts[-1]
    for t in reversed(texts[:-1]):
        out = f"({t} {out})"
    return out


@dataclass(frozen=True, eq=False)
class Vtree:
    """A full binary tree whose leaves are variables (0-based data columns).

    Nodes are stored children first, so the last one is the root: node ``i`` is a leaf of
    variable ``var[i]`` when ``var[i] >= 0``, else it has children ``left[i]`` and ``right[i]``.
    ``ids`` are the node ids of the file the vtree came from (in-order positions, the SDD
    package's convention, for vtrees made here). Nothing here recurses, so a vtree as deep as
    it is wide costs no stack.
    """

    left: np.ndarray
    right: np.ndarray
    var: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.var)

    @property
    def root(self) -> int:
        return len(self.var) - 1

    def is_leaf(self, node: int) -> bool:
        return bool(self.var[node] >= 0)

    @cached_property
    def parent(self) -> np.ndarray:
        """Each node's parent (-1 for the root)."""
        parent = np.full(len(self), -1, dtype=np.int64)
        inner = np.flatnonzero(self.var < 0)
        parent[self.left[inner]] = inner
        parent[self.right[inner]] = inner
        return parent

    @cached_property
    def _intervals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(leaf variables left to right, lo, hi): node v's variables are order[lo[v]:hi[v]]."""
        lo = np.zeros(len(self), dtype=np.int64)
        hi = np.zeros(len(self), dtype=np.int64)
        order: list[int] = []
        stack = [(self.root, False)]
        while stack:
            node, done = stack.pop()
            if self.var[node] >= 0:
                lo[node], hi[node] = len(order), len(order) + 1
                order.append(int(self.var[node]))
            elif done:
                lo[node], hi[node] = lo[self.left[node]], hi[self.right[node]]
            else:
                stack += [(node, True), (int(self.right[node]), False), (int(self.left[node]), False)]
        return np.array(order, dtype=np.int64), lo, hi

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) of every node: its variables are ``order[lo:hi]``."""
        return self._intervals[1], self._intervals[2]

    @property
    def order(self) -> np.ndarray:
        """The variables of the leaves, left to right."""
        return self._intervals[0]

    def variables(self, node: int) -> np.ndarray:
        _, lo, hi = self._intervals
        return self.order[lo[node]:hi[node]]

    def size(self, node: int) -> int:
        """How many variables lie under `node`."""
        _, lo, hi = self._intervals
        return int(hi[node] - lo[node])

    def is_under(self, node: int, ancestor: int) -> bool:
        """Whether `node` is `ancestor` or lies in its subtree."""
        _, lo, hi = self._intervals
        return bool(lo[ancestor] <= lo[node] and hi[node] <= hi[ancestor])

    @cached_property
    def leaf_of(self) -> dict[int, int]:
        """The leaf node of each variable."""
        return {int(v): int(i) for i, v in enumerate(self.var) if v >= 0}

    def text(self, names: list[str] | None = None) -> str:
        """Nested parentheses of variable names, ``((a b) c)``, cut to MAX_TEXT characters."""
        parts: list[str] = []
        for i in range(len(self)):  # children first, so both parts exist; lengths capped as we go
            if self.var[i] >= 0:
                v = int(self.var[i])
                parts.append(names[v] if names is not None and v < len(names) else f"x[{v}]")
            else:
                part = f"({parts[self.left[i]]} {parts[self.right[i]]})"
                parts.append(part if len(part) <= MAX_TEXT else part[: MAX_TEXT - 3] + "...")
        return parts[-1]

    @staticmethod
    def build(left: list[int], right: list[int], var: list[int], ids: list[int] | None = None) -> Vtree:
        """A vtree from children-first lists (ids default to in-order positions)."""
        tree = Vtree(np.array(left, dtype=np.int64), np.array(right, dtype=np.int64),
                     np.array(var, dtype=np.int64), np.zeros(len(var), dtype=np.int64))
        if ids is None:
            return Vtree(tree.left, tree.right, tree.var, tree.in_order_ids())
        return Vtree(tree.left, tree.right, tree.var, np.array(ids, dtype=np.int64))

    def in_order_ids(self) -> np.ndarray:
        """Each node's position in an in-order walk (left subtree, node, right subtree)."""
        _, lo, hi = self._intervals
        # a leaf at leaf position k has k leaves and k inner nodes before it in order
        ids = 2 * lo
        inner = self.var < 0
        ids[inner] = 2 * hi[self.left[inner]] - 1  # just after the last leaf of the left subtree
        return ids

    @staticmethod
    def from_triples(nodes: list[tuple[int, int, int]]) -> Vtree:
        """A vtree from (left, right, var) triples, children first (-1 where a field is absent)."""
        left, right, var = zip(*nodes, strict=True) if nodes else ((), (), ())
        return Vtree.build(list(left), list(right), list(var))

    @staticmethod
    def balanced(variables: list[int]) -> Vtree:
        """A balanced vtree over `variables`, in that order."""
        nodes = [(-1, -1, v) for v in variables]
        level = list(range(len(nodes)))
        while len(level) > 1:
            nxt = []
            for a, b in zip(level[::2], level[1::2], strict=False):
                nodes.append((a, b, -1))
                nxt.append(len(nodes) - 1)
            level = nxt + level[len(nxt) * 2:]  # an odd one out moves up a level
        return Vtree.from_triples(nodes)

    @staticmethod
    def right_linear(variables: list[int]) -> Vtree:
        """A right-linear vtree ``(a (b (c d)))`` over `variables`, in that order."""
        nodes = [(-1, -1, v) for v in variables]
        top = len(variables) - 1
        for leaf in range(len(variables) - 2, -1, -1):
            nodes.append((leaf, top, -1))
            top = len(nodes) - 1
        return Vtree.from_triples(nodes)


def vtree_of_scopes(family: set[Scope], root: Scope) -> Vtree | None:
    """The vtree of a laminar family of scopes (with `root` and every singleton of it
    added), children ordered by their smallest variable and binarised right-linearly; None when
    the family is not laminar."""
    tree = laminar(family, root)
    if tree is None:
        return None
    nodes: list[tuple[int, int, int]] = []
    index: dict[int, int] = {}
    for s in reversed(range(len(tree.members))):  # smaller sets first: a set's children come before it
        if len(tree.members[s]) == 1:
            nodes.append((-1, -1, int(tree.members[s][0])))
            index[s] = len(nodes) - 1
            continue
        parts = [index[c] for c in tree.children[s]]
        top = parts[-1]
        for part in reversed(parts[:-1]):
            nodes.append((part, top, -1))
            top = len(nodes) - 1
        index[s] = top
    return Vtree.from_triples(nodes)  # the root, the one largest set, comes last
