"""What the commands share: exit codes, argument types, and loading circuits, model files and data
with every refusal turned into one message and an exit status (never a traceback)."""

from __future__ import annotations

import argparse
import sys

from pcdsl.diagnostics import PcdslError, render, render_all
from pcdsl.ir.graph import CircuitGraph

EXIT_OK, EXIT_DIAGNOSTICS, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class Exit(Exception):
    """Stop a command with this exit status (its message is already printed)."""

    def __init__(self, status: int):
        self.status = status


def bounded(low: float, high: float | None):  # type: ignore[no-untyped-def]
    """An argparse type: a float in [low, high]."""
    def read(text: str) -> float:
        value = float(text)
        if not low <= value <= (high if high is not None else float("inf")):
            span = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {span}, found {value}")
        return value
    return read


def positive(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, found {text}")
    return value


def load_circuit(args: argparse.Namespace) -> CircuitGraph:
    """The circuit a command works on: diagnostics (exit 1) or a usage error (exit 2) otherwise.
    A model file (.safetensors, from `pcdsl train -o`) also sets `args.trained`."""
    from pcdsl.frontend import check_file

    if str(args.file).endswith(".safetensors"):
        graph, args.trained = read_model(args, args.file)
        return graph

    try:
        checked = check_file(args.file)
        graph = checked.circuit(args.circuit)
    except PcdslError as exc:
        print(render_all(exc.diagnostics), file=sys.stderr)
        raise Exit(EXIT_DIAGNOSTICS) from None
    except KeyError as exc:
        print(f"pcdsl {args.command}: {exc.args[0]}", file=sys.stderr)
        raise Exit(EXIT_USAGE) from None
    for w in checked.warnings:
        print(render(w) + "\n", file=sys.stderr)
    return graph


def read_model(args: argparse.Namespace, path: str):  # type: ignore[no-untyped-def]
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
        raise Exit(EXIT_DIAGNOSTICS) from None
    for w in caught:
        print(f"pcdsl {args.command}: warning: {path}: {w.message}", file=sys.stderr)
    return loaded


def data(args: argparse.Namespace, path: str, graph: CircuitGraph):  # type: ignore[no-untyped-def]
    """A data file checked against the circuit's variables; a refusal is one message and exit 1."""
    from pcdsl.data import DataError, check_values, load_values
    from pcdsl.data.layout import variable_shape

    try:
        values = load_values(path, variable_shape(graph))  # image files: pixels in the circuit's array order
        check_values(values, graph.variables, path)
    except DataError as exc:
        print(f"pcdsl {args.command}: {exc}", file=sys.stderr)
        raise Exit(EXIT_DIAGNOSTICS) from None
    return values


def model(args: argparse.Namespace, graph: CircuitGraph):  # type: ignore[no-untyped-def]
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
        raise Exit(EXIT_USAGE) from None


def add_runnable(parser: argparse.ArgumentParser) -> None:
    """The arguments of every command that runs a circuit."""
    parser.add_argument("file", metavar="FILE")
    parser.add_argument("--circuit", metavar="NAME", help="which circuit (default: the file's first)")
    parser.add_argument("--backend", default="torch", help="torch or numba (CPU); default: torch")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--seed", type=int, default=0, help="for parameters the file leaves out, and draws")
    parser.add_argument("--renormalise", action="store_true",
                        help="a model file whose probability rows do not add up to 1: divide each row by its "
                             "sum (with a warning) instead of refusing the file")
