"""The structural validator against an independent model of random small circuits.

Circuits are generated as .pc text (2-5 bool/categorical variables; leaves,
products and sums over random or well-formed sets of existing nodes, shared
nodes, declarations in random order). The truth is computed here, from the
generated structure alone: scopes, which sums are smooth, which products are
decomposable, how many roots, whether the product scopes form a laminar
family, and (by enumerating every assignment) which sums are deterministic.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass, field

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import pcdsl
from pcdsl.ir.graph import NodeKind

SETTINGS = dict(derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
STRUCTURAL = {"E0202", "E0203", "E0204"}


@dataclass
class Var:
    name: str
    size: int
    domain: str  # "bool" | "categorical(k)"


@dataclass
class Spec:
    name: str
    kind: str  # "leaf" | "prod" | "sum"
    children: list[str] = field(default_factory=list)
    var: int | None = None
    table: list[float] | None = None  # P(var = k); None: parameters omitted (learned)
    call: str = ""  # the leaf's distribution, as written
    weights: list[float] | None = None  # None: omitted (learned)
    weight_text: list[str] | None = None
    outer: bool = False


@dataclass
class Circuit:
    variables: list[Var]
    nodes: dict[str, Spec]
    text: str = ""
    line: dict[str, int] = field(default_factory=dict)


# ---- the independent model -------------------------------------------------------------------
def scopes(c: Circuit) -> dict[str, int]:
    out: dict[str, int] = {}

    def scope(name: str) -> int:
        if name not in out:
            n = c.nodes[name]
            if n.kind == "leaf":
                assert n.var is not None
                out[name] = 1 << n.var
            else:
                s = 0
                for ch in n.children:
                    s |= scope(ch)
                out[name] = s
        return out[name]

    for name in c.nodes:
        scope(name)
    return out


def roots(c: Circuit) -> list[str]:
    used = {ch for n in c.nodes.values() for ch in n.children}
    return [name for name in c.nodes if name not in used]


def non_smooth(c: Circuit, sc: dict[str, int]) -> set[str]:
    return {n.name for n in c.nodes.values() if n.kind == "sum" and len({sc[ch] for ch in n.children}) > 1}


def non_decomposable(c: Circuit, sc: dict[str, int]) -> set[str]:
    return {n.name for n in c.nodes.values() if n.kind == "prod"
            and any(sc[a] & sc[b] for a, b in itertools.combinations(n.children, 2))}


def laminar(c: Circuit, sc: dict[str, int]) -> bool:
    family = set()
    for n in c.nodes.values():
        if n.kind == "prod":
            family.add(sc[n.name])
            family.update(sc[ch] for ch in n.children)
    return all(a & b in (0, a, b) for a, b in itertools.combinations(family, 2))


def descendants(c: Circuit, name: str) -> set[str]:
    seen: set[str] = set()
    stack = [name]
    while stack:
        for ch in c.nodes[stack.pop()].children:
            if ch not in seen:
                seen.add(ch)
                stack.append(ch)
    return seen


def values(c: Circuit) -> dict[str, np.ndarray]:
    """Each node's value at every joint assignment (omitted parameters: uniform, i.e. positive)."""
    sizes = [v.size for v in c.variables]
    grid = np.indices(sizes).reshape(len(sizes), -1)
    out: dict[str, np.ndarray] = {}

    def value(name: str) -> np.ndarray:
        if name not in out:
            n = c.nodes[name]
            if n.kind == "leaf":
                assert n.var is not None
                size = c.variables[n.var].size
                table = n.table if n.table is not None else [1.0 / size] * size
                out[name] = np.asarray(table, dtype=np.float64)[grid[n.var]]
            elif n.kind == "prod":
                out[name] = np.prod([value(ch) for ch in n.children], axis=0)
            else:
                w = n.weights if n.weights is not None else [1.0 / len(n.children)] * len(n.children)
                out[name] = sum(wi * value(ch) for wi, ch in zip(w, n.children, strict=True))
        return out[name]

    for name in c.nodes:
        value(name)
    return out


def non_deterministic(c: Circuit) -> set[str]:
    """Sums where, at some assignment, two children with positive weight are both non-zero."""
    val = values(c)
    bad = set()
    for n in c.nodes.values():
        if n.kind != "sum":
            continue
        w = n.weights if n.weights is not None else [1.0] * len(n.children)
        live = [val[ch] > 0 for ch, wi in zip(n.children, w, strict=True) if wi > 0]
        if live and np.any(np.sum(live, axis=0) > 1):
            bad.add(n.name)
    return bad


# ---- generation ----------------------------------------------------------------------------------
PROBS = ["0", "0.0", "0.25", "0.5", "0.9", "1", "1.0"]


def positive_counts(draw, n: int) -> list[int]:  # type: ignore[no-untyped-def]
    """n counts in 0..3, not all zero (zero: a zero weight or probability)."""
    counts = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    if not any(counts):
        counts[draw(st.integers(0, n - 1))] = draw(st.integers(1, 3))
    return counts


class Gen:
    def __init__(self, draw, variables: list[Var]):  # type: ignore[no-untyped-def]
        self.draw = draw
        self.c = Circuit(variables, {})
        self.count = 0

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    # nodes
    def leaf(self, v: int, family: str | None = None, value: int | None = None) -> str:
        draw, var = self.draw, self.c.variables[v]
        if family is None:
            family = draw(st.sampled_from(["bernoulli", "categorical", "indicator"] if var.size == 2 and
                                          var.domain == "bool" else ["categorical", "indicator"]))
        given_ = draw(st.integers(0, 4)) > 0
        if family == "indicator":
            k = value if value is not None else draw(st.integers(0, var.size - 1))
            table: list[float] | None = [1.0 if i == k else 0.0 for i in range(var.size)]
            call = draw(st.sampled_from([f"indicator({var.name}, {k})", f"indicator({var.name}, value = {k})"]))
        elif family == "bernoulli":
            if given_:
                p = draw(st.sampled_from(PROBS))
                table = [1.0 - float(p), float(p)]
                call = draw(st.sampled_from([f"bernoulli({var.name}, p = {p})", f"bernoulli({var.name}, {p})"]))
            else:
                table, call = None, f"bernoulli({var.name})"
        else:
            if given_:
                counts = positive_counts(draw, var.size)
                texts = [repr(x / sum(counts)) for x in counts]
                table = [float(t) for t in texts]
                probs = "[" + ", ".join(texts) + "]"
                call = draw(st.sampled_from([f"categorical({var.name}, {probs})",
                                             f"categorical({var.name}, probs = {probs})"]))
            else:
                table, call = None, f"categorical({var.name})"
        name = self.fresh("l")
        self.c.nodes[name] = Spec(name, "leaf", var=v, table=table, call=call)
        return name

    def prod(self, children: list[str]) -> str:
        assert len(children) >= 2
        name = self.fresh("p")
        self.c.nodes[name] = Spec(name, "prod", list(children), outer=self.draw(st.integers(0, 3)) == 0)
        return name

    def sum(self, children: list[str]) -> str:
        assert children and len(set(children)) == len(children)
        name = self.fresh("s")
        self.c.nodes[name] = Spec(name, "sum", list(children))
        self.reweigh(self.c.nodes[name])
        return name

    def reweigh(self, n: Spec) -> None:
        draw = self.draw
        if draw(st.booleans()):
            n.weights = n.weight_text = None
            return
        counts = positive_counts(draw, len(n.children))
        total = sum(counts)
        if draw(st.booleans()):
            n.weight_text = [f"{k}/{total}" for k in counts]
            n.weights = [k / total for k in counts]
        else:
            n.weight_text = [repr(k / total) for k in counts]
            n.weights = [float(t) for t in n.weight_text]

    # well-formed construction, top-down from a scope
    def build(self, vs: tuple[int, ...], depth: int) -> str:
        draw, c = self.draw, self.c
        mask = sum(1 << v for v in vs)
        sc = scopes(c)
        same = [n for n in c.nodes if sc[n] == mask]
        if same and (len(c.nodes) > 24 or draw(st.integers(0, 3)) == 0):
            return draw(st.sampled_from(same))  # a shared node
        if len(c.nodes) > 24:
            depth = 0
        if len(vs) == 1:
            v = vs[0]
            choice = draw(st.integers(0, 2)) if depth > 0 else 0
            if choice == 0:
                return self.leaf(v)
            if choice == 1:  # a deterministic mixture of indicators
                vals = draw(st.lists(st.integers(0, c.variables[v].size - 1), min_size=1, unique=True))
                return self.sum([self.leaf(v, "indicator", k) for k in vals])
            kids = list(dict.fromkeys(self.build(vs, depth - 1) for _ in range(draw(st.integers(1, 3)))))
            return self.sum(kids)
        kind = draw(st.sampled_from(["prod", "sum", "sum", "split"])) if depth > 0 else "prod"
        if kind == "prod":
            order = draw(st.permutations(vs))
            k = draw(st.integers(2, min(3, len(vs))))
            cuts = sorted(draw(st.permutations(range(1, len(vs))))[:k - 1])
            parts = [tuple(order[a:b]) for a, b in zip([0, *cuts], [*cuts, len(vs)], strict=True)]
            return self.prod([self.build(part, depth - 1) for part in parts])
        if kind == "sum":
            kids = list(dict.fromkeys(self.build(vs, depth - 1) for _ in range(draw(st.integers(1, 3)))))
            return self.sum(kids)
        # split: sum over (indicator(v = k) * circuit over the rest): deterministic by construction
        v = draw(st.sampled_from(vs))
        rest = tuple(u for u in vs if u != v)
        vals = draw(st.lists(st.integers(0, c.variables[v].size - 1), min_size=1, max_size=3, unique=True))
        return self.sum([self.prod([self.leaf(v, "indicator", k), self.build(rest, depth - 1)]) for k in vals])

    # random construction, bottom-up
    def random_dag(self) -> None:
        draw, c = self.draw, self.c
        for v in range(len(c.variables)):
            for _ in range(draw(st.integers(0 if v else 1, 2))):
                self.leaf(v)
        for _ in range(draw(st.integers(2, 7))):
            existing = list(c.nodes)
            sc = scopes(c)
            kind = draw(st.sampled_from(["prod", "sum"]))
            tidy = draw(st.booleans())
            if kind == "prod" and len(existing) >= 2:
                if tidy:  # children with disjoint scopes, when there are some
                    kids, seen = [], 0
                    for n in draw(st.permutations(existing)):
                        if not sc[n] & seen and len(kids) < 3:
                            kids.append(n)
                            seen |= sc[n]
                else:
                    kids = draw(st.lists(st.sampled_from(existing), min_size=2, max_size=4))
                if len(kids) >= 2:
                    self.prod(kids)
            elif kind == "sum":
                if tidy:  # children with one scope
                    target = sc[draw(st.sampled_from(existing))]
                    pool = [n for n in existing if sc[n] == target]
                else:
                    pool = existing
                self.sum(draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4, unique=True)))

    def mutate(self) -> None:
        """Add, replace or drop a child somewhere (never creating a cycle)."""
        draw, c = self.draw, self.c
        inner = [n for n in c.nodes.values() if n.kind != "leaf"]
        if not inner:
            return
        n = draw(st.sampled_from(inner))
        op = draw(st.sampled_from(["add", "replace", "drop"]))
        ok = [m for m in c.nodes if m != n.name and n.name not in descendants(c, m)]
        if n.kind == "sum":
            ok = [m for m in ok if m not in n.children]
        if op == "drop" and len(n.children) > (2 if n.kind == "prod" else 1):
            del n.children[draw(st.integers(0, len(n.children) - 1))]
        elif ok and op == "replace":
            n.children[draw(st.integers(0, len(n.children) - 1))] = draw(st.sampled_from(ok))
        elif ok:
            n.children.append(draw(st.sampled_from(ok)))
        if n.kind == "sum":
            if len(set(n.children)) != len(n.children):  # a replacement may repeat a child
                n.children = list(dict.fromkeys(n.children))
            self.reweigh(n)

    def join_roots(self) -> None:
        """One root, usually: a sum or product over the unused nodes (which may itself be broken)."""
        c, draw = self.c, self.draw
        top = roots(c)
        if len(top) <= 1 or draw(st.integers(0, 9)) == 0:
            return
        sc = scopes(c)
        if len({sc[r] for r in top}) == 1:
            kind = "sum"
        elif not any(sc[a] & sc[b] for a, b in itertools.combinations(top, 2)):
            kind = "prod"
        else:
            kind = draw(st.sampled_from(["sum", "prod"]))
        self.sum(top) if kind == "sum" else self.prod(top)


def write(c: Circuit, draw) -> None:  # type: ignore[no-untyped-def]
    rnd = random.Random(draw(st.integers(0, 2**32)))  # the layout: one draw, so cheap for hypothesis
    lines = ["# generated", "circuit gen {"]
    i = 0
    while i < len(c.variables):  # consecutive variables of one domain may share a declaration
        j = i + 1
        while j < len(c.variables) and c.variables[j].domain == c.variables[i].domain and rnd.random() < 0.5:
            j += 1
        lines.append(f"  var {', '.join(v.name for v in c.variables[i:j])} : {c.variables[i].domain}")
        i = j
    order = list(c.nodes)
    rnd.shuffle(order)  # any order: pcdsl sorts the declarations
    for name in order:
        n = c.nodes[name]
        if n.kind == "leaf":
            decl = f"leaf {name} = {n.call}"
        elif n.kind == "prod":
            decl = f"prod {name} = " + (f"outer({', '.join(n.children)})" if n.outer else " * ".join(n.children))
        else:
            terms = n.children if n.weight_text is None else \
                [f"{w} {ch}" for w, ch in zip(n.weight_text, n.children, strict=True)]
            decl = f"sum {name} = " + " + ".join(terms)
        if rnd.random() < 0.2:
            lines.append(rnd.choice(["", "  # a comment", f"  const K{len(lines)} = 1"]))
        c.line[name] = len(lines) + 1
        lines.append("  " + decl + rnd.choice(["", "", ";"]))
    lines.append("}")
    c.text = "\n".join(lines) + "\n"


@st.composite
def circuits(draw) -> Circuit:  # type: ignore[no-untyped-def]
    variables = []
    for i in range(draw(st.integers(2, 5))):
        size = draw(st.sampled_from([2, 2, 2, 3, 4]))
        domain = "bool" if size == 2 and draw(st.integers(0, 3)) > 0 else f"categorical({size})"
        variables.append(Var(f"v{i}", size, domain))
    g = Gen(draw, variables)
    mode = draw(st.sampled_from(["well_formed", "well_formed", "mutated", "random"]))
    if mode == "random":
        g.random_dag()
    else:
        n = len(variables)
        vs = tuple(range(n)) if draw(st.integers(0, 4)) else tuple(sorted(draw(
            st.sets(st.integers(0, n - 1), min_size=1, max_size=n))))
        g.build(vs, draw(st.integers(1, 3)))
        if mode == "mutated":
            for _ in range(draw(st.integers(1, 2))):
                g.mutate()
    g.join_roots()
    write(g.c, draw)
    return g.c


# ---- the property ---------------------------------------------------------------------------------
NAMED = {"E0203": re.compile(r"^sum node '([^']+)' is not smooth"),
         "E0204": re.compile(r"^product node '([^']+)' is not decomposable")}


@settings(max_examples=600, **SETTINGS)
@given(c=circuits())
def test_validator_agrees_with_an_independent_model(c: Circuit) -> None:
    sc = scopes(c)
    bad_sums, bad_prods, top = non_smooth(c, sc), non_decomposable(c, sc), roots(c)
    valid = not bad_sums and not bad_prods and len(top) == 1
    event("valid" if valid else "broken")
    try:
        checked = pcdsl.check_text(c.text, "gen.pc")
    except pcdsl.PcdslError as exc:
        assert not valid, f"a valid circuit was rejected:\n{exc}\n{c.text}"
        codes = [d.code for d in exc.diagnostics if d.is_error]
        assert set(codes) <= STRUCTURAL, f"unexpected errors:\n{exc}\n{c.text}"
        assert ("E0202" in codes) == (len(top) > 1), f"{codes}, roots {top}\n{c.text}"
        event(f"errors: {sorted(set(codes))}")
        named: dict[str, list[str]] = {"E0203": [], "E0204": []}
        for d in exc.diagnostics:
            if d.code in NAMED:
                m = NAMED[d.code].match(d.message)
                assert m, d.message
                named[d.code].append(m.group(1))
                assert d.span.line == c.line[m.group(1)], f"{d.code} for '{m.group(1)}' at line {d.span.line}"
        assert sorted(named["E0203"]) == sorted(bad_sums), f"{named['E0203']} != {bad_sums}\n{c.text}"
        assert sorted(named["E0204"]) == sorted(bad_prods), f"{named['E0204']} != {bad_prods}\n{c.text}"
        return
    assert valid, f"accepted, but non-smooth {bad_sums}, non-decomposable {bad_prods}, roots {top}\n{c.text}"
    graph = checked.circuits["gen"]
    assert [v.name for v in graph.variables] == [v.name for v in c.variables]
    assert {n.name for n in graph.nodes()} == set(c.nodes)
    for name, spec in c.nodes.items():
        node = graph.node(name)
        assert node.kind is {"leaf": NodeKind.INPUT, "prod": NodeKind.PRODUCT, "sum": NodeKind.SUM}[spec.kind]
        assert node.children == tuple(spec.children)
        assert node.scope.mask == sc[name], f"scope of '{name}': {node.scope} != {sc[name]:b}\n{c.text}"
    props = checked.properties["gen"]
    assert props.smooth and props.decomposable
    mixing = any(n.kind == "sum" and len(n.children) > 1 for n in c.nodes.values())
    event(f"deterministic: proved={props.deterministic}, true={not non_deterministic(c)}, mixing={mixing}")
    event(f"structured={props.structured}")
    if props.deterministic:  # soundness: a proof of determinism must hold at every assignment
        assert not non_deterministic(c), \
            f"claimed deterministic, but {non_deterministic(c)} are not ({props.determinism_note})\n{c.text}"
    assert props.structured == laminar(c, sc), f"structured={props.structured} ({props.vtree})\n{c.text}"
    assert (props.vtree is not None) == props.structured
