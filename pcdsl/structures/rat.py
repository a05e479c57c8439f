"""Random and tensorised region graphs (RAT-SPN, Peharz et al. 2020)."""

from __future__ import annotations

import numpy as np

from pcdsl.diagnostics import NO_SPAN, Span
from pcdsl.ir.graph import CircuitGraph
from pcdsl.structures._common import Builder, check_variables, positive_int


def rat(graph: CircuitGraph, variables: np.ndarray, *, prefix: str, span: Span = NO_SPAN,
        depth: int = 2, repetitions: int = 1, units: int = 16, input_units: int | None = None,
        seed: int = 0) -> str:
    """``repetitions`` random binary region trees of ``depth`` splits, mixed by the root.

    Per repetition the variables are shuffled (``numpy.random.default_rng(seed)``, one
    generator for all repetitions) and halved recursively ``depth`` times; a region of one
    variable is not split further. A leaf region is a hadamard product of its variables'
    input groups (``input_units`` each) under a ``units``-unit sum; an internal region is a
    ``units``-unit sum over the kronecker product of its two halves. Each repetition's top
    kronecker product feeds the 1-unit root sum directly.
    Names (region path ``r`` + one bit per split): ``{prefix}/rep{i}/v{v}.in``,
    ``.../r01.prod`` (leaf), ``.../r0.kron``, ``.../r0.sum``, root ``{prefix}/root``.
    """
    flat = check_variables(graph, variables).reshape(-1)
    depth = positive_int("depth", depth)
    repetitions = positive_int("repetitions", repetitions)
    units = positive_int("units", units)
    inputs = units if input_units is None else positive_int("input_units", input_units)
    seed = positive_int("seed", seed, minimum=0)
    rng = np.random.default_rng(seed)
    b = Builder(graph, prefix, span)
    tops = []
    for rep in range(repetitions):
        order = flat[rng.permutation(len(flat))]
        tops.append(_partition(b.sub(f"rep{rep}"), order, depth, "r", units, inputs))
    return b.sum("root", tuple(tops), 1)


def _region(b: Builder, variables: np.ndarray, depth: int, path: str, units: int, inputs: int) -> str:
    """A non-root region: a ``units``-unit sum over its single partition."""
    return b.sum(f"{path}.sum", (_partition(b, variables, depth, path, units, inputs),), units)


def _partition(b: Builder, variables: np.ndarray, depth: int, path: str, units: int, inputs: int) -> str:
    """The node under a region's sum: a kronecker product of two halves, or at the bottom
    the factorised leaves (a single variable's input group needs no product)."""
    if depth == 0 or len(variables) == 1:
        leaves = tuple(b.input(int(v), inputs) for v in variables)
        return leaves[0] if len(leaves) == 1 else b.product(f"{path}.prod", leaves)
    half = len(variables) // 2
    left = _region(b, variables[:half], depth - 1, path + "0", units, inputs)
    right = _region(b, variables[half:], depth - 1, path + "1", units, inputs)
    return b.product(f"{path}.kron", (left, right), "kronecker")
