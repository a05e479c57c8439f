"""`pcdsl render` and `pcdsl demo`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pcdsl.diagnostics import PcdslError, render_all

from .check import summary
from .common import EXIT_DIAGNOSTICS, EXIT_OK, EXIT_USAGE, load_circuit


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    render_ = sub.add_parser("render", help="draw a circuit with graphviz",
                             description="Draw a circuit as DOT, SVG, PNG or PDF (format from -o's suffix).")
    render_.add_argument("file", metavar="FILE")
    render_.add_argument("-o", "--output", required=True, metavar="OUT", help="e.g. circuit.svg")
    render_.add_argument("--circuit", metavar="NAME", help="which circuit (default: the file's first)")
    render_.add_argument("--level", choices=("auto", "circuit", "region"), default="auto",
                         help="node groups, or regions (scopes); auto picks regions for large circuits")
    render_.set_defaults(handler=run_render)

    demo = sub.add_parser("demo", help="check and draw the examples, then learn NLTCS (the quick-start job)",
                          description="Check every .pc file in a folder, draw each circuit as SVG and PNG, "
                          "then run the NLTCS recipe (examples/nltcs.pc) and print its test log-likelihood.")
    demo.add_argument("--examples", default="examples", metavar="DIR", help="default: ./examples")
    demo.add_argument("-o", "--output", default="out/demo", metavar="DIR", help="default: ./out/demo")
    demo.set_defaults(handler=run_demo)


def run_render(args: argparse.Namespace) -> int:
    from pcdsl.render import RenderError, render_file

    graph = load_circuit(args)
    try:
        out = render_file(graph, Path(args.output), args.level)
    except RenderError as exc:
        print(f"pcdsl render: {exc}", file=sys.stderr)
        return EXIT_USAGE if "format" in str(exc) else EXIT_DIAGNOSTICS
    print(f"wrote {out} (circuit {graph.name})")
    return EXIT_OK


def run_demo(args: argparse.Namespace) -> int:
    import shutil

    from pcdsl.frontend import check_file
    from pcdsl.render import RenderError, render_file

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
                                      backend="torch", device="cpu", dtype="float32", seed=0, quiet=True)
        status = run_recipe_command(run_args)
    return status
