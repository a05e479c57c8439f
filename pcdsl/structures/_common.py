"""Shared plumbing of the structure generators: argument checks and a node builder.

Every generator adds nodes through a :class:`Builder`, so all of them name nodes the
same way (``{prefix}/{local}``), stamp every node with the template's span, and pick the
input family from the variable's domain in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pcdsl.diagnostics import NO_SPAN, Span
from pcdsl.ir.graph import CircuitGraph


def positive_int(option: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, or a ValueError that names the option."""
    # bool is an int subclass; `units = true` is a mistake, not 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"'{option}' must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_variables(graph: CircuitGraph, variables: np.ndarray,
                    ndim: int | None = None) -> np.ndarray:
    """Validate the variable-index array; returns it as an int64 array of the same shape."""
    array = np.asarray(variables)
    if array.size == 0:
        raise ValueError("needs at least one variable")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"variables must be integer indices, got dtype {array.dtype}")
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"needs a {ndim}-D array of variables (an image), "
                         f"found shape {tuple(array.shape)}")
    flat = array.reshape(-1)
    if flat.min() < 0 or flat.max() >= len(graph.variables):
        raise ValueError(f"variable index out of range 0..{len(graph.variables) - 1}")
    if len(np.unique(flat)) != flat.size:
        # a repeated variable would make some product non-decomposable
        raise ValueError("a variable appears more than once")
    return array.astype(np.int64)


@dataclass(frozen=True)
class Builder:
    """Adds nodes named ``{prefix}/{local}`` to ``graph``, all carrying ``span``."""

    graph: CircuitGraph
    prefix: str
    span: Span = NO_SPAN

    def name(self, local: str) -> str:
        return f"{self.prefix}/{local}"

    def sub(self, part: str) -> Builder:
        """A builder for a sub-structure (one tree, one repetition) under ``prefix/part``."""
        return Builder(self.graph, f"{self.prefix}/{part}", self.span)

    def input(self, var: int, units: int) -> str:
        """An input group over ``var``, named ``v{var}.in``; parameters are learned later."""
        domain = self.graph.variables[var].domain
        family = "categorical" if domain.is_discrete else "gaussian"
        return self.graph.add_input(self.name(f"v{var}.in"), var, family, units, span=self.span).name

    def product(self, local: str, children: tuple[str, ...], pattern: str = "hadamard") -> str:
        return self.graph.add_product(self.name(local), children, pattern, span=self.span).name

    def sum(self, local: str, children: tuple[str, ...], units: int) -> str:
        return self.graph.add_sum(self.name(local), children, units, span=self.span).name
