"""Scopes (pcdsl.ir.scope) against Python sets and plain integer masks: the same sets, the same
order, and a cost that follows a scope's span, not its highest variable."""

from __future__ import annotations

import copy
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from pcdsl.ir.scope import EMPTY, Scope

sets = st.frozensets(st.integers(0, 300), max_size=20)


def mask(s: frozenset[int]) -> int:
    return sum(1 << v for v in s)


@settings(max_examples=300, deadline=None)
@given(sets, sets)
def test_set_operations_equal_those_of_python_sets(a: frozenset[int], b: frozenset[int]) -> None:
    x, y = Scope.of(*a), Scope.of(*b)
    assert set(x) == a and len(x) == len(a) and bool(x) == bool(a)
    assert set(x | y) == a | b and set(x & y) == a & b and set(x - y) == a - b
    assert x.isdisjoint(y) == a.isdisjoint(b)
    assert Scope.union([x, y, EMPTY]) == x | y
    assert x.mask == mask(a) and x.top == mask(a).bit_length()
    assert all(v in x for v in a) and not any(v in x for v in b - a)
    # equal sets are equal scopes whatever their construction, and hash alike
    assert (x == y) == (a == b) and (hash(x) == hash(y) or a != b)
    assert x == Scope(mask(a)) == Scope(mask(a) >> min(a, default=0), min(a, default=0))
    # ordered as the plain masks are, so sorted orders do not depend on the representation
    assert (x < y) == (mask(a) < mask(b)) and (x <= y) == (mask(a) <= mask(b))
    assert (x > y) == (mask(a) > mask(b)) and (x >= y) == (mask(a) >= mask(b))


def test_a_scope_costs_its_span_not_its_highest_variable() -> None:
    far = Scope.of(10**6)  # a plain mask would hold a million bits
    assert sys.getsizeof(far.bits) < 64 and far.top == 10**6 + 1
    region = Scope.union(Scope.of(10**6 + i) for i in range(100))
    assert sys.getsizeof(region.bits) < 64 and len(region) == 100


def test_scopes_are_immutable_and_copy() -> None:
    x = Scope.of(3, 5)
    try:
        x.low = 0  # type: ignore[misc]
    except AttributeError:
        pass
    else:
        raise AssertionError("a scope was changed")
    assert copy.copy(x) == x and copy.deepcopy(x) == x
    assert Scope.full(4) == Scope.of(0, 1, 2, 3) and not EMPTY and list(EMPTY) == []
