"""Every circuit file pcdsl knows, chosen by extension: one place to read, write and convert.

==============  =============================  =====  =====
extension       what                           read   write
==============  =============================  =====  =====
``.pc``         pcdsl source                   yes    yes (scalar, parameters written out)
``.safetensors`` pcdsl model file              yes    yes
``.jpc``        Juice.jl circuit               yes    yes
``.psdd``       PSDD (+ ``.vtree`` beside it)  yes    yes (+ ``.vtree``)
``.sdd``        SDD (+ ``.vtree`` beside it)   yes    no (a constraint, not a distribution)
``.vtree``      vtree alone                    yes    yes
==============  =============================  =====  =====

The line formats may be gzipped (``.jpc.gz``, ...). A `.psdd`, `.sdd` or `.jpc` file finds its
vtree beside it (same stem, ``.vtree`` or ``.vtree.gz``) unless one is named. Reading gives an
:class:`Imported`: a validated pcdsl circuit graph whose nodes carry the file's parameters (so
``pcdsl.compile(imported.graph)`` runs the file's model), those parameters, and the vtree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pcdsl.diagnostics import Diagnostic, PcdslError, Source, Span, error, sorted_diagnostics
from pcdsl.frontend import Checked
from pcdsl.io.flat import FormatError, from_graph, to_graph
from pcdsl.io.jpc import read_jpc, write_jpc
from pcdsl.io.pc_source import write_pc
from pcdsl.io.psdd import derive_vtree, read_psdd, vtree_path, write_psdd
from pcdsl.io.sdd import read_sdd
from pcdsl.io.vtree_file import VtreeFile, read_vtree, write_vtree
from pcdsl.ir.graph import CircuitGraph
from pcdsl.ir.validate import analyse
from pcdsl.ir.vtree import Vtree
from pcdsl.params import Parameters, initialise

LINE_FORMATS = ("jpc", "psdd", "sdd", "vtree")
ALL_FORMATS = (*LINE_FORMATS, "pc", "safetensors")


@dataclass
class Imported:
    """A circuit read from a file: its graph (parameters on the nodes), parameters and vtree."""

    graph: CircuitGraph
    params: Parameters
    vtree: Vtree | None = None
    warnings: list[Diagnostic] = field(default_factory=list)
    model_count: int | None = None  # .sdd without weights: the exact number of models
    log_weight: float | None = None  # .sdd: log of the (weighted) model count


def format_of(path: str | Path) -> str | None:
    """The format of a file by its extension (``.gz`` allowed on line formats), or None."""
    name = Path(path).name.lower()
    packed = name.endswith(".gz")
    name = name.removesuffix(".gz")
    suffix = name.rsplit(".", 1)[-1] if "." in name else ""
    if suffix in LINE_FORMATS or (suffix in ALL_FORMATS and not packed):
        return suffix
    return None


def is_circuit_file(path: str | Path) -> bool:
    """Whether `path` is one of the line formats (read with :func:`read_circuit`)."""
    return format_of(path) in LINE_FORMATS


def find_vtree(path: str | Path) -> Path | None:
    """The vtree beside a circuit file (same stem, .vtree or .vtree.gz), if there is one."""
    plain = vtree_path(Path(path))
    for candidate in (plain, plain.with_name(plain.name + ".gz")):
        if candidate.exists() and candidate != Path(path):
            return candidate
    return None


def read_circuit(path: str | Path, *, vtree: str | Path | None = None, weights: np.ndarray | None = None,
                 renormalise: bool = False) -> Imported:
    """Read a .jpc, .psdd or .sdd file (or .gz) into a validated circuit; raises PcdslError with
    located diagnostics. `vtree`: its vtree file (default: the one beside it). `weights`: an .sdd's
    literal weights, (variables, 2). `renormalise`: accept rows that do not add up to 1."""
    kind = format_of(path)
    if kind not in ("jpc", "psdd", "sdd"):
        raise PcdslError([_no_circuit(path, kind)])
    vtree_file = read_vtree(vtree) if vtree is not None else _beside(path)
    model_count = log_weight = None
    if kind == "jpc":
        flat = read_jpc(path, vtree_file, renormalise)
    elif kind == "psdd":
        flat = read_psdd(path, vtree_file, renormalise)
    else:
        if vtree_file is None:
            raise PcdslError([error("E0712", f"'{path}' needs its vtree: no {vtree_path(Path(path)).name} beside it",
                                    Span(None, 0, 0, 0, 0),
                                    help="put its vtree beside it, or name one (vtree= in Python)")])
        sdd = read_sdd(path, vtree_file, weights)
        flat, model_count, log_weight = sdd.flat, sdd.model_count, sdd.log_weight
    graph, params, found = to_graph(flat)
    errors = [d for d in found if d.is_error]
    if errors:
        raise PcdslError(sorted_diagnostics(errors))
    return Imported(graph, params, vtree_file.vtree if vtree_file else None, found, model_count, log_weight)


def _beside(path: str | Path) -> VtreeFile | None:
    found = find_vtree(path)
    return read_vtree(found) if found is not None else None


def _no_circuit(path: str | Path, kind: str | None) -> Diagnostic:
    if kind == "vtree":
        return error("E0712", f"'{path}' is a vtree alone and holds no circuit", Span(None, 0, 0, 0, 0),
                     help="give the .psdd, .sdd or .jpc file that goes with it")
    return error("E0712", f"'{path}' is not a circuit file (.jpc, .psdd or .sdd, optionally .gz)",
                 Span(None, 0, 0, 0, 0))


def load_any(path: str | Path, circuit: str | None = None, seed: int = 0
             ) -> tuple[CircuitGraph, Parameters, Vtree | None]:
    """Graph, parameters and vtree from any circuit file: .pc (parameters it leaves out drawn
    from `seed`), .safetensors, or a line format."""
    kind = format_of(path)
    if kind == "pc":
        from pcdsl.frontend import check_file

        graph = check_file(path).circuit(circuit)
        return graph, initialise(graph, seed), None
    if kind == "safetensors":
        from pcdsl.io.model import load_model

        graph, params = load_model(path)
        return graph, params, None
    imported = read_circuit(path)
    return imported.graph, imported.params, imported.vtree


def write_circuit(path: str | Path, graph: CircuitGraph, params: Parameters, vtree: Vtree | None = None) -> list[Path]:
    """Write a circuit in the format of `path`'s extension; returns the files written (a .psdd
    brings its .vtree, and so does a .jpc written with a vtree). Raises FormatError when the format
    cannot hold the circuit."""
    path = Path(path)
    kind = format_of(path)
    if kind == "safetensors":
        from pcdsl.io.model import save_model

        return [save_model(path, graph, params)]
    if kind == "sdd":
        raise FormatError("pcdsl does not write .sdd files: an SDD is a constraint, not a distribution "
                          "(write a .psdd)")
    if kind not in ALL_FORMATS:
        raise FormatError(f"'{path.name}' has no known extension (one of .pc, .safetensors, .jpc, .psdd, .vtree; "
                          ".gz for the last three)")
    flat = from_graph(graph, params)
    if kind == "pc":
        return [write_pc(path, flat)]
    if kind == "psdd":
        return write_psdd(path, flat, vtree)
    if kind == "vtree":
        return [write_vtree(path, vtree if vtree is not None else derive_vtree(flat))]
    written = [write_jpc(path, flat, vtree)]
    return written + ([write_vtree(vtree_path(path), vtree)] if vtree is not None else [])


def convert(source: str | Path, target: str | Path, circuit: str | None = None, seed: int = 0) -> list[Path]:
    """Convert between any two formats (by extension); returns the files written."""
    if format_of(source) == "vtree":
        if format_of(target) != "vtree":
            raise FormatError(f"'{source}' is a vtree alone; it converts only to another .vtree file")
        return [write_vtree(target, read_vtree(source).vtree)]
    if format_of(source) is None:
        raise FormatError(f"'{source}' has no known extension (.pc, .safetensors, .jpc, .psdd, .sdd, .vtree)")
    graph, params, vtree = load_any(source, circuit, seed)
    return write_circuit(target, graph, params, vtree)


class CheckedFile(Checked):
    """A checked circuit or vtree file, with facts to print beside its summary."""

    notes: list[str]


def check_path(path: str | Path) -> Checked:
    """`pcdsl check` for any file: .pc files as ever, line formats read and validated."""
    kind = format_of(path)
    if kind not in LINE_FORMATS:
        from pcdsl.frontend import check_file

        return check_file(path)
    from pcdsl.syntax.program import Program

    if kind == "vtree":
        vtree = read_vtree(path)
        result = CheckedFile(Program(vtree.lines.source))
        tree = vtree.vtree
        result.notes = [f"vtree over {len(tree.leaf_of)} variables, {len(tree)} nodes: {tree.text()}"]
        return result
    imported = read_circuit(path)
    graph = imported.graph
    source = graph.span.source or Source(str(path), "")
    result = CheckedFile(Program(source), {graph.name: graph}, {graph.name: analyse(graph)},
                         warnings=imported.warnings)
    result.notes = []
    if imported.vtree is not None:
        result.notes.append(f"vtree (from its .vtree file): {imported.vtree.text([v.name for v in graph.variables])}")
    if imported.model_count is not None:
        result.notes.append(f"models: {imported.model_count}")
    elif imported.log_weight is not None:
        result.notes.append(f"weighted model count: exp({imported.log_weight:.6g})")
    return result
