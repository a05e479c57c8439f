"""`pcdsl check` and `pcdsl explain`."""

from __future__ import annotations

import argparse
import sys

from pcdsl.codes import CODES
from pcdsl.diagnostics import PcdslError, render, render_all

from .common import EXIT_DIAGNOSTICS, EXIT_OK, EXIT_USAGE


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    check = sub.add_parser("check", help="check .pc files and summarise their circuits",
                           description="Parse, resolve and validate .pc files. Exit 0 when all are valid, "
                           "1 when any has errors.")
    check.add_argument("files", nargs="+", metavar="FILE",
                       help=".pc files, model files (.safetensors) or circuit files (.jpc, .psdd, .sdd, .vtree, .gz)")
    check.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    check.add_argument("--dump-ir", action="store_true", help="print each circuit graph in a stable text form")
    check.set_defaults(handler=run_check)

    explain = sub.add_parser("explain", help="explain a diagnostic code, e.g. E0203 (--list: every code)",
                             description="Why a diagnostic is an error, a minimal example that fails with it, "
                             "and the fix.")
    explain.add_argument("code", metavar="CODE", nargs="?", help="e.g. E0203")
    explain.add_argument("--list", action="store_true", help="list every code with one line each")
    explain.set_defaults(handler=run_explain)


def run_check(args: argparse.Namespace) -> int:
    from pcdsl.io.files import MODEL, file_kind
    from pcdsl.io.formats import check_path
    from pcdsl.ir.dump import dump

    status = EXIT_OK
    for file in args.files:
        if file_kind(file) == MODEL:
            status = max(status, _check_model(args, file))
            continue
        try:
            checked = check_path(file)  # .pc source, or a circuit/vtree file by its extension
        except PcdslError as exc:
            print(render_all(exc.diagnostics) + "\n", file=sys.stderr)
            errors = sum(d.is_error for d in exc.diagnostics)
            print(f"{file}: {errors} error{'s' if errors != 1 else ''}", file=sys.stderr)
            status = EXIT_DIAGNOSTICS
            continue
        for w in checked.warnings:
            print(render(w) + "\n", file=sys.stderr)
        if args.quiet:
            continue
        for name, graph in checked.circuits.items():
            if graph.span.source is checked.program.main:
                print(f"{file}: {summary(checked, name)}")
                if args.dump_ir:
                    print(dump(graph), end="")
        for name in checked.recipes:
            print(f"{file}: recipe {name}: ok")
        for note in getattr(checked, "notes", ()):
            print(f"{file}: {note}")
    return status


def _check_model(args: argparse.Namespace, file: str) -> int:
    """Check a model file: every part of it (pcdsl.io.checks), then the same summary as source."""
    from pcdsl.io.model import ModelFileError, load_model
    from pcdsl.ir.dump import dump
    from pcdsl.ir.validate import analyse

    try:
        graph, _ = load_model(file)
    except ModelFileError as exc:
        print(f"{exc}\n{file}: 1 error", file=sys.stderr)
        return EXIT_DIAGNOSTICS
    if not args.quiet:
        print(f"{file}: model file: {circuit_summary(graph, analyse(graph))}")
        if args.dump_ir:
            print(dump(graph), end="")
    return EXIT_OK


def summary(checked, name: str) -> str:  # type: ignore[no-untyped-def]
    """One line: sizes and structural properties of a checked circuit."""
    return circuit_summary(checked.circuits[name], checked.properties[name])


def circuit_summary(g, p) -> str:  # type: ignore[no-untyped-def]
    """One line: sizes and structural properties (`pcdsl.ir.validate.Properties`) of a valid circuit."""
    name = g.name
    sizes = (f"{len(g)} nodes ({g.num_units()} units), {g.num_edges()} edges, {g.num_parameters()} parameters, "
             f"{len(g.variables)} variables")
    det = "deterministic" if p.deterministic else f"determinism {p.determinism_note}"
    vtree = p.vtree if p.vtree is None or len(p.vtree) <= 100 else p.vtree[:97] + "..."
    sd = f"structured-decomposable, vtree {vtree}" if p.structured else "not structured-decomposable"
    return f"circuit {name}: {sizes}; smooth, decomposable; {det}; {sd}"


def run_explain(args: argparse.Namespace) -> int:
    from pcdsl.explanations import explain, listing
    from pcdsl.syntax.names import did_you_mean

    if args.list:
        print(listing())
        return EXIT_OK
    if args.code is None:
        print("pcdsl explain: give a code, e.g. `pcdsl explain E0203`, or --list for every code", file=sys.stderr)
        return EXIT_USAGE
    text = explain(args.code)
    if text is None:
        hint = did_you_mean(args.code.upper(), CODES)
        print(f"pcdsl explain: unknown code '{args.code}' ({hint or 'pcdsl explain --list shows every code'})",
              file=sys.stderr)
        return EXIT_USAGE
    print(text)
    return EXIT_OK
