"""pcdsl: a compiler and DSL for probabilistic circuits.

The front end is importable without torch or numba::

    import pcdsl
    checked = pcdsl.check("examples/tiny.pc")     # raises pcdsl.PcdslError on bad input
    graph = checked.circuit("tiny")                # a pcdsl.ir.CircuitGraph
    pcdsl.render(graph)                            # its picture (Jupyter shows it)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pcdsl.diagnostics import Diagnostic, InternalError, PcdslError, render_all
from pcdsl.frontend import Checked, check_file, check_text
from pcdsl.ir.graph import CircuitGraph, Node, NodeKind, Variable

__version__ = "0.1.0"


def render(thing: Any, level: str = "auto") -> Any:
    """The :class:`~pcdsl.drawing.Picture` of a circuit graph, node group, plan or compiled model
    (Jupyter shows it; ``.svg()``, ``.png()``, ``.save(path)``); a
    :class:`~pcdsl.diagnostics.Diagnostic` renders as its text (file:line:col, the source line,
    a caret). `level`: "auto", "circuit" or "region"."""
    from pcdsl.drawing import render as draw_thing

    return draw_thing(thing, level)


def check(path: str | Path) -> Checked:
    """Parse, resolve, elaborate and validate a .pc file (and its imports); a .jpc, .psdd, .sdd or
    .vtree file (by extension, .gz too) is read and validated instead."""
    from pcdsl.io.formats import check_path

    _expect_source(path, "pcdsl.check")
    return check_path(path)


def _expect_source(path: str | Path, function: str) -> None:
    """Refuse a model file where .pc source is expected, saying what reads it."""
    from pcdsl.arguments import InvalidArgument
    from pcdsl.io.files import MODEL, file_kind

    if not isinstance(path, (str, Path)):
        raise InvalidArgument("E0801", f"{function} takes a path (str or pathlib.Path), found "
                                       f"{type(path).__name__}")
    if file_kind(path) == MODEL:
        raise InvalidArgument("E0809", f"'{path}' is a pcdsl model file, not .pc source",
                              "pcdsl.load_model(path) reads it: (graph, params)")


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
    "fit",
    "fits_in_memory",
    "load",
    "load_model",
    "render",
    "render_all",
]


def load(path: str | Path, circuit: str | None = None) -> CircuitGraph:
    """The named circuit of a .pc file (or its first), checked and validated. A .jpc, .psdd or
    .sdd file (by extension) gives its circuit with the file's parameters on its nodes."""
    from pcdsl.io.formats import is_circuit_file, read_circuit

    _expect_source(path, "pcdsl.load")
    if is_circuit_file(path):
        return read_circuit(path).graph
    return check_file(path).circuit(circuit)


def compile(graph: CircuitGraph, backend: str = "torch", *, params: object = None, seed: int = 0,
            **options: object) -> object:
    """Compile a circuit graph to a runnable model (``device=`` and ``dtype=`` for torch).

    Parameters the file leaves out are initialised randomly from ``seed``.
    """
    from pcdsl import arguments
    from pcdsl.backends import check_backend, lower
    from pcdsl.params import Parameters, initialise
    from pcdsl.plan import compile_plan

    if not isinstance(graph, CircuitGraph):
        raise arguments.InvalidArgument("E0801", f"pcdsl.compile takes a CircuitGraph (from pcdsl.load or "
                                                 f"pcdsl.load_model), found {type(graph).__name__}")
    check_backend(backend)
    if params is not None and not isinstance(params, Parameters):
        raise arguments.InvalidArgument("E0801", f"params must be pcdsl Parameters (from pcdsl.load_model or "
                                                 f"training), found {type(params).__name__}")
    arguments.seed(seed)
    device = arguments.device(options.get("device", "cpu"), backend)
    fits_in_memory(graph, arguments.dtype(options.get("dtype", "float32")), device)
    concrete = params if isinstance(params, Parameters) else initialise(graph, seed)
    return lower(compile_plan(graph, concrete), backend, **options)


def fits_in_memory(graph: CircuitGraph, dtype: str = "float32", device: str = "cpu") -> None:
    """Refuse (pcdsl.PcdslError, with the size) a circuit whose parameters and value buffers would not
    fit in memory, estimated from its sizes before anything is allocated: parameters are held about
    three times (graph, plan, backend) in float64, and queries need at least one value per unit
    and a few rows of evidence."""
    from pcdsl import arguments

    itemsize = 8 if "64" in dtype else 4
    units = graph.num_units() + 2
    need = 3 * 8 * graph.num_parameters() + 32 * units * itemsize
    arguments.fits(need, f"circuit '{graph.name}' ({graph.num_parameters()} parameters, {units} units)",
                   device if device.startswith("cuda") else "cpu")


def fit(graph: CircuitGraph, data: object, **options: object) -> object:
    """Learn parameters from data with EM, as `pcdsl train` does (see :func:`pcdsl.learn.fit.fit`);
    returns the best parameters, for ``compile(graph, params=...)`` or ``io.model.save_model``."""
    from pcdsl.learn.fit import fit as _fit

    return _fit(graph, data, **options)  # type: ignore[arg-type]


def load_model(path: str | Path) -> tuple[CircuitGraph, object]:
    """A trained model file (.safetensors), or a .jpc, .psdd or .sdd file: its circuit graph and
    parameters (`compile(graph, params=...)`)."""
    from pcdsl.arguments import InvalidArgument
    from pcdsl.io.files import MODEL, file_kind, is_text
    from pcdsl.io.formats import is_circuit_file, read_circuit
    from pcdsl.io.model import load_model as _load

    if not isinstance(path, (str, Path)):
        raise InvalidArgument("E0801", f"pcdsl.load_model takes a path (str or pathlib.Path), found "
                                       f"{type(path).__name__}")
    if is_circuit_file(path):
        imported = read_circuit(path)
        return imported.graph, imported.params
    if file_kind(path) != MODEL and is_text(path):
        raise InvalidArgument("E0809", f"'{path}' is text, not a pcdsl model file (.pc source?)",
                              "pcdsl.load(path) reads .pc source; pcdsl.compile(graph) then runs it")
    return _load(path)


def convert(source: str | Path, target: str | Path, circuit: str | None = None) -> list[Path]:
    """Convert a circuit between .pc, .safetensors, .jpc, .psdd (+ .vtree), .sdd and .vtree files,
    chosen by extension (docs/formats.md); returns the files written."""
    from pcdsl.io.formats import convert as _convert

    return _convert(source, target, circuit)
