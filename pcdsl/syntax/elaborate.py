"""AST circuit -> CircuitGraph: names resolved, values typed, parameters checked.

Every problem is reported with its span; a declaration that fails is skipped
(and so are the nodes built on it), so one mistake gives one diagnostic, not
a cascade.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import networkx as nx
import numpy as np

from pcdsl.diagnostics import Note, Sink, Span
from pcdsl.ir.graph import BOOL, REAL, CircuitGraph, Domain, Variable
from pcdsl.syntax import ast
from pcdsl.syntax.leaves import FAMILIES, check_domain, check_normalised, leaf_params
from pcdsl.syntax.names import did_you_mean
from pcdsl.syntax.signatures import MAX_UNITS, Param, Signature, bind, lookup, read_bool, read_units
from pcdsl.syntax.sources import DataSource
from pcdsl.syntax.templates import IMAGE_TEMPLATES, TEMPLATES
from pcdsl.syntax.values import Bad, Values

DOMAINS = ("bool", "categorical", "real")
MAX_VARIABLES = 1 << 20
MAX_CATEGORIES = 1 << 16

_FIXED = Param("fixed", read_bool(), False, positional=False)  # learning keeps the written parameters
NODE_OPTIONS = {  # `leaf/prod/sum ... with key = value, ...`
    "leaf": Signature("leaf options", (Param("units", read_units(), 1, positional=False), _FIXED)),
    "prod": Signature("product options", ()),
    "sum": Signature("sum options", (Param("units", read_units(), 1, positional=False),
                                     Param("tie", None, None, positional=False), _FIXED)),
}

DataResolver = Callable[[ast.Ref, Values], DataSource]


def elaborate(circ: ast.Circuit, vals: Values, data: DataResolver) -> CircuitGraph | None:
    """Build the circuit graph of one circuit, or None when any part of it failed
    (its diagnostics are in the sink; a partial graph would only add noise)."""
    return _Elaborator(circ, vals, data).run()


def _where(decl: object) -> Span:
    return decl.name.span  # type: ignore[attr-defined, no-any-return]


class _Elaborator:
    def __init__(self, circ: ast.Circuit, vals: Values, data: DataResolver):
        self.circ = circ
        local = {s.name.text: s for s in circ.body if isinstance(s, ast.Const)}
        self.vals = vals.child(local)
        self.sink: Sink = vals.sink
        self.data = data
        self.arrays: dict[str, np.ndarray] = {}  # variable name -> indices with the array's shape
        self.var_spans: dict[str, Span] = {}
        self.decls: dict[str, ast.LeafDecl | ast.ProdDecl | ast.SumDecl] = {}
        self.failed: set[str] = set()
        self.bad_names = False

    def fail(self, code: str, message: str, span: Span, *notes: Note | str, help: str | None = None) -> Bad:
        return self.vals.fail(code, message, span, *notes, help=help)

    def run(self) -> CircuitGraph | None:
        self._collect_names()
        try:
            variables = self._variables()
        except Bad:
            return None
        if variables is None:
            return None
        graph = CircuitGraph(self.circ.name.text, tuple(variables), self.circ.name.span)
        structures = [s for s in self.circ.body if isinstance(s, ast.StructureDecl)]
        if structures:
            ok = self._structure(graph, structures)
            return graph if ok else None
        for name in self._order():
            try:
                self._node(graph, self.decls[name])
            except Bad:
                self.failed.add(name)
        return None if self.failed or self.bad_names else graph

    # ---- names ------------------------------------------------------------------------
    def _collect_names(self) -> None:
        seen: dict[str, Span] = {}
        for stmt in self.circ.body:
            names = [i.name for i in stmt.items] if isinstance(stmt, ast.VarDecl) else (
                [stmt.name] if hasattr(stmt, "name") else [])
            for name in names:
                if name.text in seen:
                    self.bad_names = True
                    self.fail("E0102", f"'{name.text}' is defined twice in circuit '{self.circ.name.text}'",
                              name.span, Note("first defined here", seen[name.text]),
                              help="rename one of them")
                    continue
                seen[name.text] = name.span
                if isinstance(stmt, (ast.LeafDecl, ast.ProdDecl, ast.SumDecl)):
                    self.decls[name.text] = stmt

    def _kind_of(self, name: str) -> str | None:
        if name in self.decls:
            return "node"
        if name in self.arrays:
            return "variable"
        if name in self.vals.consts:
            return "constant"
        return None

    # ---- variables --------------------------------------------------------------------
    def _variables(self) -> list[Variable] | None:
        variables: list[Variable] = []
        ok = True
        for decl in (s for s in self.circ.body if isinstance(s, ast.VarDecl)):
            try:
                domain = self._domain(decl.domain)
            except Bad:
                ok = False
                continue
            for item in decl.items:
                if item.name.text in self.arrays or item.name.text in self.decls:
                    continue  # a duplicate, reported already
                try:
                    shape = tuple(self.vals.as_int(v, "an array size", 1) for v in item.shape or ())
                except Bad:
                    ok = False
                    continue
                count = math.prod(shape)
                if len(variables) + count > MAX_VARIABLES:
                    raise self.fail("E0309", f"too many variables (more than {MAX_VARIABLES})", item.span)
                start = len(variables)
                for offset, pos in enumerate(itertools.product(*[range(n) for n in shape])):
                    label = item.name.text + (f"[{', '.join(map(str, pos))}]" if shape else "")
                    variables.append(Variable(label, start + offset, domain, item.span))
                self.arrays[item.name.text] = np.arange(start, start + count).reshape(shape)
                self.var_spans[item.name.text] = item.span
        return variables if ok else None

    def _domain(self, d: ast.Domain) -> Domain:
        name = d.name.text
        if name not in DOMAINS:
            raise self.fail("E0310", f"unknown domain '{name}'", d.name.span,
                            "domains are 'bool', 'categorical(n)' and 'real'", help=did_you_mean(name, DOMAINS))
        if name == "categorical":
            if d.arg is None:
                raise self.fail("E0310", "categorical needs its number of values: categorical(n)", d.span)
            return Domain("categorical", self.vals.as_int(d.arg, "the number of categories", 2, MAX_CATEGORIES))
        if d.arg is not None:
            raise self.fail("E0310", f"domain '{name}' takes no argument", d.arg.span)
        return BOOL if name == "bool" else REAL

    def select(self, ref: ast.Value, what: str) -> np.ndarray:
        """Variable indices selected by `x`, `x[i, j]`, `x[0:14, :]` or a list of these."""
        d = self.vals.deref(ref)
        if isinstance(d, ast.ListV):
            parts = [self.select(item, what).reshape(-1) for item in d.items]
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if not isinstance(d, ast.Ref):
            raise self.fail("E0308", f"{what} must be variables, found something else", ref.span)
        name = d.parts[0]
        if name.text not in self.arrays:
            kind = self._kind_of(name.text)
            if kind:
                raise self.fail("E0104", f"'{name.text}' is a {kind}, not a variable", name.span,
                                help="declare variables with `var name : domain`")
            raise self.fail("E0101", f"undefined variable '{name.text}'", name.span,
                            help=did_you_mean(name.text, self.arrays))
        if len(d.parts) > 1:
            raise self.fail("E0104", f"'{d.dotted}': variables have no fields", d.span)
        array = self.arrays[name.text]
        return array if d.index is None else self._index(array, d, name.text)

    def _index(self, array: np.ndarray, ref: ast.Ref, name: str) -> np.ndarray:
        assert ref.index is not None
        if len(ref.index) > array.ndim:
            dims = "a single variable" if array.ndim == 0 else f"an array of {array.ndim} dimension(s)"
            raise self.fail("E0109", f"'{name}' is {dims}; {len(ref.index)} indices given", ref.span)
        keys: list[int | slice] = []
        for axis, idx in enumerate(ref.index):
            size = array.shape[axis]
            if isinstance(idx, ast.Slice):
                lo = 0 if idx.start is None else self.vals.as_int(idx.start, "a slice bound", 0)
                hi = size if idx.stop is None else self.vals.as_int(idx.stop, "a slice bound", 0)
                if not lo < hi <= size:
                    raise self.fail("E0108", f"slice {lo}:{hi} is empty or outside '{name}' "
                                    f"(axis {axis} has size {size})", idx.span)
                keys.append(slice(lo, hi))
            else:
                i = self.vals.as_int(idx, "an index")
                if not 0 <= i < size:
                    raise self.fail("E0108", f"index {i} is out of range for '{name}' with shape "
                                    f"{tuple(array.shape)}", idx.span, help=f"indices on axis {axis} "
                                    f"run from 0 to {size - 1}")
                keys.append(i)
        return np.asarray(array[tuple(keys)])

    # ---- node declarations -------------------------------------------------------------
    def _children(self, decl: ast.LeafDecl | ast.ProdDecl | ast.SumDecl) -> list[ast.Name]:
        if isinstance(decl, ast.ProdDecl):
            return list(decl.children)
        if isinstance(decl, ast.SumDecl):
            return [t.child for t in decl.terms]
        return []

    def _order(self) -> list[str]:
        """Declarations in dependency order; undefined references and cycles reported."""
        deps = nx.DiGraph()
        position = {name: i for i, name in enumerate(self.decls)}
        deps.add_nodes_from(self.decls)
        for name, decl in self.decls.items():
            for child in self._children(decl):
                if child.text in self.decls:
                    deps.add_edge(name, child.text)
                else:
                    self._bad_child(child)
                    self.failed.add(name)
        for component in nx.strongly_connected_components(deps):
            if len(component) > 1 or any(deps.has_edge(n, n) for n in component):
                self._cycle(deps.subgraph(component), position)
                self.failed.update(component)
        # failed nodes leave the graph, which breaks every cycle; their parents stay and
        # fail quietly when built (see _node)
        acyclic = deps.subgraph(n for n in deps if n not in self.failed)
        return list(nx.lexicographical_topological_sort(acyclic.reverse(copy=True), key=position.__getitem__))

    def _bad_child(self, child: ast.Name) -> None:
        kind = self._kind_of(child.text)
        if kind == "variable":
            self.fail("E0104", f"'{child.text}' is a variable, not a node", child.span,
                      help=f"wrap it in a leaf first, e.g. `leaf l_{child.text} = bernoulli({child.text})`")
        elif kind:
            self.fail("E0104", f"'{child.text}' is a {kind}, not a node", child.span)
        else:
            self.fail("E0101", f"undefined node '{child.text}'", child.span,
                      help=did_you_mean(child.text, self.decls))

    def _cycle(self, sub: nx.DiGraph, position: dict[str, int]) -> None:
        start = min(sub, key=position.__getitem__)
        cycle = [start] + [v for _, v in nx.find_cycle(sub, start)]
        cycle = cycle[: cycle.index(start, 1) + 1] if start in cycle[1:] else cycle
        self.fail("E0103", f"node '{start}' is defined in terms of itself", _where(self.decls[start]),
                  "cycle: " + " -> ".join(cycle), help="a circuit is acyclic: a node cannot be its own descendant")

    def _node(self, graph: CircuitGraph, decl: ast.LeafDecl | ast.ProdDecl | ast.SumDecl) -> None:
        if any(c.text in self.failed for c in self._children(decl)):
            raise Bad()  # built on a node that already failed: stay quiet
        kind = "leaf" if isinstance(decl, ast.LeafDecl) else "prod" if isinstance(decl, ast.ProdDecl) else "sum"
        options = bind(self.vals, ast.Call(ast.Name("with"), (), decl.options, span=decl.span), NODE_OPTIONS[kind])
        if isinstance(decl, ast.LeafDecl):
            self._leaf(graph, decl, options["units"])
        elif isinstance(decl, ast.ProdDecl):
            children = tuple(c.text for c in decl.children)
            if decl.pattern == "kronecker":
                units = math.prod(graph.node(c).num_units for c in children)
                if units > MAX_UNITS:
                    raise self.fail("E0309", f"outer product '{decl.name.text}' would have {units} units (at most "
                                    f"{MAX_UNITS})", decl.span, help="use fewer units in its children")
            graph.add_product(decl.name.text, children, decl.pattern, decl.span)
        else:
            self._sum(graph, decl, options["units"], options["tie"])
        if options.values.get("fixed") and not isinstance(decl, ast.ProdDecl):
            self._fix(graph, decl, options.span_of("fixed"))

    def _fix(self, graph: CircuitGraph, decl: ast.LeafDecl | ast.SumDecl, span: Span) -> None:
        """Mark a node fixed; its parameters must be written (fixing random ones means nothing)."""
        node = graph.node(decl.name.text)
        given = node.weights is not None or (node.tie is not None and node.tie in graph
                                              and graph.node(node.tie).weights is not None)
        if node.kind.value == "input":
            given = node.params is not None or node.family == "indicator"
        if not given:
            raise self.fail("E0313", f"'{decl.name.text}' is fixed, but the file does not give its parameters",
                            span, help="write the parameters, or drop `fixed = true` to learn them")
        graph.fix(node.name)

    def _leaf(self, graph: CircuitGraph, decl: ast.LeafDecl, units: int) -> None:
        sig = lookup(self.vals, decl.dist, FAMILIES, "leaf family")
        bound = bind(self.vals, decl.dist, sig)
        selected = self.select(bound["var"], f"the variable of leaf '{decl.name.text}'")
        if selected.size != 1:
            raise self.fail("E0109", f"a leaf is over one variable, but this selects {selected.size}",
                            bound.span_of("var"), help="index a single element, e.g. `x[0, 3]`")
        var = graph.variables[int(selected.reshape(-1)[0])]
        check_domain(self.vals, sig.name, var, bound["var"])
        params = leaf_params(self.vals, bound, var, units)
        graph.add_input(decl.name.text, var.index, sig.name, units, params, decl.span)

    def _sum(self, graph: CircuitGraph, decl: ast.SumDecl, units: int, tie: ast.Value | None) -> None:
        names = [t.child.text for t in decl.terms]
        for i, term in enumerate(decl.terms):
            if term.child.text in names[:i]:
                raise self.fail("E0207", f"'{term.child.text}' appears twice in sum '{decl.name.text}'",
                                term.child.span, help="merge the two terms into one")
        weighted = [t.weight is not None for t in decl.terms]
        weights = None
        if all(weighted):
            weights = self._weights(graph, decl, units)
        elif any(weighted):
            bare = decl.terms[weighted.index(False)]
            raise self.fail("E0311", f"child '{bare.child.text}' of sum '{decl.name.text}' has no weight, "
                            "but others do", bare.span, help="give every child a weight, or none to learn them")
        group = self._tie_group(decl, tie, weights is not None)
        graph.add_sum(decl.name.text, tuple(names), units, weights, group, decl.span)

    def _weights(self, graph: CircuitGraph, decl: ast.SumDecl, units: int) -> np.ndarray:
        values = []
        for term in decl.terms:
            assert term.weight is not None
            w = float(term.weight.value)
            if w < 0:
                raise self.fail("E0302", f"weight {w} of '{term.child.text}' is negative", term.weight.span,
                                help="sum weights are probabilities: non-negative and adding up to 1")
            child = graph.node(term.child.text)
            if units != 1 or child.num_units != 1:
                what = f"'{decl.name.text}' has {units} units" if units != 1 else \
                    f"'{term.child.text}' has {child.num_units} units"
                raise self.fail("E0208", f"explicit weights need single units, but {what}", term.span,
                                help="drop the weights to learn them")
            values.append(w)
        check_normalised(self.vals, values, decl, f"the weights of sum '{decl.name.text}'")
        return np.array([values])

    def _tie_group(self, decl: ast.SumDecl, tie: ast.Value | None, has_weights: bool) -> str | None:
        if tie is None:
            return None
        target = self.vals.deref(tie)
        if not (isinstance(target, ast.Ref) and len(target.parts) == 1 and target.index is None):
            raise self.fail("E0308", "'tie' must name another sum", tie.span)
        name = target.parts[0].text
        other = self.decls.get(name)
        if not isinstance(other, ast.SumDecl) or name == decl.name.text:
            raise self.fail("E0104", f"'tie' must name another sum, and '{name}' is not one", tie.span,
                            help=did_you_mean(name, [k for k, v in self.decls.items() if isinstance(v, ast.SumDecl)]))
        if has_weights:
            raise self.fail("E0312", f"sum '{decl.name.text}' is tied to '{name}' and cannot have its own "
                            "weights", tie.span)
        chain = [decl.name.text]
        while True:  # the group is named after the end of the tie chain
            nxt = next((kw.value for kw in other.options if kw.name.text == "tie"), None)
            ref = self.vals.deref(nxt) if nxt is not None else None
            if not isinstance(ref, ast.Ref) or ref.parts[0].text not in self.decls:
                return name
            chain.append(name)
            if ref.parts[0].text in chain:
                raise self._tie_cycle(chain[chain.index(ref.parts[0].text):], decl.name.text, tie)
            name = ref.parts[0].text
            other = self.decls[name]  # type: ignore[assignment]

    def _tie_cycle(self, cycle: list[str], sum_name: str, tie: ast.Value) -> Bad:
        """A cycle of ties names no sum that owns the weights. Reported once, at the tie of its first
        member in the file; the other members, and sums tied into the cycle, fail quietly."""
        position = list(self.decls)
        if cycle[0] != sum_name or sum_name != min(cycle, key=position.index):
            return Bad()
        notes = [Note(f"'{a}' is tied to '{b}'", next(kw.value.span for kw in self.decls[a].options
                                                       if kw.name.text == "tie"))
                 for a, b in zip(cycle[1:], cycle[2:] + cycle[:1], strict=True)]
        return self.fail("E0213", f"the ties of sum '{cycle[0]}' go round in a cycle: "
                         + " -> ".join([*cycle, cycle[0]]), tie.span, *notes,
                         help="no sum in a cycle owns the shared weights: remove the `tie` of one of them "
                              "(it then holds the group's weights)")

    # ---- templates ----------------------------------------------------------------------
    def _structure(self, graph: CircuitGraph, structures: list[ast.StructureDecl]) -> bool:
        for extra in structures[1:]:
            self.fail("E0209", "a circuit has one `structure`", extra.span,
                      Note("the first is here", structures[0].span))
        for decl in self.decls.values():
            self.fail("E0209", "a circuit with a `structure` cannot also declare nodes", _where(decl),
                      Note("the structure is declared here", structures[0].span),
                      help="declare the nodes in a separate circuit")
        try:
            self._template(graph, structures[0].template)
        except Bad:
            return False
        return len(structures) == 1 and not self.decls and not self.bad_names

    def _template(self, graph: CircuitGraph, call: ast.Call) -> None:
        from pcdsl.structures import generate  # generators are heavier than the front end

        sig = lookup(self.vals, call, TEMPLATES, "template")
        bound = bind(self.vals, call, sig)
        variables = self.select(bound["vars"], f"the variables of '{sig.name}'")
        if sig.name in IMAGE_TEMPLATES and variables.ndim != 2:
            raise self.fail("E0309", f"'{sig.name}' needs a 2-D array of variables (an image), found shape "
                            f"{tuple(variables.shape)}", bound.span_of("vars"))
        options = {k: v for k, v in bound.values.items() if k not in ("vars", "data")}
        data = None
        if "data" in bound.values:
            data = self._template_data(graph, bound["data"], variables)
        try:
            generate(sig.name, graph, variables, prefix=sig.name, span=call.span, data=data, **options)
        except ValueError as exc:
            raise self.fail("E0309", f"cannot build '{sig.name}': {exc}", call.span) from None

    def _template_data(self, graph: CircuitGraph, ref: ast.Value, variables: np.ndarray) -> np.ndarray:
        from pcdsl.data import DataError
        from pcdsl.data.layout import variable_shape

        if not isinstance(ref, ast.Ref):
            raise self.fail("E0308", "'data' must name a data source declared with `data NAME = ...`", ref.span)
        source = self.data(ref, self.vals)
        try:
            matrix = source.load(shape=variable_shape(graph))  # image pixels in the circuit's array order
        except DataError as exc:
            raise self.fail("E0501", f"cannot read data '{ref.dotted}': {exc}", ref.span,
                            Note("the data source is declared here", source.span)) from None
        if matrix.shape[1] != len(graph.variables):
            raise self.fail("E0502", f"data '{ref.dotted}' has {matrix.shape[1]} columns, but circuit "
                            f"'{graph.name}' declares {len(graph.variables)} variables", ref.span)
        highs, lows = matrix.max(axis=0, initial=-1), matrix.min(axis=0, initial=0)  # one pass, not one per column
        for v in variables.reshape(-1):
            size = graph.variables[v].domain.size
            if size is not None and (highs[v] >= size or lows[v] < -1):
                raise self.fail("E0502", f"data '{ref.dotted}' column {v} has values outside "
                                f"'{graph.variables[v].name}' ({graph.variables[v].domain})", ref.span)
        return matrix

