"""Scopes: sets of variable indices that cost their span, not their highest variable.

A scope is a bit mask shifted down to its lowest variable: ``bits`` (bit i is variable
``low + i``; bit 0 set unless the scope is empty) and ``low``. Unions and intersections are
Python's big-integer operations on the aligned masks, in C. A plain mask ``1 << v`` would cost v
bits, so the n input scopes of a circuit over n variables would cost n^2 / 8 bytes: 8 GB for a
512 x 512 image. Here a variable costs one bit, and a scope its span (an image region of h rows
spans h rows of the image).

Scopes compare, hash and sort like the plain masks they stand for, so orders built on them (region
numbers in drawings) do not depend on the representation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np


class Scope:
    """An immutable set of variable indices (see the module docstring)."""

    __slots__ = ("bits", "low", "top")

    bits: int
    low: int
    top: int  # one past the highest variable (0 when empty): the length of the plain mask

    def __init__(self, bits: int = 0, low: int = 0) -> None:
        bits, low = int(bits), int(low)  # numpy integers too
        if bits < 0 or low < 0:
            raise ValueError("a scope's mask and offset are non-negative")
        shift = (bits & -bits).bit_length() - 1 if bits else 0
        object.__setattr__(self, "bits", bits >> shift)
        object.__setattr__(self, "low", low + shift if bits else 0)
        object.__setattr__(self, "top", low + bits.bit_length() if bits else 0)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("scopes are immutable")

    def __reduce__(self) -> tuple[type[Scope], tuple[int, int]]:  # copy and deepcopy
        return Scope, (self.bits, self.low)

    @classmethod
    def of(cls, *variables: int) -> Scope:
        """The scope of the given variable indices."""
        if len(variables) == 1:
            return cls(1, variables[0])
        return cls.union(cls(1, v) for v in variables)

    @classmethod
    def full(cls, n: int) -> Scope:
        """Variables 0 .. n-1."""
        return cls((1 << n) - 1)

    @classmethod
    def union(cls, scopes: Iterable[Scope]) -> Scope:
        """The union of many scopes, aligned once."""
        parts = [s for s in scopes if s.bits]
        if not parts:
            return cls()
        if len(parts) == 1:
            return parts[0]
        low = min(s.low for s in parts)
        mask = 0
        for s in parts:
            mask |= s.bits << (s.low - low)
        return cls(mask, low)

    def _aligned(self, other: Scope) -> tuple[int, int, int]:
        low = min(self.low, other.low)
        return low, self.bits << (self.low - low), other.bits << (other.low - low)

    def __or__(self, other: Scope) -> Scope:
        if not other.bits:
            return self
        if not self.bits:
            return other
        low, a, b = self._aligned(other)
        return Scope(a | b, low)

    def __and__(self, other: Scope) -> Scope:
        if not self.bits or not other.bits or self.top <= other.low or other.top <= self.low:
            return Scope()
        low, a, b = self._aligned(other)
        return Scope(a & b, low)

    def __sub__(self, other: Scope) -> Scope:
        """The variables of this scope that are not in `other`."""
        if not self.bits or not other.bits or self.top <= other.low or other.top <= self.low:
            return self
        low, a, b = self._aligned(other)
        return Scope(a & ~b, low)

    def isdisjoint(self, other: Scope) -> bool:
        return not (self & other).bits

    def __len__(self) -> int:
        return self.bits.bit_count()

    def __bool__(self) -> bool:
        return self.bits != 0

    def __contains__(self, variable: object) -> bool:
        if not isinstance(variable, (int, np.integer)):
            return False
        i = int(variable) - self.low
        return i >= 0 and bool(self.bits >> i & 1)

    def variables(self) -> np.ndarray:
        """The variable indices, ascending: one pass in C over the mask's bytes."""
        if not self.bits:
            return np.zeros(0, dtype=np.int64)
        if self.bits == 1:
            return np.array([self.low], dtype=np.int64)
        raw = np.frombuffer(self.bits.to_bytes((self.bits.bit_length() + 7) // 8, "little"), dtype=np.uint8)
        return np.flatnonzero(np.unpackbits(raw, bitorder="little")).astype(np.int64) + self.low

    def __iter__(self) -> Iterator[int]:
        return iter(self.variables().tolist())

    @property
    def mask(self) -> int:
        """The plain mask (bit v for variable v): costs `top` bits."""
        return self.bits << self.low

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scope) and self.low == other.low and self.bits == other.bits

    def __hash__(self) -> int:
        return hash((self.low, self.bits))

    def __lt__(self, other: Scope) -> bool:
        """The order of the plain masks as integers, without building them."""
        if self.top != other.top:
            return self.top < other.top
        _, a, b = self._aligned(other)
        return a < b

    def __le__(self, other: Scope) -> bool:
        return self == other or self < other

    def __gt__(self, other: Scope) -> bool:
        return other < self

    def __ge__(self, other: Scope) -> bool:
        return other <= self

    def __repr__(self) -> str:
        shown = self.variables()
        text = ", ".join(str(v) for v in shown[:8]) + (", ..." if len(shown) > 8 else "")
        return f"Scope({{{text}}})"


EMPTY = Scope()
