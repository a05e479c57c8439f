"""The fully factorised template: independent leaves, or a mixture of them."""

from __future__ import annotations

import numpy as np

from pcdsl.diagnostics import NO_SPAN, Span
from pcdsl.ir.graph import CircuitGraph
from pcdsl.structures._common import Builder, check_variables, positive_int


def fully_factorized(graph: CircuitGraph, variables: np.ndarray, *, prefix: str,
                     span: Span = NO_SPAN, units: int = 1) -> str:
    """One input group of ``units`` units per variable, one hadamard product over them all.

    With ``units > 1`` the product's units are the components of a mixture of fully
    factorised distributions, mixed by a 1-unit root sum.
    Names: ``{prefix}/v{var}.in``, ``{prefix}/prod`` (when mixed), ``{prefix}/root``.
    """
    flat = check_variables(graph, variables).reshape(-1)
    units = positive_int("units", units)
    b = Builder(graph, prefix, span)
    leaves = tuple(b.input(int(v), units) for v in flat)
    if units == 1:
        return b.product("root", leaves)
    return b.sum("root", (b.product("prod", leaves),), 1)
