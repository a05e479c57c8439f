"""What the commands share: exit codes, argument types, and loading circuits, model files and data
with every refusal turned into one message and an exit status (never a traceback).

Every command that reads a circuit takes `.pc` source or a model file alike (told by content,
:mod:`pcdsl.io.files`) and says on stderr which it read.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from pcdsl.arguments import InvalidArgument
from pcdsl.diagnostics import PcdslError, render, render_all
from pcdsl.ir.graph import CircuitGraph

EXIT_OK, EXIT_DIAGNOSTICS, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
# argument errors that are the command line's (exit 2); the others are about the input (exit 1)
USAGE_CODES = frozenset({"E0801", "E0802", "E0806", "E0807", "E0809"})
DATA_SUFFIXES = (".data", ".csv", ".txt", ".npy", ".npz", ".bin", ".gz", ".idx")
MAX_SEED = 2**63 - 1


class Exit(Exception):
    """Stop a command with this exit status (its message is already printed)."""

    def __init__(self, status: int):
        self.status = status


def fail(args: argparse.Namespace, message: str, status: int = EXIT_DIAGNOSTICS) -> Exit:
    """Print `pcdsl COMMAND: message` and return the Exit to raise."""
    print(f"pcdsl {args.command}: {message}", file=sys.stderr)
    return Exit(status)


def refused(args: argparse.Namespace, exc: PcdslError) -> int:
    """Print a refused argument or input (a PcdslError) and give its exit status."""
    if isinstance(exc, InvalidArgument):
        print(f"pcdsl {args.command}: " + render_all(exc.diagnostics), file=sys.stderr)
        return EXIT_USAGE if exc.code in USAGE_CODES else EXIT_DIAGNOSTICS
    print(f"pcdsl {args.command}: {exc}" if len(exc.diagnostics) == 1 and exc.diagnostics[0].span.line == 0
          else render_all(exc.diagnostics), file=sys.stderr)
    return EXIT_DIAGNOSTICS


# ---- argument types (argparse turns their refusals into usage errors, exit 2) ------------------
def whole(low: int, high: int | None = None):  # type: ignore[no-untyped-def]
    """An argparse type: a whole number in [low, high]."""
    def read(text: str) -> int:
        try:
            value = int(text.strip().replace("_", ""), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, found {text!r}") from None
        if value < low or (high is not None and value > high):
            allowed = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {allowed}, found {value}")
        return value
    return read


def bounded(low: float, high: float | None, *, open_low: bool = False):  # type: ignore[no-untyped-def]
    """An argparse type: a finite number in [low, high] ((low, high] with `open_low`)."""
    def read(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, found {text!r}") from None
        above = value > low if open_low else value >= low
        if not (math.isfinite(value) and above and (high is None or value <= high)):
            left = "(" if open_low else "["
            span = f"in {left}{low:g}, {high:g}]" if high is not None else f"{'>' if open_low else '>='} {low:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {span}, found {text}")
        return value
    return read


positive = bounded(0.0, None, open_low=True)
step_size = bounded(0.0, 1.0, open_low=True)
seed = whole(0, MAX_SEED)


# ---- circuits --------------------------------------------------------------------------------
def load_circuit(args: argparse.Namespace) -> CircuitGraph:
    """The circuit a command works on, from `.pc` source or a model file (which also sets
    `args.trained`, its parameters); says on stderr which it read. A refusal prints its
    diagnostics and raises Exit (1: the input, 2: the command line)."""
    from pcdsl.io.files import MODEL, file_kind

    args.trained = None
    path = str(args.file)
    if file_kind(path) == MODEL:
        graph, args.trained = read_model(args, path)
        wanted = getattr(args, "circuit", None)
        if wanted is not None and wanted != graph.name:
            raise InvalidArgument("E0806", f"--circuit {wanted!r}: the model file '{path}' holds circuit "
                                           f"'{graph.name}'")
        print(f"pcdsl {args.command}: read model file {path} (circuit {graph.name}, trained parameters)",
              file=sys.stderr)
        return graph
    imported = read_circuit_file(args, path)  # before the data suffixes: circuit files may be gzipped too
    if imported is not None:
        graph, args.trained = imported
        print(f"pcdsl {args.command}: read circuit file {path} (circuit {graph.name})", file=sys.stderr)
        return graph
    if Path(path).suffix.lower() in DATA_SUFFIXES:
        raise InvalidArgument("E0809", f"'{path}' is a data file; FILE is a .pc file, a model file "
                                       "(.safetensors) or a circuit file (.jpc, .psdd, .sdd)", "data goes after --data")
    return _read_source(args, path)


def read_circuit_file(args: argparse.Namespace, path: str):  # type: ignore[no-untyped-def]
    """A .jpc/.psdd/.sdd file (or .gz) by its extension: its graph and the file's parameters; None
    for other files. Diagnostics are printed (exit 1)."""
    from pcdsl.io.formats import is_circuit_file, read_circuit

    if not is_circuit_file(path):
        return None
    try:
        imported = read_circuit(path, renormalise=getattr(args, "renormalise", False))
    except PcdslError as exc:
        print(render_all(exc.diagnostics), file=sys.stderr)
        raise Exit(EXIT_DIAGNOSTICS) from None
    for w in imported.warnings:
        print(render(w) + "\n", file=sys.stderr)
    return imported.graph, imported.params


def _read_source(args: argparse.Namespace, path: str) -> CircuitGraph:
    from pcdsl.frontend import check_file

    try:
        checked = check_file(path)
    except PcdslError as exc:
        print(render_all(exc.diagnostics), file=sys.stderr)
        raise Exit(EXIT_DIAGNOSTICS) from None
    graph = checked.circuit(getattr(args, "circuit", None))
    for w in checked.warnings:
        print(render(w) + "\n", file=sys.stderr)
    print(f"pcdsl {args.command}: read .pc source {path} (circuit {graph.name})", file=sys.stderr)
    return graph


def read_model(args: argparse.Namespace, path: str):  # type: ignore[no-untyped-def]
    """A model file's graph and parameters; a refusal is one located message and exit 1,
    a renormalisation (--renormalise) a warning."""
    import warnings

    from pcdsl.io.files import is_text
    from pcdsl.io.model import ModelFileError, load_model

    if is_text(path):  # a model file is binary: its first bytes are a header length
        raise InvalidArgument("E0809", f"'{path}' is text (.pc source?), not a model file",
                              "a model file is a .safetensors file written by pcdsl train -o or pcdsl run")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = load_model(path, renormalise=getattr(args, "renormalise", False))
    except ModelFileError as exc:
        raise fail(args, str(exc)) from None
    for w in caught:
        print(f"pcdsl {args.command}: warning: {path}: {w.message}", file=sys.stderr)
    return loaded


# ---- data ------------------------------------------------------------------------------------
def data(args: argparse.Namespace, path: str, graph: CircuitGraph, option: str = "--data"):  # type: ignore[no-untyped-def]
    """A data file checked against the circuit's variables; a refusal is one message and exit 1."""
    from pcdsl.data import DataError, check_values, load_values
    from pcdsl.data.layout import variable_shape
    from pcdsl.io.files import MODEL, file_kind
    from pcdsl.io.formats import is_circuit_file

    if file_kind(path) == MODEL or Path(path).suffix.lower() == ".pc" or is_circuit_file(path):
        kind = ("a model file" if file_kind(path) == MODEL else
                "a circuit file" if is_circuit_file(path) else ".pc source")
        raise InvalidArgument("E0809", f"{option} '{path}' is {kind}, not data",
                              "data files are .data, .csv, .txt, .npy, .npz or image files")
    try:
        values = load_values(path, variable_shape(graph))  # image files: pixels in the circuit's array order
        check_values(values, graph.variables, path)
        if len(values) == 0:
            raise DataError(f"'{path}' holds no samples")
    except DataError as exc:
        raise fail(args, str(exc)) from None
    return values


# ---- models ----------------------------------------------------------------------------------
def model(args: argparse.Namespace, graph: CircuitGraph):  # type: ignore[no-untyped-def]
    """The compiled model; a model file brings its own parameters, .pc source may leave some out
    (they are drawn from --seed, with a note)."""
    import pcdsl

    if getattr(args, "trained", None) is not None:
        return _compiled(args, lambda: pcdsl.compile(graph, args.backend, params=args.trained, device=args.device,
                                                     dtype=args.dtype))
    learned = [n.name for n in graph.nodes() if (n.params is None and n.family not in (None, "indicator"))
               or (n.kind.value == "sum" and n.weights is None and n.tie is None)]
    if learned:
        print(f"note: {len(learned)} node groups have no parameters in the file (e.g. '{learned[0]}'); "
              f"they are random, seed {args.seed}", file=sys.stderr)
    return _compiled(args, lambda: pcdsl.compile(graph, args.backend, seed=args.seed, device=args.device,
                                                 dtype=args.dtype))


def _compiled(args: argparse.Namespace, build):  # type: ignore[no-untyped-def]
    try:
        return build()
    except PcdslError:
        raise
    except ValueError as exc:  # a backend that cannot lower a construct
        raise fail(args, str(exc), EXIT_USAGE) from None


def add_runnable(parser: argparse.ArgumentParser) -> None:
    """The arguments of every command that runs a circuit."""
    parser.add_argument("file", metavar="FILE", help="a .pc file or a model file (.safetensors)")
    parser.add_argument("--circuit", metavar="NAME", help="which circuit (default: the file's first)")
    parser.add_argument("--backend", default="torch", help="torch or numba (CPU); default: torch")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--seed", type=seed, default=0, help="for parameters the file leaves out, and draws")
    parser.add_argument("--renormalise", action="store_true",
                        help="a model file whose probability rows do not add up to 1: divide each row by its "
                             "sum (with a warning) instead of refusing the file")


def add_nproc(parser: argparse.ArgumentParser) -> None:
    """``--nproc N``: data-parallel local workers (pcdsl.launch)."""
    def count(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"must be a whole number of workers, at least 1, found {text}")
        return int(text)

    parser.add_argument("--nproc", type=count, default=1, metavar="N",
                        help="data-parallel local workers (torch.distributed: gloo on the CPU, NCCL on CUDA); "
                             "for several hosts start the same command under torchrun instead (default: 1)")


def workers(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The worker group of a distributed command (None: launch `--nproc` workers here instead)."""
    from pcdsl.learn.parallel import from_environment, in_distributed_environment, local_device

    if args.nproc > 1 and not in_distributed_environment():
        return None
    if args.nproc > 1:
        print(f"pcdsl {args.command}: --nproc starts local workers; under torchrun leave it out", file=sys.stderr)
        raise Exit(EXIT_USAGE)
    group = from_environment(args.device)
    args.device = local_device(group, args.device)
    return group


def launch_workers(args: argparse.Namespace) -> int:
    """Start `--nproc` workers running this same command line (pcdsl.launch)."""
    from pcdsl.launch import launch, strip_option

    return launch(strip_option(args.argv, "--nproc"), args.nproc, command=args.command)
