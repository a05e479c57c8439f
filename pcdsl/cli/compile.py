"""`pcdsl compile`: a layered plan, and standalone backend code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import EXIT_OK, EXIT_USAGE, load_circuit, seed


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    compile_ = sub.add_parser("compile", help="compile a circuit to a layered plan and emit backend code",
                              description="Fold a circuit into layers; print the plan (--dump-plan) and/or "
                              "write a standalone module for a backend (-o DIR).")
    compile_.add_argument("file", metavar="FILE", help="a .pc file or a model file (.safetensors)")
    compile_.add_argument("--circuit", metavar="NAME", help="which circuit (default: the file's first)")
    compile_.add_argument("--backend", default="torch", metavar="NAME",
                          help="torch (a module + .safetensors) or numba (a package needing only numpy and "
                               "numba); default: torch")
    compile_.add_argument("-o", "--output", metavar="DIR", help="write the emitted module and its parameters here")
    compile_.add_argument("--dump-plan", action="store_true", help="print the layered plan in a stable text form")
    compile_.add_argument("--seed", type=seed, default=0, help="seed for parameters the file leaves out (default 0)")
    compile_.set_defaults(handler=run_compile)


def run_compile(args: argparse.Namespace) -> int:
    import importlib

    from pcdsl.backends import check_backend
    from pcdsl.params import initialise
    from pcdsl.plan import compile_plan, dump_plan

    emitters = {"torch": "pcdsl.backends.torch.emit", "numba": "pcdsl.backends.numba.emit"}  # standalone code
    check_backend(args.backend)
    if args.output is not None and args.backend not in emitters:
        print(f"pcdsl compile: backend '{args.backend}' has no code emission "
              f"(backends that emit code: {', '.join(sorted(emitters))})", file=sys.stderr)
        return EXIT_USAGE
    graph = load_circuit(args)
    plan = compile_plan(graph, args.trained if args.trained is not None else initialise(graph, args.seed))
    if args.dump_plan:
        print(dump_plan(plan), end="")
    elif args.output is None:
        print(dump_plan(plan).splitlines()[0] + " (use -o DIR to emit code, --dump-plan for the layers)")
    if args.output is None:
        return EXIT_OK
    try:
        emitter = importlib.import_module(emitters[args.backend])
    except ImportError as exc:
        print(f"pcdsl compile: the {args.backend} backend needs '{exc.name}' (pip install 'pcdsl[all]')",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        written = emitter.emit_module(plan, Path(args.output))
    except OSError as exc:
        print(f"pcdsl compile: cannot write to '{args.output}': {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {', '.join(str(p) for p in written)} (circuit {graph.name}, backend {args.backend})")
    return EXIT_OK
