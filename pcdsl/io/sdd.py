"""`.sdd` files (sentential decision diagrams, the SDD package's format) with their `.vtree`.

An SDD is a logical constraint; pcdsl reads it as a deterministic, structured probabilistic
circuit: the distribution over the constraint's models in which each model ``x`` has probability
``W(x) / WMC``, where ``W(x)`` multiplies a weight per literal (1 unless the user gives weights)
and ``WMC`` is the weighted model count. So with unit weights every model is equally likely, and
the number of models consistent with evidence ``e`` is ``model_count * p(e)``, which any pcdsl
query (marginals with missing values) answers.

File: a header ``sdd COUNT`` and one line per node, children before parents, the last the root::

    F id                                  false
    T id                                  true
    L id vtree literal                    +v "variable v = 1", -v "= 0"
    D id vtree count {prime sub}+         decision node: OR of (prime AND sub)

An SDD node need not mention every variable of its vtree node (SDDs are compressed and trimmed),
so the reader *smooths* it: a prime normalised for a vtree node below the left child is lifted to
the left child by multiplying it, one vtree level at a time, with "true" over the sibling
subtree (a product of one two-valued leaf per variable, with probabilities from the literal
weights). Decision weights are the elements' weighted model counts, normalised. Everything is
one pass over the lines, children first; nothing recurses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcdsl.diagnostics import Diagnostic, PcdslError, error
from pcdsl.io.flat import BERNOULLI, INDICATOR, Builder, Flat
from pcdsl.io.textformat import MAX_SHOWN, Kind, Lines, Schema, check_children, check_ids, raise_all, read_source, scan
from pcdsl.io.variables import make_variables
from pcdsl.io.vtree_file import VtreeFile, check_places, locate
from pcdsl.ir.graph import BOOL, Variable
from pcdsl.ir.vtree import Vtree

SDD = Schema("sdd", (
    Kind("F", "false node", ("id",)),
    Kind("T", "true node", ("id",)),
    Kind("L", "literal node", ("id", "vtree", "literal")),
    Kind("D", "decision node", ("id", "vtree", "count"), ("prime", "sub"), counted=True, min_repeat=1),
), frozenset())

TRUE = "true"  # the state of a true node: no vtree node of its own
Placed = tuple[int, int, float, int]  # (position, vtree node, log weight, models) of a node with models
State = Placed | str | None  # ... or TRUE, or None for false
Lifted = tuple[int, float, int]  # (position, log weight, models) over a chosen vtree node


@dataclass
class Sdd:
    """An SDD read as a circuit: the distribution over its models (module doc)."""

    flat: Flat
    model_count: int | None  # exact number of models over the vtree's variables (None when weighted)
    log_weight: float  # natural log of the weighted model count (of the model count, unweighted)


def read_sdd(path: str | Path, vtree: VtreeFile, weights: np.ndarray | None = None) -> Sdd:
    """Read a .sdd (or .sdd.gz) file normalised for `vtree` into a smooth, deterministic circuit.
    `weights`: optional (variables, 2) array of literal weights, column 0 for "v = 0" and column 1
    for "v = 1", non-negative (default all 1). Raises PcdslError with every problem found."""
    source = read_source(path)
    lines = scan(source, SDD)
    problems: list[Diagnostic] = []
    by_id = check_ids(lines, problems)
    raise_all(problems)
    owners, k = lines.items("D", "prime")[0], lines.item_index("D")
    children = {}
    for name in ("prime", "sub"):
        ids = lines.items("D", name)[1].astype(np.int64)
        children[name] = check_children(lines, by_id, owners, ids, SDD.kind("D").token(name) + 2 * k, problems)
    raise_all(problems)
    at = _check_vtree(lines, vtree, owners, k, children["prime"], children["sub"], problems)
    raise_all(problems)
    count = int(vtree.vtree.var.max()) + 1
    table = _weights(weights, count, lines, problems)
    raise_all(problems)
    smoother = _Smoother(vtree.vtree, table, make_variables(count, dict.fromkeys(range(count), BOOL), {}))
    root = smoother.run(lines, at, owners, children["prime"], children["sub"])
    if root is None:
        what = "weighted model count is 0" if weights is not None else "constraint has no models"
        raise PcdslError([error("E0710", f"the {what}: there is no distribution over its models",
                                lines.span(len(lines) - 1),
                                help="an unsatisfiable SDD (false) cannot become a probabilistic circuit")])
    flat = smoother.b.build(source)
    flat.name = Path(path).name.split(".")[0] or "sdd"
    _, log_weight, models = root
    return Sdd(flat, models if weights is None else None, log_weight)


def _check_vtree(lines: Lines, vtree_file: VtreeFile, owners: np.ndarray, k: np.ndarray, primes: np.ndarray,
                 subs: np.ndarray, problems: list[Diagnostic]) -> np.ndarray:
    """Each line's vtree node (-1 for true and false); literals at their variable's leaf, decision
    nodes at inner nodes with primes below the left child and subs below the right child."""
    vtree = vtree_file.vtree
    lits = lines.of_kind("L")
    at = locate(lines, vtree_file, np.concatenate([lits, lines.of_kind("D")]), problems)
    if problems:
        return at
    check_places(lines, vtree_file, at, lits, np.abs(lines.ints(lits, "L", "literal")) - 1, lines.of_kind("D"),
                 problems)
    if problems:
        return at
    lo, hi = vtree.bounds
    for name, children, side, token in (("prime", primes, vtree.left, 4), ("sub", subs, vtree.right, 5)):
        target = side[at[owners]]
        child = at[children]
        bad = (child >= 0) & ((lo[child] < lo[target]) | (hi[child] > hi[target]))
        for e in np.flatnonzero(bad)[:MAX_SHOWN - len(problems)]:
            where = "left" if name == "prime" else "right"
            problems.append(error("E0708", f"{name} {lines.values[lines.offsets[children[e]]]:.0f} sits at "
                                  f"{vtree_file.describe(int(child[e]))}, outside the {where} subtree of this decision "
                                  f"node's {vtree_file.describe(int(at[owners[e]]))}",
                                  lines.span(int(owners[e]), token + 2 * int(k[e]) - 1),
                                  help=f"the {name}s of a decision node at vtree node v lie in v's {where} subtree"))
    return at


def _weights(weights: np.ndarray | None, count: int, lines: Lines, problems: list[Diagnostic]) -> np.ndarray:
    if weights is None:
        return np.ones((count, 2))
    table = np.asarray(weights, dtype=np.float64)
    if table.shape != (count, 2) or not (np.isfinite(table).all() and (table >= 0).all()):
        problems.append(error("E0309", f"literal weights must be a ({count}, 2) array of finite non-negative numbers, "
                              f"found shape {table.shape}", lines.header_span()))
    return table


class _Smoother:
    """Builds the smooth circuit of an SDD, line by line (module doc)."""

    def __init__(self, vtree: Vtree, weights: np.ndarray, variables: tuple[Variable, ...]) -> None:
        self.vtree, self.weights = vtree, weights
        self.b = Builder(variables, "sdd")
        with np.errstate(divide="ignore"):
            per_var = np.log(weights.sum(axis=1))
        self.true_log = np.zeros(len(vtree))
        for u in range(len(vtree)):  # children first
            self.true_log[u] = per_var[vtree.var[u]] if vtree.is_leaf(u) else \
                self.true_log[vtree.left[u]] + self.true_log[vtree.right[u]]
        self.true_at: dict[int, int] = {}
        self.literals: dict[int, int] = {}
        self.lifted: dict[tuple[int, int], Lifted] = {}

    def true(self, u: int) -> int:
        """The circuit of "true" over vtree node u's variables (made once, without recursion)."""
        stack = [u]
        while stack:
            x = stack[-1]
            if x in self.true_at:
                stack.pop()
            elif self.vtree.is_leaf(x):
                v = int(self.vtree.var[x])
                total = self.weights[v].sum()
                self.true_at[x] = self.b.leaf(BERNOULLI, v, [self.weights[v, 1] / total if total > 0 else 0.5],
                                              f"free{v}")
                stack.pop()
            else:
                left, right = int(self.vtree.left[x]), int(self.vtree.right[x])
                missing = [c for c in (right, left) if c not in self.true_at]
                if missing:
                    stack += missing
                else:
                    self.true_at[x] = self.b.product([self.true_at[left], self.true_at[right]], f"true{x}")
                    stack.pop()
        return self.true_at[u]

    def run(self, lines: Lines, at: np.ndarray, owners: np.ndarray, primes: np.ndarray, subs: np.ndarray
            ) -> Lifted | None:
        """The root's (position, log weight, models) over the whole vtree, or None without models."""
        starts = np.searchsorted(owners, np.arange(len(lines) + 1))
        states: list[State] = []
        ids = lines.values[lines.offsets[:-1]].astype(np.int64).tolist()
        for i in range(len(lines)):
            self.b.line = int(lines.numbers[i])
            letter = chr(lines.letters[i])
            if letter == "F":
                states.append(None)
            elif letter == "T":
                states.append(TRUE)
            elif letter == "L":
                states.append(self._literal(int(lines.values[lines.offsets[i] + 2]), int(at[i])))
            else:
                a, b = starts[i], starts[i + 1]
                pairs = zip(primes[a:b].tolist(), subs[a:b].tolist(), strict=True)
                states.append(self._decision(ids[i], int(at[i]), pairs, states))
        return self._lift(len(lines) - 1, states[-1], self.vtree.root)

    def _literal(self, literal: int, u: int) -> Placed | None:
        v = abs(literal) - 1
        w = self.weights[v, int(literal > 0)]
        if w == 0:
            return None
        if literal not in self.literals:
            self.literals[literal] = self.b.leaf(INDICATOR, v, [float(literal > 0)], f"lit{literal}")
        return self.literals[literal], u, math.log(w), 1

    def _decision(self, node_id: int, v: int, pairs: Iterable[tuple[int, int]], states: list[State]) -> Placed | None:
        left, right = int(self.vtree.left[v]), int(self.vtree.right[v])
        elements: list[Lifted] = []
        for p, s in pairs:
            a, b = self._lift(p, states[p], left), self._lift(s, states[s], right)
            if a is None or b is None:
                continue
            pos = self.b.product([a[0], b[0]], f"sdd{node_id}.{len(elements)}")
            elements.append((pos, a[1] + b[1], a[2] * b[2]))
        if not elements:
            return None
        if len(elements) == 1:
            pos, log_w, models = elements[0]
            return pos, v, log_w, models
        logs = np.array([e[1] for e in elements])
        total = float(np.logaddexp.reduce(logs))
        pos = self.b.sum([e[0] for e in elements], np.exp(logs - total).tolist(), f"sdd{node_id}")
        return pos, v, total, sum(e[2] for e in elements)

    def _lift(self, line: int, state: State, target: int) -> Lifted | None:
        """A node's circuit over `target`'s variables: itself times "true" over what it lacks."""
        if state is None:
            return None
        if isinstance(state, str):  # TRUE
            return self.true(target), float(self.true_log[target]), 1 << self.vtree.size(target)
        pos, u, log_w, models = state
        if not np.isfinite(log_w):
            return None
        parent = self.vtree.parent
        while u != target:
            key = (line, int(parent[u]))
            if key not in self.lifted:
                a = int(parent[u])
                sibling = int(self.vtree.right[a] if self.vtree.left[a] == u else self.vtree.left[a])
                pair = [pos, self.true(sibling)] if self.vtree.left[a] == u else [self.true(sibling), pos]
                self.lifted[key] = (self.b.product(pair), log_w + float(self.true_log[sibling]),
                                    models << self.vtree.size(sibling))
            pos, log_w, models = self.lifted[key]
            u = key[1]
        return pos, log_w, models
