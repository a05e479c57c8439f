"""`pcdsl render` and `pcdsl demo`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pcdsl.arguments import InvalidArgument
from pcdsl.diagnostics import Diagnostic, PcdslError, render_all
from pcdsl.ir.graph import CircuitGraph
from pcdsl.render_fit import DEFAULT_MAX_NODES

from .check import summary
from .common import DATA_SUFFIXES, EXIT_DIAGNOSTICS, EXIT_OK, EXIT_USAGE, Exit, load_circuit, whole


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    render_ = sub.add_parser("render", help="draw a circuit with graphviz",
                             description="Draw a circuit as DOT, SVG, PNG or PDF (format from -o's suffix).")
    render_.add_argument("file", metavar="FILE", help="a .pc file or a model file (.safetensors)")
    render_.add_argument("-o", "--output", required=True, metavar="OUT", help="e.g. circuit.svg")
    render_.add_argument("--circuit", metavar="NAME", help="which circuit (default: the file's first)")
    render_.add_argument("--level", choices=("auto", "circuit", "region"), default="auto",
                         help="node groups, or regions (scopes); auto picks regions when node groups do not fit")
    render_.add_argument("--depth", type=whole(1), default=None,
                         help="draw only this many steps below the root (default: as deep as fits)")
    render_.add_argument("--max-nodes", type=whole(1), default=None, metavar="N",
                         help=f"draw at most N nodes (default: {DEFAULT_MAX_NODES}); the rest are collapsed")
    render_.set_defaults(handler=run_render)

    demo = sub.add_parser("demo", help="check and draw the examples, then learn NLTCS (the quick-start job)",
                          description="Check every .pc file in a folder, draw each circuit as SVG and PNG, "
                          "then run the NLTCS recipe (examples/nltcs.pc) and print its test log-likelihood.")
    demo.add_argument("--examples", default="examples", metavar="DIR", help="default: ./examples")
    demo.add_argument("-o", "--output", default="out/demo", metavar="DIR", help="default: ./out/demo")
    demo.set_defaults(handler=run_demo)


def run_render(args: argparse.Namespace) -> int:
    """Draw a circuit; an invalid one is drawn too, its violations in red (exit 1, diagnostics printed)."""
    from pcdsl.drawing import FORMATS, RenderError, draw, write_drawing

    suffix = Path(args.output).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise InvalidArgument("E0809", f"-o '{args.output}': unknown picture format '{suffix}' "
                                       f"(known: {', '.join('.' + f for f in FORMATS)})")
    graph, problems = _drawable(args)
    drawing = draw(graph, args.level, args.depth, args.max_nodes, problems)
    try:
        out = write_drawing(drawing, Path(args.output))
    except RenderError as exc:
        print(f"pcdsl render: {exc}", file=sys.stderr)
        return EXIT_DIAGNOSTICS
    print(f"wrote {out} (circuit {graph.name}, {drawing.level} level)")
    if drawing.note:
        print(f"note: {drawing.note}")
    if problems:
        errors = sum(d.is_error for d in problems)
        print(f"pcdsl render: circuit {graph.name} is not valid ({errors} error{'s' * (errors != 1)}); drew it "
              "anyway, the nodes in question in red", file=sys.stderr)
        return EXIT_DIAGNOSTICS
    return EXIT_OK


def _drawable(args: argparse.Namespace) -> tuple[CircuitGraph, list[Diagnostic]]:
    """The circuit to draw and, for .pc source whose circuit fails validation, its violations
    (printed); model files, circuit files (.jpc, .psdd, .sdd) and valid source go through
    `load_circuit`."""
    from pcdsl.frontend import check_file_keeping_invalid
    from pcdsl.io.files import MODEL, file_kind
    from pcdsl.io.formats import is_circuit_file

    loaded_as_is = file_kind(args.file) == MODEL or is_circuit_file(args.file)
    if loaded_as_is or Path(args.file).suffix.lower() in DATA_SUFFIXES:
        return load_circuit(args), []
    try:
        checked, _ = check_file_keeping_invalid(args.file)
    except PcdslError as exc:
        print(render_all(exc.diagnostics), file=sys.stderr)
        raise Exit(EXIT_DIAGNOSTICS) from None
    invalid = checked.invalid.get(args.circuit) if args.circuit else None
    if invalid is None and args.circuit is None and not checked.circuits and checked.invalid:
        invalid = next(iter(checked.invalid.values()))
    if invalid is None:
        return load_circuit(args), []
    graph, problems = invalid
    print(render_all(problems) + "\n", file=sys.stderr)
    return graph, problems


def run_demo(args: argparse.Namespace) -> int:
    import shutil

    from pcdsl.drawing import RenderError, render_file
    from pcdsl.frontend import check_file

    from .train import run_recipe_command

    files = sorted(Path(args.examples).glob("*.pc"))
    if not files:
        print(f"pcdsl demo: no .pc files in '{args.examples}' (run it from the repository root)", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    formats = ("svg", "png") if shutil.which("dot") else ("dot",)
    status = EXIT_OK
    for file in files:
        try:
            checked = check_file(file)
        except PcdslError as exc:
            print(render_all(exc.diagnostics), file=sys.stderr)
            status = EXIT_DIAGNOSTICS
            continue
        for name in checked.recipes:
            print(f"{file}: recipe {name}: ok")
        for name, graph in checked.circuits.items():
            if graph.span.source is not checked.program.main:
                continue
            print(f"{file}: {summary(checked, name)}")
            try:
                pictures = [render_file(graph, out / f"{name}.{fmt}") for fmt in formats]
            except RenderError as exc:
                print(f"pcdsl demo: {exc}", file=sys.stderr)
                return EXIT_DIAGNOSTICS
            print("  drew " + ", ".join(str(p) for p in pictures))
    if formats == ("dot",):
        print("(graphviz 'dot' is not installed: wrote DOT text only; apt-get install graphviz for pictures)")
    recipe = Path(args.examples) / "nltcs.pc"
    if status == EXIT_OK and recipe.exists():  # the main job: learn a real model, score it on test
        print(f"\ntraining: pcdsl run {recipe}")
        run_args = argparse.Namespace(command="run", file=str(recipe), recipe=None, out=str(out / "nltcs"),
                                      backend="torch", device="cpu", dtype="float32", seed=0, quiet=True, nproc=1)
        status = run_recipe_command(run_args)
    return status
