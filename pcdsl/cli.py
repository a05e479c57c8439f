"""The `pcdsl` command.

Exit codes: 0 success, 1 the input has errors (diagnostics printed),
2 usage error, 3 internal error (a bug in pcdsl).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from pcdsl import __version__
from pcdsl import plot as plot_command
from pcdsl.codes import CODES
from pcdsl.diagnostics import PcdslError, render, render_all
from pcdsl.ir.graph import CircuitGraph

EXIT_OK, EXIT_DIAGNOSTICS, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


def _bounded(low: float, high: float | None):  # type: ignore[no-untyped-def]
    """An argparse type: a float in [low, high]."""
    def read(text: str) -> float:
        value = float(text)
        if not low <= value <= (high if high is not None else float("inf")):
            span = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {span}, found {value}")
        return value
    return read


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, found {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pcdsl", description="A compiler and DSL for probabilistic circuits.")
    p.add_argument("--version", action="version", version=f"pcdsl {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    check = sub.add_parser("check", help="check .pc files and summarise their circuits",
                           description="Parse, resolve and validate .pc files. Exit 0 when all are valid, "
                           "1 when any has errors.")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    check.add_argument("--dump-ir", action="store_true", help="print each circuit graph in a stable text form")

    render_ = sub.add_parser("render", help="draw a circuit with graphviz",
                             description="Draw a circuit as DOT, SVG, PNG or PDF (format from -o's suffix).")
    render_.add_argument("file", metavar="FILE")
    render_.add_argument("-o", "--output", required=True, metavar="OUT", help="e.g. circuit.svg")
    render_.add_argument("--circuit", metavar="NAME", help="which circuit (default: the file's first)")
    render_.add_argument("--level", choices=("auto", "circuit", "region"), default="auto",
                         help="node groups, or regions (scopes); auto picks regions for large circuits")

    demo = sub.add_parser("demo", help="check and draw the examples, then learn NLTCS (the quick-start job)",
                          description="Check every .pc file in a folder, draw each circuit as SVG and PNG, "
                          "then run the NLTCS recipe (examples/nltcs.pc) and print its test log-likelihood.")
    demo.add_argument("--examples", default="examples", metavar="DIR", help="default: ./examples")
    demo.add_argument("-o", "--output", default="out/demo", metavar="DIR", help="default: ./out/demo")

    compile_ = sub.add_parser("compile", help="compile a circuit to a layered plan and emit backend code",
                              description="Fold a circuit into layers; print the plan (--dump-plan) and/or "
                              "write a standalone module for a backend (-o DIR).")
    compile_.add_argument("file", metavar="FILE")
    compile_.add_argument("--circuit", metavar="NAME", help="which circuit (default: the file's first)")
    compile_.add_argument("--backend", default="torch", metavar="NAME",
                          help="torch (a module + .safetensors) or numba (a package needing only numpy and "
                               "numba); default: torch")
    compile_.add_argument("-o", "--output", metavar="DIR", help="write the emitted module and its parameters here")
    compile_.add_argument("--dump-plan", action="store_true", help="print the layered plan in a stable text form")
    compile_.add_argument("--seed", type=int, default=0, help="seed for parameters the file leaves out (default 0)")

    def runnable(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", metavar="FILE")
        parser.add_argument("--circuit", metavar="NAME", help="which circuit (default: the file's first)")
        parser.add_argument("--backend", default="torch", help="torch or numba (CPU); default: torch")
        parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: cpu)")
        parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
        parser.add_argument("--seed", type=int, default=0, help="for parameters the file leaves out, and draws")
        parser.add_argument("--renormalise", action="store_true",
                            help="a model file whose probability rows do not add up to 1: divide each row by its "
                                 "sum (with a warning) instead of refusing the file")

    eval_ = sub.add_parser("eval", help="average log-likelihood and bits per dimension of a dataset",
                           description="Evaluate a circuit on data (.data/.csv/.txt/.npy/.npz; -1, '?' or an "
                           "empty field marks a missing value, which is marginalised) or on image files (IDX, "
                           "CIFAR-10 .bin, ImageNet .npz, .npy (N, H, W[, C])), one row per image.")
    runnable(eval_)
    eval_.add_argument("--data", required=True, metavar="PATH")
    eval_.add_argument("--batch", type=int, default=1024, help="rows per batch (default: 1024)")
    _nproc(eval_)

    sample = sub.add_parser("sample", help="draw samples from a circuit",
                            description="Draw samples; print them as CSV or write them (-o x.csv, x.npy, or "
                            "x.png: a picture grid, for circuits over an image array such as x[28, 28]).")
    runnable(sample)
    sample.add_argument("-n", type=int, default=10, help="how many (default: 10)")
    sample.add_argument("-o", "--output", metavar="OUT", help="write to a .csv, .npy or .png file")
    sample.add_argument("--scale", type=int, default=1, help="PNG: enlarge each pixel this many times")
    sample.add_argument("--colour", default=None, choices=("identity", "ycocg_r", "ycbcr"),
                        help="PNG: the colour space the model's values are in (default: the one its model file "
                             "records, identity for others)")

    train = sub.add_parser("train", help="fit the circuit's parameters with EM",
                           description="Mini-batch EM (step size annealed from --step to --final-step), then "
                           "full-batch EM; the parameters with the best validation score are kept.")
    runnable(train)
    train.add_argument("--data", required=True, metavar="PATH", help="training data")
    train.add_argument("--valid", metavar="PATH", help="validation data, for early stopping and model selection")
    train.add_argument("--test", metavar="PATH", help="test data, scored once at the end")
    train.add_argument("--epochs", type=int, default=10, help="mini-batch EM epochs (default: 10)")
    train.add_argument("--full-epochs", type=int, default=10, help="full-batch EM epochs (default: 10)")
    train.add_argument("--batch", type=int, default=512, help="mini-batch size (default: 512)")
    train.add_argument("--step", type=float, default=0.1, help="first step size (default: 0.1)")
    train.add_argument("--final-step", type=float, default=0.01, help="last step size (default: 0.01)")
    train.add_argument("--pseudocount", type=float, default=0.1, help="(default: 0.1)")
    train.add_argument("--patience", type=int, default=3, help="epochs without progress before stopping")
    train.add_argument("--soften", type=_bounded(0.0, 0.5), default=0.0,
                       help="data softening: an observed value keeps 1 - SOFTEN (0 to 0.5; default: 0)")
    train.add_argument("--entropy", type=_bounded(0.0, None), default=0.0,
                       help="entropy regularisation weight tau (>= 0; default: 0)")
    train.add_argument("--min-std", type=_positive, default=None, metavar="STD",
                       help="floor of every Gaussian leaf's std (default: 1e-3 x its variable's std in the "
                            "training data)")
    train.add_argument("--gaussian-pseudocount", type=_bounded(0.0, None), default=0.0, metavar="K",
                       help="Gaussian prior: K pseudo-observations per unit at the variable's data mean and "
                            "spread (default: 0)")
    train.add_argument("-o", "--output", metavar="MODEL", help="write the trained model (.safetensors)")
    train.add_argument("--init", metavar="MODEL", help="start from a model file's parameters (same structure)")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    run = sub.add_parser("run", help="run a recipe (data, model, training, report) in a run directory",
                         description="Run a recipe; a restarted run resumes from its last checkpoint.")
    run.add_argument("file", metavar="RECIPE")
    run.add_argument("--recipe", metavar="NAME", help="which recipe (default: the file's first)")
    run.add_argument("--out", metavar="DIR", help="run directory (default: runs/NAME)")
    run.add_argument("--backend", choices=("torch", "numba"), default=None,
                     help="default: numba for distillation recipes on the CPU (faster there), else torch")
    for flag, default in (("--device", "cpu"), ("--dtype", "float32")):
        run.add_argument(flag, default=default, help=f"default: {default}")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _nproc(run)

    plot_command.add_command(sub)  # pcdsl plot RUN_DIR... -o curves.png
    convert = sub.add_parser("convert", help="convert a circuit between .pc, .safetensors, .jpc, .psdd, .sdd, .vtree",
                             description="Read any circuit file and write it in the format of OUT's extension "
                             "(.pc, .safetensors, .jpc, .psdd + .vtree, .vtree; .gz for the line formats). "
                             "A .psdd/.sdd/.jpc input uses the .vtree beside it. See docs/formats.md.")
    convert.add_argument("file", metavar="IN")
    convert.add_argument("-o", "--output", required=True, metavar="OUT")
    convert.add_argument("--circuit", metavar="NAME", help="which circuit of a .pc file (default: its first)")
    convert.add_argument("--seed", type=int, default=0, help="for parameters a .pc file leaves out (default 0)")

    explain = sub.add_parser("explain", help="explain a diagnostic code, e.g. E0203")
    explain.add_argument("code", metavar="CODE")
    return p


def _nproc(parser: argparse.ArgumentParser) -> None:
    def count(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"must be a whole number of workers, at least 1, found {text}")
        return int(text)

    parser.add_argument("--nproc", type=count, default=1, metavar="N",
                        help="data-parallel local workers (torch.distributed: gloo on the CPU, NCCL on CUDA); "
                             "for several hosts start the same command under torchrun instead (default: 1)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])  # --nproc starts workers with these
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(_COMMANDS[args.command](args))
    except _Exit as stop:
        return stop.status
    except KeyboardInterrupt:
        print("pcdsl: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 -- a bug, not the user's fault: say so plainly
        print(f"pcdsl: internal error: {type(exc).__name__}: {exc}\n"
              "This is a bug in pcdsl; please report it with the input that triggered it.", file=sys.stderr)
        if os.environ.get("PCDSL_DEBUG"):
            traceback.print_exc()
        else:
            print("(set PCDSL_DEBUG=1 to see the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def _check(args: argparse.Namespace) -> int:
    from pcdsl.io.formats import check_path
    from pcdsl.ir.dump import dump

    status = EXIT_OK
    for file in args.files:
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


def summary(checked, name: str) -> str:  # type: ignore[no-untyped-def]
    """One line: sizes and structural properties of a checked circuit."""
    g, p = checked.circuits[name], checked.properties[name]
    sizes = (f"{len(g)} nodes ({g.num_units()} units), {g.num_edges()} edges, {g.num_parameters()} parameters, "
             f"{len(g.variables)} variables")
    det = "deterministic" if p.deterministic else f"determinism {p.determinism_note}"
    vtree = p.vtree if p.vtree is None or len(p.vtree) <= 100 else p.vtree[:97] + "..."
    sd = f"structured-decomposable, vtree {vtree}" if p.structured else "not structured-decomposable"
    return f"circuit {name}: {sizes}; smooth, decomposable; {det}; {sd}"


class _Exit(Exception):
    """Stop a command with this exit status (its message is already printed)."""

    def __init__(self, status: int):
        self.status = status


def _load_circuit(args: argparse.Namespace) -> CircuitGraph:
    """The circuit a command works on: diagnostics (exit 1) or a usage error (exit 2) otherwise.
    A model file (.safetensors, from `pcdsl train -o`) also sets `args.trained`."""
    from pcdsl.frontend import check_file

    if str(args.file).endswith(".safetensors"):
        graph, args.trained = _read_model(args, args.file)
        return graph
    graph = _read_circuit_file(args)
    if graph is not None:
        return graph

    try:
        checked = check_file(args.file)
        graph = checked.circuit(args.circuit)
    except PcdslError as exc:
        print(render_all(exc.diagnostics), file=sys.stderr)
        raise _Exit(EXIT_DIAGNOSTICS) from None
    except KeyError as exc:
        print(f"pcdsl {args.command}: {exc.args[0]}", file=sys.stderr)
        raise _Exit(EXIT_USAGE) from None
    for w in checked.warnings:
        print(render(w) + "\n", file=sys.stderr)
    return graph


def _read_circuit_file(args: argparse.Namespace) -> CircuitGraph | None:
    """A .jpc/.psdd/.sdd file (or .gz) by its extension: its graph, with `args.trained` set to the
    file's parameters; None for other files. Diagnostics are printed (exit 1)."""
    from pcdsl.io.formats import is_circuit_file, read_circuit

    if not is_circuit_file(args.file):
        return None
    try:
        imported = read_circuit(args.file, renormalise=getattr(args, "renormalise", False))
    except PcdslError as exc:
        print(render_all(exc.diagnostics), file=sys.stderr)
        raise _Exit(EXIT_DIAGNOSTICS) from None
    for w in imported.warnings:
        print(render(w) + "\n", file=sys.stderr)
    args.trained = imported.params
    return imported.graph


def _convert(args: argparse.Namespace) -> int:
    from pcdsl.io.flat import FormatError
    from pcdsl.io.formats import convert

    try:
        written = convert(args.file, args.output, args.circuit, args.seed)
    except PcdslError as exc:
        print(render_all(exc.diagnostics), file=sys.stderr)
        return EXIT_DIAGNOSTICS
    except (FormatError, KeyError) as exc:
        print(f"pcdsl convert: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return EXIT_DIAGNOSTICS
    except OSError as exc:
        print(f"pcdsl convert: cannot write '{args.output}': {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {', '.join(str(p) for p in written)}")
    return EXIT_OK


def _read_model(args: argparse.Namespace, path: str):  # type: ignore[no-untyped-def]
    """A model file's graph and parameters; a refusal is one located message and exit 1,
    a renormalisation (--renormalise) a warning."""
    import warnings

    from pcdsl.io.model import ModelFileError, load_model

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = load_model(path, renormalise=getattr(args, "renormalise", False))
    except ModelFileError as exc:
        print(f"pcdsl {args.command}: {exc}", file=sys.stderr)
        raise _Exit(EXIT_DIAGNOSTICS) from None
    for w in caught:
        print(f"pcdsl {args.command}: warning: {path}: {w.message}", file=sys.stderr)
    return loaded


def _data(args: argparse.Namespace, path: str, graph: CircuitGraph):  # type: ignore[no-untyped-def]
    """A data file checked against the circuit's variables; a refusal is one message and exit 1."""
    from pcdsl.data import DataError, check_values, load_values
    from pcdsl.data.layout import variable_shape

    try:
        values = load_values(path, variable_shape(graph))  # image files: pixels in the circuit's array order
        check_values(values, graph.variables, path)
    except DataError as exc:
        print(f"pcdsl {args.command}: {exc}", file=sys.stderr)
        raise _Exit(EXIT_DIAGNOSTICS) from None
    return values


def _render(args: argparse.Namespace) -> int:
    from pcdsl.render import RenderError, render_file

    graph = _load_circuit(args)
    try:
        out = render_file(graph, Path(args.output), args.level)
    except RenderError as exc:
        print(f"pcdsl render: {exc}", file=sys.stderr)
        return EXIT_USAGE if "format" in str(exc) else EXIT_DIAGNOSTICS
    print(f"wrote {out} (circuit {graph.name})")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    import shutil

    from pcdsl.frontend import check_file
    from pcdsl.render import RenderError, render_file

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
        run_args = argparse.Namespace(file=str(recipe), recipe=None, out=str(out / "nltcs"), backend="torch",
                                      device="cpu", dtype="float32", seed=0, quiet=True, nproc=1, command="run")
        status = _run(run_args)
    return status


def _compile(args: argparse.Namespace) -> int:
    import importlib

    from pcdsl.backends import available
    from pcdsl.params import initialise
    from pcdsl.plan import compile_plan, dump_plan

    emitters = {"torch": "pcdsl.backends.torch.emit", "numba": "pcdsl.backends.numba.emit"}  # standalone code
    if args.backend not in available():
        print(f"pcdsl compile: unknown backend '{args.backend}' (known: {', '.join(available())})", file=sys.stderr)
        return EXIT_USAGE
    if args.output is not None and args.backend not in emitters:
        print(f"pcdsl compile: backend '{args.backend}' has no code emission "
              f"(backends that emit code: {', '.join(sorted(emitters))})", file=sys.stderr)
        return EXIT_USAGE
    graph = _load_circuit(args)
    plan = compile_plan(graph, initialise(graph, args.seed))
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


def _model(args: argparse.Namespace, graph: CircuitGraph):  # type: ignore[no-untyped-def]
    """The compiled model; a trained model file (.safetensors) brings its own parameters."""
    import pcdsl

    if getattr(args, "trained", None) is not None:
        return pcdsl.compile(graph, args.backend, params=args.trained, device=args.device, dtype=args.dtype)
    learned = [n.name for n in graph.nodes() if (n.params is None and n.family not in (None, "indicator"))
               or (n.kind.value == "sum" and n.weights is None and n.tie is None)]
    if learned:
        print(f"note: {len(learned)} node groups have no parameters in the file (e.g. '{learned[0]}'); "
              f"they are random, seed {args.seed}", file=sys.stderr)
    try:
        return pcdsl.compile(graph, args.backend, seed=args.seed, device=args.device, dtype=args.dtype)
    except (ValueError, ImportError, RuntimeError) as exc:
        print(f"pcdsl {args.command}: {exc}", file=sys.stderr)
        raise _Exit(EXIT_USAGE) from None


def _workers(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The worker group of a distributed command (None: launch `--nproc` workers here instead)."""
    from pcdsl.learn.parallel import from_environment, in_distributed_environment, local_device

    if args.nproc > 1 and not in_distributed_environment():
        return None
    if args.nproc > 1:
        print(f"pcdsl {args.command}: --nproc starts local workers; under torchrun leave it out", file=sys.stderr)
        raise _Exit(EXIT_USAGE)
    group = from_environment(args.device)
    args.device = local_device(group, args.device)
    return group


def _launch(args: argparse.Namespace) -> int:
    from pcdsl.launch import launch, strip_option

    return launch(strip_option(args.argv, "--nproc"), args.nproc, command=args.command)


def _eval(args: argparse.Namespace) -> int:
    from pcdsl.evaluate import evaluate
    from pcdsl.learn.parallel import WorkerLost

    group = _workers(args)
    if group is None:
        return _launch(args)
    graph = _load_circuit(args)
    data = _data(args, args.data, graph)
    model = _model(args, graph)
    try:
        score = evaluate(model, data, args.batch, group=group)
    except ValueError as exc:
        print(f"pcdsl eval: {args.data}: {exc}", file=sys.stderr)
        return EXIT_DIAGNOSTICS
    except WorkerLost as exc:
        print(f"pcdsl eval: {exc}", file=sys.stderr)
        return EXIT_DIAGNOSTICS
    if group.rank == 0:
        print(f"{args.file}: circuit {graph.name} on {args.data}: {score}")
    return EXIT_OK


def _sample(args: argparse.Namespace) -> int:
    import numpy as np

    from pcdsl.data import format_row, save_values

    graph = _load_circuit(args)
    samples = np.asarray(_model(args, graph).sample(args.n, seed=args.seed))
    discrete = [v.domain.is_discrete for v in graph.variables]
    if args.output is None:
        for row in samples:
            print(format_row(row, discrete))
        return EXIT_OK
    try:
        if Path(args.output).suffix.lower() == ".png":
            from pcdsl.data.layout import write_sample_grid

            write_sample_grid(args.output, samples, graph, args.colour or graph.colour, args.scale)
        else:
            save_values(Path(args.output), samples, discrete)
    except (OSError, ValueError) as exc:
        print(f"pcdsl sample: cannot write '{args.output}': {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {args.n} samples of circuit {graph.name} to {args.output}")
    return EXIT_OK


def _initial(args: argparse.Namespace, path: str, graph: CircuitGraph):  # type: ignore[no-untyped-def]
    """Parameters from a model file whose structure is the circuit's own."""
    def shape(g: CircuitGraph) -> list[tuple[object, ...]]:
        return [(n.name, n.kind, n.num_units, n.children, n.family, n.var, n.pattern, n.tie) for n in g.nodes()]

    saved, params = _read_model(args, path)
    if shape(saved) != shape(graph) or len(saved.variables) != len(graph.variables):
        print(f"pcdsl train: '{path}' holds a different circuit structure than '{graph.name}'", file=sys.stderr)
        raise _Exit(EXIT_DIAGNOSTICS)
    return params


def _train(args: argparse.Namespace) -> int:
    import pcdsl
    from pcdsl.learn.gaussian import from_data
    from pcdsl.learn.train import Stage, Trainer, mean_ll
    from pcdsl.params import initialise

    graph = _load_circuit(args)
    initial = _initial(args, args.init, graph) if args.init is not None else None  # a wrong model file: say so first
    splits = {k: _data(args, p, graph) if p else None for k, p in (("train", args.data), ("valid", args.valid),
                                                                  ("test", args.test))}
    train_data = splits["train"]
    assert train_data is not None  # --data is required
    # Gaussian leaves the file leaves out start from the data
    params = initial if initial is not None else from_data(graph, initialise(graph, args.seed), train_data, args.seed)
    model = pcdsl.compile(graph, args.backend, params=params, device=args.device, dtype=args.dtype)
    regularise = {"soften": args.soften, "entropy": args.entropy, "min_std": args.min_std,
                  "gaussian_pseudocount": args.gaussian_pseudocount}
    stages = [Stage("em", args.epochs, args.batch, (args.step, args.final_step), args.pseudocount, args.patience,
                    **regularise),
              Stage("full_em", args.full_epochs, args.batch, (1.0,), args.pseudocount, args.patience, **regularise)]

    def report(epoch, _params):  # type: ignore[no-untyped-def]
        valid = f", valid {epoch.valid_ll:.4f}" if epoch.valid_ll is not None else ""
        kind = stages[epoch.stage].kind
        print(f"{kind} epoch {epoch.epoch + 1}: train {epoch.train_ll:.4f}{valid} ({epoch.seconds:.1f}s)")

    trainer = Trainer(model, params, train_data, splits["valid"], args.seed, not args.quiet, report)
    try:
        best = trainer.run(stages)
    except ValueError as exc:
        print(f"pcdsl train: {exc}", file=sys.stderr)
        return EXIT_DIAGNOSTICS
    if splits["test"] is not None:
        print(f"test log-likelihood: {mean_ll(model, splits['test']):.4f} nats per sample")
    if args.output:
        from pcdsl.io.model import save_model

        print(f"wrote {save_model(args.output, graph, best)}")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from pcdsl.frontend import check_file
    from pcdsl.learn.parallel import WorkerLost
    from pcdsl.run import RunError, run_recipe

    group = _workers(args)
    if group is None:
        return _launch(args)
    try:
        checked = check_file(args.file)
    except PcdslError as exc:
        print(render_all(exc.diagnostics), file=sys.stderr)
        return EXIT_DIAGNOSTICS
    names = list(checked.recipes)
    name = args.recipe or (names[0] if names else None)
    if name not in checked.recipes:
        print(f"pcdsl run: no recipe '{name}' in {args.file} (recipes: {', '.join(names) or 'none'})", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out or Path("runs") / name)
    try:
        report = run_recipe(checked, name, out, backend=args.backend, device=args.device, dtype=args.dtype,
                            seed=args.seed, progress=not args.quiet, group=group)
    except RunError as exc:
        if not exc.from_rank0:  # rank 0 says it once for every worker
            print(f"pcdsl run: {exc}", file=sys.stderr)
        return EXIT_DIAGNOSTICS
    except WorkerLost as exc:
        print(f"pcdsl run: {exc}; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return EXIT_DIAGNOSTICS
    if group.rank != 0:
        return EXIT_OK
    for key in sorted(k for k in report if k.endswith(("_loglik", "_bpd"))):
        print(f"{name}: {key.replace('_', ' ')} = {report[key]:.4f}")
    made = [f for f in ("model.safetensors", "metrics.jsonl", "report.json", "samples.png", "inpaint.png")
            if (out / f).exists()]
    print(f"run directory: {out} ({', '.join(made)})")
    return EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    code = args.code.upper()
    if code not in CODES:
        print(f"pcdsl explain: unknown code '{args.code}' (codes run from E0001 to W0601)", file=sys.stderr)
        return EXIT_USAGE
    print(f"{code}: {CODES[code]}")
    return EXIT_OK


_COMMANDS = {"check": _check, "render": _render, "demo": _demo, "compile": _compile, "eval": _eval,
             "sample": _sample, "train": _train, "run": _run, "explain": _explain, "convert": _convert}
_COMMANDS["plot"] = plot_command.command

if __name__ == "__main__":
    sys.exit(main())
