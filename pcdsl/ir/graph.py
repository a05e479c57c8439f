"""The circuit graph: a typed façade over networkx.

A node is a *node group* of ``num_units`` units of one kind (DESIGN.md §3):
INPUT (a distribution family over one variable), PRODUCT (hadamard or
kronecker over children with disjoint scopes), SUM (a weight block
``num_units x sum(child units)`` over children with equal scopes, optionally
tied to a named parameter group). A scalar circuit is the special case of
width-1 groups. Scopes are int bitmasks over variable indices.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

import networkx as nx
import numpy as np

from pcdsl.diagnostics import NO_SPAN, InternalError, Span
from pcdsl.ir.scope import EMPTY, Scope


class NodeKind(enum.Enum):
    INPUT = "input"
    PRODUCT = "product"
    SUM = "sum"


@dataclass(frozen=True)
class Domain:
    """``bool``, ``categorical(n)`` or ``real``."""

    kind: str
    size: int | None = None  # number of values for discrete domains

    @property
    def is_discrete(self) -> bool:
        return self.kind != "real"

    def __str__(self) -> str:
        return f"categorical({self.size})" if self.kind == "categorical" else self.kind


BOOL = Domain("bool", 2)
REAL = Domain("real")


@dataclass(frozen=True)
class Variable:
    name: str
    index: int  # the data column
    domain: Domain
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True, eq=False)
class Node:
    """One node group. Kind-specific fields are None where they do not apply."""

    name: str
    kind: NodeKind
    num_units: int
    children: tuple[str, ...] = ()
    scope: Scope = EMPTY
    # INPUT
    family: str | None = None
    var: int | None = None
    params: Mapping[str, np.ndarray] | None = None  # None: learned
    # PRODUCT
    pattern: str | None = None  # "hadamard" | "kronecker"
    # SUM
    weights: np.ndarray | None = None  # (num_units, sum of child units // blocks); None: learned
    # SUM and INPUT: a parameter group shared by several nodes (it names the node that owns it)
    tie: str | None = None
    span: Span = field(default=NO_SPAN, repr=False)
    # SUM: block-diagonal weights. Units and every child's units are cut into `blocks` equal
    # runs; output run b mixes only input run b of each child (K cluster-conditioned circuits
    # of one shape are one node group of K x h units with blocks = K, DESIGN.md §6)
    blocks: int = 1
    fixed: bool = False  # `with fixed = true`: learning keeps this node's (or its tie group's) parameters

    def __repr__(self) -> str:
        from pcdsl.drawing import node_label

        return f"Node({node_label(self)})"

    def _repr_svg_(self) -> str | None:
        """Jupyter's picture of the node group (needs graphviz; None falls back to the text)."""
        from pcdsl.drawing import picture

        return picture(self)._repr_svg_()


REPR_ANALYSE_LIMIT = 5000  # node groups; larger graphs' reprs give sizes only


class CircuitGraph:
    """Nodes are added children first, so the graph is acyclic by construction."""

    def __init__(self, name: str, variables: tuple[Variable, ...], span: Span = NO_SPAN):
        self.name = name
        self.variables = variables
        self.span = span
        self.colour = "identity"  # an image model's colour space (pcdsl.distill.colour), for its pictures
        self._g = nx.DiGraph()
        # the nodes by name, in insertion order: networkx's views cost microseconds per lookup,
        # which passes over 10^5-10^6 node groups feel (the graph keeps the edges)
        self._nodes: dict[str, Node] = {}
        self._roots: list[Node] | None = None  # cached; any change to the graph drops it

    def __repr__(self) -> str:
        """One line: sizes and structural properties (checked afresh: the graph may have changed)."""
        from pcdsl.ir.validate import analyse

        if not len(self):
            return f"CircuitGraph('{self.name}': {len(self.variables)} variables, empty)"
        roots = self.roots()
        top = f"root '{roots[0].name}'" if len(roots) == 1 else f"{len(roots)} roots"
        sizes = (f"CircuitGraph('{self.name}': {len(self.variables)} variables, {len(self)} node groups "
                 f"({self.num_units()} units), {self.num_edges()} edges, {self.num_parameters()} parameters, {top}")
        if len(self) > REPR_ANALYSE_LIMIT:  # a repr must stay quick (debuggers and test reports call it)
            return f"{sizes}; properties: see pcdsl.ir.validate.analyse)"
        p = analyse(self)
        properties = [name for name, holds in (("smooth", p.smooth), ("decomposable", p.decomposable),
                                               ("deterministic", p.deterministic),
                                               ("structured-decomposable", p.structured)) if holds]
        return f"{sizes}; {', '.join(properties) or 'neither smooth nor decomposable'})"

    def _repr_svg_(self) -> str | None:
        """Jupyter's picture of the circuit (needs graphviz; None falls back to the text)."""
        from pcdsl.drawing import picture

        return picture(self)._repr_svg_()

    # ---- construction -------------------------------------------------------------
    def add_input(self, name: str, var: int, family: str, num_units: int,
                  params: Mapping[str, np.ndarray] | None = None, span: Span = NO_SPAN,
                  tie: str | None = None) -> Node:
        node = Node(name, NodeKind.INPUT, num_units, (), Scope(1, var), family=family, var=var,
                    params=params, tie=tie, span=span)
        return self._add(node)

    def add_product(self, name: str, children: tuple[str, ...], pattern: str = "hadamard",
                    span: Span = NO_SPAN) -> Node:
        units = [self.node(c).num_units for c in children]
        num_units = int(np.prod(units)) if pattern == "kronecker" else max(units)
        node = Node(name, NodeKind.PRODUCT, num_units, children, self._union(children),
                    pattern=pattern, span=span)
        return self._add(node)

    def add_sum(self, name: str, children: tuple[str, ...], num_units: int = 1,
                weights: np.ndarray | None = None, tie: str | None = None,
                span: Span = NO_SPAN, blocks: int = 1) -> Node:
        node = Node(name, NodeKind.SUM, num_units, children, self._union(children),
                    weights=weights, tie=tie, span=span, blocks=blocks)
        return self._add(node)

    def add_nodes(self, nodes: list[Node]) -> None:
        """Add many nodes at once, children first, each with its scope and units already set as
        the add_* methods set them: the bulk path for circuits read from large files (one
        networkx call for all nodes and one for all edges)."""
        names = set()
        for node in nodes:
            if node.name in names or node.name in self._g:
                raise InternalError(f"node '{node.name}' added twice")
            for c in node.children:
                if c not in names and c not in self._g:
                    raise InternalError(f"node '{node.name}': child '{c}' must be added first")
            names.add(node.name)
        self._g.add_nodes_from((n.name, {"node": n}) for n in nodes)
        self._g.add_edges_from(_edges(nodes))
        self._nodes.update((n.name, n) for n in nodes)
        self._roots = None

    def fix(self, name: str) -> Node:
        """Mark a node's parameters fixed: EM and SGD keep them (a tied sum: its whole group)."""
        node = replace(self.node(name), fixed=True)
        self._g.nodes[name]["node"] = node
        self._nodes[name] = node
        self._roots = None
        return node

    def _union(self, children: tuple[str, ...]) -> Scope:
        return Scope.union(self.node(c).scope for c in children)

    def _add(self, node: Node) -> Node:
        if node.name in self._nodes:
            raise InternalError(f"node '{node.name}' added twice")
        for c in node.children:
            if c not in self._nodes:
                raise InternalError(f"node '{node.name}': child '{c}' must be added first")
        self._g.add_node(node.name, node=node)
        # a child may appear twice (x * x is caught by validation, not here): one edge, first position
        self._g.add_edges_from(_edges([node]))
        self._nodes[node.name] = node
        self._roots = None
        return node

    # ---- queries ----------------------------------------------------------------------
    def node(self, name: str) -> Node:
        try:
            return self._nodes[name]
        except KeyError:
            raise InternalError(f"no node '{name}' in circuit '{self.name}'") from None

    def __contains__(self, name: str) -> bool:
        return name in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def nodes(self) -> Iterator[Node]:
        """Nodes in insertion order (children before parents)."""
        return iter(self._nodes.values())

    def parents(self, name: str) -> list[str]:
        return list(self._g.predecessors(name))

    def roots(self) -> list[Node]:
        """The nodes no other node uses, in insertion order (computed once per version of the graph)."""
        if self._roots is None:
            used = {c for n in self._nodes.values() for c in n.children}
            self._roots = [n for n in self._nodes.values() if n.name not in used]
        return list(self._roots)

    @property
    def root(self) -> Node:
        roots = self.roots()
        if len(roots) != 1:
            raise InternalError(f"circuit '{self.name}' has {len(roots)} roots; validate it first")
        return roots[0]

    def to_networkx(self) -> nx.DiGraph:
        """A copy of the underlying graph (parent -> child edges, 'node' attributes)."""
        return self._g.copy()

    def scope_names(self, scope: Scope) -> list[str]:
        return [self.variables[v].name for v in scope if v < len(self.variables)]

    # ---- sizes ---------------------------------------------------------------------------
    def child_units(self, node: Node) -> int:
        return sum(self.node(c).num_units for c in node.children)

    def num_edges(self) -> int:
        """Unit-level edges: what a layered evaluation touches."""
        total = 0
        for n in self.nodes():
            if n.kind is NodeKind.SUM:
                total += n.num_units * self.child_units(n) // n.blocks
            elif n.kind is NodeKind.PRODUCT:
                total += n.num_units * len(n.children)
        return total

    def num_units(self) -> int:
        return sum(n.num_units for n in self.nodes())

    def num_parameters(self) -> int:
        """Stored parameters, counting each tied group once."""
        total, seen = 0, set()
        for n in self.nodes():
            group = n.tie or n.name  # a tie names the node whose parameters it shares
            if n.kind is NodeKind.PRODUCT or group in seen:
                continue
            seen.add(group)
            if n.kind is NodeKind.SUM:
                total += n.num_units * self.child_units(n) // n.blocks
            else:
                assert n.var is not None
                total += n.num_units * _input_param_count(n.family, self.variables[n.var].domain)
        return total


def _input_param_count(family: str | None, domain: Domain) -> int:
    if family == "categorical":
        return domain.size or 0
    if family == "bernoulli":
        return 1
    if family == "gaussian":
        return 2
    return 0  # indicators have no parameters


def _edges(nodes: list[Node]) -> Iterator[tuple[str, str, dict[str, int]]]:
    """(parent, child, position) of each child, at the first position of a repeated one."""
    for n in nodes:
        if len(set(n.children)) == len(n.children):
            yield from ((n.name, c, {"position": k}) for k, c in enumerate(n.children))
            continue
        seen: set[str] = set()
        for k, c in enumerate(n.children):
            if c not in seen:
                seen.add(c)
                yield n.name, c, {"position": k}
