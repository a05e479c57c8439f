"""The circuit graph and its analyses: determinism, structured decomposability, sizes, spans."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcdsl.diagnostics import PcdslError
from pcdsl.frontend import check_file, check_text
from pcdsl.ir.graph import NodeKind
from pcdsl.syntax.parser import decode_source, parse

from conftest import EXAMPLES


def _props(text: str):  # type: ignore[no-untyped-def]
    checked = check_text(text, "t.pc")
    return checked.properties[next(iter(checked.circuits))]


def test_indicator_mixture_is_proved_deterministic() -> None:
    checked = check_file(EXAMPLES / "gaussians.pc")
    assert checked.properties["gaussians"].deterministic


def test_zero_probability_leaves_prove_determinism() -> None:
    props = _props("""
    circuit d { var a, b : bool
      leaf a0 = bernoulli(a, p = 0) leaf a1 = bernoulli(a, p = 1)
      leaf b0 = bernoulli(b, p = 0.3) leaf b1 = bernoulli(b, p = 0.6)
      prod p0 = a0 * b0  prod p1 = a1 * b1
      sum root = 0.5 p0 + 0.5 p1 }""")
    assert props.deterministic and props.determinism_note == "proved"


def test_zero_weight_edges_do_not_break_determinism() -> None:
    props = _props("""
    circuit d { var a : bool
      leaf a0 = bernoulli(a, p = 0.2) leaf a1 = bernoulli(a, p = 0.7)
      sum root = 1 a0 + 0 a1 }""")
    assert props.deterministic


def test_overlapping_supports_are_not_proved() -> None:
    props = _props("""
    circuit d { var c : categorical(3)
      leaf c0 = categorical(c, [0.5, 0.5, 0]) leaf c1 = categorical(c, [0, 0.5, 0.5])
      sum root = 0.5 c0 + 0.5 c1 }""")
    assert not props.deterministic
    assert "sum 'root'" in props.determinism_note


def test_inconsistent_splits_are_not_structured() -> None:
    props = _props("""
    circuit s { var a, b, c : bool
      leaf la = bernoulli(a) leaf lb = bernoulli(b) leaf lc = bernoulli(c)
      prod ab = la * lb  prod bc = lb * lc
      prod p0 = ab * lc  prod p1 = la * bc
      sum root = p0 + p1 }""")
    assert props.smooth and props.decomposable
    assert not props.structured and props.vtree is None


def test_consistent_splits_give_the_vtree() -> None:
    props = _props("""
    circuit s { var a, b, c, d : bool
      leaf la = bernoulli(a) leaf lb = bernoulli(b) leaf lc = bernoulli(c) leaf ld = bernoulli(d)
      prod ab = la * lb  prod cd = lc * ld
      prod p0 = ab * cd  prod p1 = cd * ab
      sum root = p0 + p1 }""")
    assert props.structured and props.vtree == "((a b) (c d))"


def test_sizes_count_units_edges_and_tied_parameters_once() -> None:
    graph = check_file(EXAMPLES / "groups.pc").circuit("groups")
    assert len(graph) == 10 and graph.num_units() == 49
    assert graph.num_edges() == 4 * 2 * 2 + 4 * 4 * 2 + 16 * 2 + 16  # hadamard, sums, outer, root
    assert graph.num_parameters() == 4 * 4 * 4 + 4 * 4 + 16  # leaves, one tied group, root
    grid = graph.node("grid")
    assert grid.kind is NodeKind.PRODUCT and grid.pattern == "kronecker" and grid.num_units == 16


def test_nodes_carry_spans_of_their_declarations() -> None:
    graph = check_file(EXAMPLES / "tiny.pc").circuit("tiny")
    root = graph.node("root")
    assert (root.span.line, root.span.column) == (14, 3)
    assert root.span.file.endswith("tiny.pc")


def test_template_nodes_inherit_the_call_span() -> None:
    graph = check_file(EXAMPLES / "rat.pc").circuit("nltcs_rat")
    lines = {n.span.line for n in graph.nodes()}
    assert lines == {5}


def test_ast_equality_ignores_spans() -> None:
    a = parse(decode_source("a.pc", b"circuit c { var a : bool leaf l = bernoulli(a, p = 0.5) }"))
    b = parse(decode_source("b.pc", b"circuit c {\n  var a : bool\n\n  leaf l = bernoulli(a, p = 0.5)\n}\n"))
    assert a.items == b.items


def test_every_error_is_reported_not_just_the_first() -> None:
    with pytest.raises(PcdslError) as info:
        check_text("""
        circuit c { var a : bool
          leaf l0 = bernoulli(a, p = 2)
          leaf l1 = bernoulli(a, p = -1)
          leaf l2 = categorical(a, [0.5, 0.6]) }""")
    assert [d.code for d in info.value.diagnostics] == ["E0301", "E0301", "E0303"]


def test_multi_unit_parameters_one_row_per_unit() -> None:
    graph = check_text("""
    circuit g { var c : categorical(2)
      leaf l = categorical(c, [[0.1, 0.9], [0.6, 0.4], [1, 0]]) with units = 3
      sum root = l }""").circuit()
    assert graph.node("l").params["probs"].tolist() == [[0.1, 0.9], [0.6, 0.4], [1.0, 0.0]]
    with pytest.raises(PcdslError) as info:
        check_text("""
        circuit g { var c : categorical(2)
          leaf l = categorical(c, [[0.1, 0.9], [0.6, 0.4]]) with units = 3
          sum root = l }""")
    assert info.value.diagnostics[0].code == "E0304"


def _laminar_by_pairs(sets: list[frozenset[int]]) -> dict[frozenset[int], frozenset[int]] | None:
    """Brute force: every pair disjoint or nested; each set's parent its smallest strict superset."""
    for a, b in itertools.combinations(sets, 2):
        if a & b and not (a <= b or b <= a):
            return None
    return {s: min((t for t in sets if s < t), key=len) for s in sets if any(s < t for t in sets)}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.frozensets(st.integers(0, 7), min_size=1), max_size=8))
def test_the_inclusion_tree_matches_pairwise_laminarity(extra: list[frozenset[int]]) -> None:
    from pcdsl.ir.vtree import _inclusion_tree

    whole = frozenset(range(8))
    sets = sorted({whole, *extra}, key=lambda s: (-len(s), sorted(s)))
    members = [np.array(sorted(s)) for s in sets]
    parent = _inclusion_tree(members, 8)
    expected = _laminar_by_pairs(sets)
    assert (parent is None) == (expected is None)
    if parent is not None and expected is not None:
        assert {sets[i]: sets[p] for i, p in enumerate(parent) if i} == expected


def test_an_overlap_below_a_common_superset_is_not_laminar() -> None:
    from pcdsl.ir.vtree import _inclusion_tree

    sets = [[0, 1, 2, 3], [1, 2], [0, 1]]  # {1, 2} and {0, 1} overlap inside {0, 1, 2, 3}
    assert _inclusion_tree([np.array(s) for s in sets], 4) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.frozensets(st.integers(0, 9), min_size=1), max_size=8))
def test_laminar_adds_every_singleton_under_its_smallest_set(extra: list[frozenset[int]]) -> None:
    from pcdsl.ir.scope import Scope
    from pcdsl.ir.vtree import laminar

    def mask(s: frozenset[int]) -> Scope:
        return Scope.of(*s)

    whole = frozenset(range(10))
    sets = {whole, *extra} | {frozenset([v]) for v in whole}
    expected = _laminar_by_pairs(sorted(sets, key=lambda s: (-len(s), sorted(s))))
    tree = laminar({mask(s) for s in extra}, mask(whole))
    assert (tree is None) == (expected is None)
    if tree is not None and expected is not None:
        found = {frozenset(tree.members[i].tolist()) for i in range(len(tree.members))}
        assert found == sets
        below = {frozenset(tree.members[k].tolist()): frozenset(tree.members[p].tolist())
                 for p, kids in tree.children.items() for k in kids}
        assert below == expected


def test_roots_follow_changes_to_the_graph() -> None:
    from pcdsl.ir.graph import BOOL, CircuitGraph, Variable

    graph = CircuitGraph("g", (Variable("a", 0, BOOL), Variable("b", 1, BOOL)))
    graph.add_input("la", 0, "bernoulli", 1)
    graph.add_input("lb", 1, "bernoulli", 1)
    assert [n.name for n in graph.roots()] == ["la", "lb"]
    graph.add_product("p", ("la", "lb"))
    assert [n.name for n in graph.roots()] == ["p"]
    graph.fix("p")
    assert graph.root.fixed and graph.roots()[0] is graph.node("p")
