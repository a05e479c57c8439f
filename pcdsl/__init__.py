"""pcdsl: a compiler and DSL for probabilistic circuits.

The front end is importable without torch or numba::

    import pcdsl
    checked = pcdsl.check("examples/tiny.pc")     # raises pcdsl.PcdslError on bad input
    graph = checked.circuit("tiny")                # a pcdsl.ir.CircuitGraph
"""

from __future__ import annotations

from pathlib import Path

from pcdsl.diagnostics import Diagnostic, InternalError, PcdslError, render, render_all
from pcdsl.frontend import Checked, check_file, check_text
from pcdsl.ir.graph import CircuitGraph, Node, NodeKind, Variable

__version__ = "0.1.0"


def check(path: str | Path) -> Checked:
    """Parse, resolve, elaborate and validate a .pc file (and its imports)."""
    return check_file(path)


__all__ = [
    "Checked",
    "CircuitGraph",
    "Diagnostic",
    "InternalError",
    "Node",
    "NodeKind",
    "PcdslError",
    "Variable",
    "__version__",
    "check",
    "check_file",
    "check_text",
    "render",
    "render_all",
]
