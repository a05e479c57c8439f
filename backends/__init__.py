"""Execution backends for compiled circuits, installed as ``pcdsl.backends``.

A backend lowers a :class:`pcdsl.plan.LayeredPlan` to something that runs and
answers the queries of :class:`Model`. Backends register by name and load
lazily, so the front end never imports torch or numba.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from pcdsl.plan import LayeredPlan

_REGISTRY = {"torch": "pcdsl.backends.torch", "numba": "pcdsl.backends.numba"}


class Model(Protocol):
    """What every backend answers. Data: (batch, variables); -1 (or NaN) marks a missing value."""

    plan: LayeredPlan

    def log_prob(self, x: Any) -> Any: ...
    def conditional(self, x: Any, query: Any) -> Any: ...
    def map(self, x: Any) -> tuple[Any, Any]: ...
    def sample(self, n: int, evidence: Any = None, seed: int = 0) -> Any: ...
    def flows(self, x: Any) -> Any: ...


class UnknownBackend(ValueError):
    pass


def available() -> list[str]:
    return sorted(_REGISTRY)


def lower(plan: LayeredPlan, backend: str, **options: Any) -> Model:
    """Lower a plan with the named backend (e.g. device= and dtype= for torch)."""
    if backend not in _REGISTRY:
        raise UnknownBackend(f"unknown backend '{backend}' (known: {', '.join(available())})")
    module = importlib.import_module(_REGISTRY[backend])
    return module.lower(plan, **options)  # type: ignore[no-any-return]
