"""pcdsl: a compiler and DSL for probabilistic circuits.

The front end is importable without torch or numba::

    import pcdsl
    checked = pcdsl.check("examples/tiny.pc")     # raises pcdsl.PcdslError on bad input
    graph = checked.circuit("tiny")                # a pcdsl.ir.CircuitGraph
    pcdsl.render(graph)                            # its picture (Jupyter shows it)
"""

from __future__ import annotations

from pathlib import Path

from pcdsl import render  # a module that is also a function: pcdsl.render(graph) -> its picture
from pcdsl.diagnostics import Diagnostic, InternalError, PcdslError, render_all
from pcdsl.frontend import Checked, check_file, check_text
from pcdsl.ir.graph import CircuitGraph, Node, NodeKind, Variable

__version__ = "0.1.0"


def check(path: str | Path) -> Checked:
    """Parse, resolve, elaborate and validate a .pc file (and its imports); a .jpc, .psdd, .sdd or
    .vtree file (by extension, .gz too) is read and validated instead."""
    from pcdsl.io.formats import check_path

    return check_path(path)


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
    "compile",
    "convert",
    "load",
    "load_model",
    "render",
    "render_all",
]


def load(path: str | Path, circuit: str | None = None) -> CircuitGraph:
    """The named circuit of a .pc file (or its first), checked and validated. A .jpc, .psdd or
    .sdd file (by extension) gives its circuit with the file's parameters on its nodes."""
    from pcdsl.io.formats import is_circuit_file, read_circuit

    if is_circuit_file(path):
        return read_circuit(path).graph
    return check_file(path).circuit(circuit)


def compile(graph: CircuitGraph, backend: str = "torch", *, params: object = None, seed: int = 0,
            **options: object) -> object:
    """Compile a circuit graph to a runnable model (``device=`` and ``dtype=`` for torch).

    Parameters the file leaves out are initialised randomly from ``seed``.
    """
    from pcdsl.backends import lower
    from pcdsl.params import Parameters, initialise
    from pcdsl.plan import compile_plan

    concrete = params if isinstance(params, Parameters) else initialise(graph, seed)
    return lower(compile_plan(graph, concrete), backend, **options)


def load_model(path: str | Path) -> tuple[CircuitGraph, object]:
    """A trained model file (.safetensors), or a .jpc, .psdd or .sdd file: its circuit graph and
    parameters (`compile(graph, params=...)`)."""
    from pcdsl.io.formats import is_circuit_file, read_circuit
    from pcdsl.io.model import load_model as _load

    if is_circuit_file(path):
        imported = read_circuit(path)
        return imported.graph, imported.params
    return _load(path)


def convert(source: str | Path, target: str | Path, circuit: str | None = None) -> list[Path]:
    """Convert a circuit between .pc, .safetensors, .jpc, .psdd (+ .vtree), .sdd and .vtree files,
    chosen by extension (docs/formats.md); returns the files written."""
    from pcdsl.io.formats import convert as _convert

    return _convert(source, target, circuit)
