"""Structural validation of a circuit graph.

:func:`validate` returns *every* violation, each with its witness (the node,
its span, the scopes that differ): roots, smoothness (E0203),
decomposability (E0204), unit shapes (E0206, E0208). :func:`analyse` reports
the properties that are not required: determinism (a sound syntactic check:
proved or not proved) and structured decomposability (with the implied vtree).
"""

from __future__ import annotations

from dataclasses import dataclass

from pcdsl.diagnostics import Diagnostic, Note, error, warning
from pcdsl.ir.determinism import determinism
from pcdsl.ir.graph import CircuitGraph, Node, NodeKind
from pcdsl.ir.scope import EMPTY, Scope
from pcdsl.ir.vtree import implied_vtree
from pcdsl.params import weight_shape

MAX_LISTED = 8


def scope_text(graph: CircuitGraph, scope: Scope) -> str:
    names = graph.scope_names(scope)
    shown = ", ".join(names[:MAX_LISTED]) + (f", ... ({len(names)} in all)" if len(names) > MAX_LISTED else "")
    return "{" + shown + "}"


def validate(graph: CircuitGraph) -> list[Diagnostic]:
    """Every structural error of the graph (empty list: smooth, decomposable, one root)."""
    out: list[Diagnostic] = []
    roots = graph.roots()
    if not roots:
        return [error("E0201", f"circuit '{graph.name}' has no nodes", graph.span,
                      help="declare leaves, products and sums, or a `structure = ...`")]
    if len(roots) > 1:
        out.append(error("E0202", f"circuit '{graph.name}' has {len(roots)} roots", graph.span,
                         *[Note(f"'{r.name}' is used by no other node", r.span) for r in roots[:MAX_LISTED]],
                         help="a circuit has one root: remove unused nodes or join them under a sum"))
    elif roots[0].num_units != 1:
        root = roots[0]
        out.append(error("E0210", f"the root '{root.name}' has {root.num_units} units; a circuit's root is one "
                         "unit", root.span, help=f"add a one-unit sum over it, e.g. `sum top = {root.name}`"))
    ties: dict[str, Node] = {}
    for node in graph.nodes():
        if node.kind is NodeKind.SUM:
            out += _smooth(graph, node)
            out += _blocks(graph, node)
            out += _tied(graph, node, ties)
        elif node.kind is NodeKind.INPUT and node.tie is not None:
            out += _tied_input(graph, node)
        elif node.kind is NodeKind.PRODUCT:
            out += _decomposable(graph, node)
            out += _hadamard_units(graph, node)
    if len(roots) == 1:
        unused = Scope.full(len(graph.variables)) - roots[0].scope
        if unused:
            out.append(warning("W0202", f"variables {scope_text(graph, unused)} are not used by circuit "
                               f"'{graph.name}'", graph.span, help="they are left out of the distribution"))
    return out


def _smooth(graph: CircuitGraph, node: Node) -> list[Diagnostic]:
    first = graph.node(node.children[0])
    odd = [graph.node(c) for c in node.children[1:] if graph.node(c).scope != first.scope]
    if not odd:
        return []
    notes = [Note(f"'{first.name}' covers {scope_text(graph, first.scope)}", first.span)]
    for child in odd[:MAX_LISTED]:
        missing, extra = first.scope - child.scope, child.scope - first.scope
        diff = []
        if missing:
            diff.append(f"lacks {scope_text(graph, missing)}")
        if extra:
            diff.append(f"adds {scope_text(graph, extra)}")
        notes.append(Note(f"'{child.name}' covers {scope_text(graph, child.scope)}: it "
                          + " and ".join(diff), child.span))
    return [error("E0203", f"sum node '{node.name}' is not smooth: its children cover different variables",
                  node.span, *notes, help="every child of a sum must cover the same variables")]


def _decomposable(graph: CircuitGraph, node: Node) -> list[Diagnostic]:
    children = [graph.node(c) for c in node.children]
    if len(node.scope) == sum(len(child.scope) for child in children):  # disjoint: the usual case, O(children)
        return []
    seen = EMPTY
    notes = []
    for i, child in enumerate(children):
        if child.scope & seen:
            for other in children[:i]:
                shared = child.scope & other.scope
                if shared:
                    notes.append(Note(f"'{other.name}' and '{child.name}' both cover {scope_text(graph, shared)}",
                                      child.span))
        seen |= child.scope
    if not notes:
        return []
    return [error("E0204", f"product node '{node.name}' is not decomposable: its children share variables",
                  node.span, *notes[:MAX_LISTED], help="the children of a product must cover disjoint variables")]


def _hadamard_units(graph: CircuitGraph, node: Node) -> list[Diagnostic]:
    if node.pattern != "hadamard":
        return []
    odd = [graph.node(c) for c in node.children if graph.node(c).num_units not in (1, node.num_units)]
    if not odd:
        return []
    notes = [Note(f"'{graph.node(c).name}' has {graph.node(c).num_units} units") for c in node.children]
    return [error("E0206", f"product '{node.name}' multiplies unit by unit, but its children have "
                  "different numbers of units", node.span, *notes[:MAX_LISTED],
                  help="give the children equal units, or use `outer(...)` for all combinations")]


def _blocks(graph: CircuitGraph, node: Node) -> list[Diagnostic]:
    sizes = [node.num_units] + [graph.node(c).num_units for c in node.children]
    if node.blocks >= 1 and all(s % node.blocks == 0 for s in sizes):
        return []
    notes = [Note(f"'{c}' has {graph.node(c).num_units} units", graph.node(c).span) for c in node.children]
    return [error("E0211", f"sum '{node.name}' has {node.blocks} blocks, which do not divide its "
                  f"{node.num_units} units and its children's units", node.span, *notes[:MAX_LISTED],
                  help="a block-diagonal sum needs units and child units that are multiples of its blocks")]


def _tied_input(graph: CircuitGraph, node: Node) -> list[Diagnostic]:
    assert node.tie is not None and node.var is not None
    owner = graph.node(node.tie) if node.tie in graph else None
    if owner is not None and owner.kind is NodeKind.INPUT and owner.tie is None:
        assert owner.var is not None
        if (owner.family, owner.num_units) == (node.family, node.num_units) and \
                graph.variables[owner.var].domain == graph.variables[node.var].domain:
            return []
    what = "no node" if owner is None else f"'{owner.name}', which is not an untied leaf of the same family, " \
        "units and domain"
    return [error("E0208", f"leaf '{node.name}' is tied to {what}", node.span,
                  *([Note(f"'{owner.name}' is declared here", owner.span)] if owner is not None else []),
                  help="a tied leaf shares the parameters of a leaf with the same family, units and domain")]


def _tied(graph: CircuitGraph, node: Node, ties: dict[str, Node]) -> list[Diagnostic]:
    first = ties.setdefault(node.tie or node.name, node)  # a tie names the sum it shares with
    if first is node:
        return []
    shape = weight_shape(graph, node)
    expected = weight_shape(graph, first)
    if shape == expected and node.blocks == first.blocks:
        return []
    return [error("E0208", f"sum '{node.name}' is tied to '{node.tie}' but its weights have shape {shape}, "
                  f"not {expected}", node.span, Note(f"'{first.name}' is in the same group", first.span),
                  help="tied sums need the same units and the same number of child units")]


@dataclass(frozen=True)
class Properties:
    smooth: bool
    decomposable: bool
    deterministic: bool  # proved by a sound syntactic check; False means "not proved"
    determinism_note: str
    structured: bool
    vtree: str | None


def analyse(graph: CircuitGraph, diagnostics: list[Diagnostic] | None = None) -> Properties:
    found = validate(graph) if diagnostics is None else diagnostics
    codes = {d.code for d in found}
    smooth, decomposable = "E0203" not in codes, "E0204" not in codes
    proved, note = determinism(graph)
    vtree = implied_vtree(graph) if decomposable and len(graph.roots()) == 1 else None
    return Properties(smooth, decomposable, proved, note, vtree is not None, vtree)
