"""`pcdsl eval`, `pcdsl query` and `pcdsl sample`: every query on a circuit from the command line.

Results go to stdout as text (one row or value per line), or to `-o` as .csv/.txt/.data or .npy;
summaries and notes go to stderr, so stdout can be piped.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pcdsl.arguments import InvalidArgument
from pcdsl.ir.graph import CircuitGraph

from .common import (
    EXIT_DIAGNOSTICS,
    EXIT_OK,
    add_nproc,
    add_runnable,
    data,
    launch_workers,
    load_circuit,
    model,
    whole,
    workers,
)

OUTPUTS = (".csv", ".txt", ".data", ".npy")


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    eval_ = sub.add_parser("eval", help="average log-likelihood and bits per dimension of a dataset",
                           description="Evaluate a circuit on data (.data/.csv/.txt/.npy/.npz; -1, '?' or an "
                           "empty field marks a missing value, which is marginalised) or on image files (IDX, "
                           "CIFAR-10 .bin, ImageNet .npz, .npy (N, H, W[, C])), one row per image.")
    add_runnable(eval_)
    eval_.add_argument("--data", required=True, metavar="PATH")
    eval_.add_argument("--batch", type=whole(1), default=1024, help="rows per batch (default: 1024)")
    eval_.add_argument("--per-row", action="store_true",
                       help="also give each row's log-likelihood: printed, or written to -o")
    eval_.add_argument("-o", "--output", metavar="OUT", help="write the per-row log-likelihoods (.csv or .npy)")
    add_nproc(eval_)
    eval_.set_defaults(handler=run_eval)

    query = sub.add_parser("query", help="per-row marginal, conditional or MAP queries on a dataset",
                           description="Answer a query for every row of a data file (-1, '?' or NaN marks a "
                           "missing value). Default: log p(observed values) per row.")
    add_runnable(query)
    query.add_argument("--data", required=True, metavar="PATH", help="the rows (evidence)")
    kind = query.add_mutually_exclusive_group()
    kind.add_argument("--marginal", action="store_true", help="log p(observed values) per row (the default)")
    kind.add_argument("--conditional", metavar="VARS",
                      help="log p(VARS | the other observed values) per row; VARS: comma-separated names, "
                           "e.g. a,b or x[0],x[3]")
    kind.add_argument("--map", action="store_true",
                      help="complete each row's missing values by MAP (max-product): the completed rows")
    query.add_argument("--batch", type=whole(1), default=1024, help="rows per batch (default: 1024)")
    query.add_argument("-o", "--output", metavar="OUT", help="write the answers to a .csv or .npy file")
    query.set_defaults(handler=run_query)

    sample = sub.add_parser("sample", help="draw samples from a circuit, optionally given evidence",
                            description="Draw samples; print them as CSV or write them (-o x.csv, x.npy, or "
                            "x.png: a picture grid, for circuits over an image array such as x[28, 28]). "
                            "With --evidence, each sample completes an evidence row's missing values.")
    add_runnable(sample)
    sample.add_argument("-n", type=whole(0), default=None,
                        help="how many (default: 10; with --evidence, one per evidence row)")
    sample.add_argument("--evidence", metavar="ROWS",
                        help="a data file of evidence: one row (n samples from it) or n rows (one each)")
    sample.add_argument("-o", "--output", metavar="OUT", help="write to a .csv, .npy or .png file")
    sample.add_argument("--scale", type=whole(1, 64), default=1, help="PNG: enlarge each pixel this many times")
    sample.add_argument("--colour", default=None, choices=("identity", "ycocg_r", "ycbcr"),
                        help="PNG: the colour space the model's values are in (default: the one its model file "
                             "records, identity for others)")
    sample.set_defaults(handler=run_sample)


def run_eval(args: argparse.Namespace) -> int:
    from pcdsl.evaluate import evaluate
    from pcdsl.learn.parallel import WorkerLost

    group = workers(args)
    if group is None:
        return launch_workers(args)
    _check_output(args.output)
    if group.size > 1 and (args.per_row or args.output is not None):
        raise InvalidArgument("E0802", "--per-row and -o write every row's value: run them without --nproc")
    graph = load_circuit(args)
    values = data(args, args.data, graph)
    compiled = model(args, graph)
    per_row = args.per_row or args.output is not None
    try:
        score = evaluate(compiled, values, args.batch, keep_rows=per_row, group=group)
    except WorkerLost as exc:
        print(f"pcdsl eval: {exc}", file=sys.stderr)
        return EXIT_DIAGNOSTICS
    if group.rank != 0:
        return EXIT_OK
    summary = f"{args.file}: circuit {graph.name} on {args.data}: {score}"
    if not per_row:
        print(summary)
    elif args.output is None:
        print(summary, file=sys.stderr)
        _print_values(score.per_row)
    else:
        _write(args.output, score.per_row[:, None], [False])
        print(f"{summary}\nwrote {len(values)} log-likelihoods to {args.output}")
    return EXIT_OK


def run_query(args: argparse.Namespace) -> int:
    _check_output(args.output)
    graph = load_circuit(args)
    columns = variables_of(args.conditional, graph) if args.conditional is not None else None
    values = data(args, args.data, graph)
    compiled = model(args, graph)
    pieces = [values[i:i + args.batch] for i in range(0, len(values), args.batch)]
    if args.map:
        answers = [compiled.map(piece) for piece in pieces]
        completed = np.concatenate([np.asarray(c) for c, _ in answers])
        lp = np.concatenate([np.asarray(p, dtype=np.float64) for _, p in answers])
        discrete = [v.domain.is_discrete for v in graph.variables]
        with np.errstate(invalid="ignore"):
            mean = float(np.mean(lp))
        _emit(args, completed, discrete, f"MAP completions of {len(values)} rows (average log p {mean:.4f})")
        return EXIT_OK
    if columns is not None:
        result = np.concatenate([np.asarray(compiled.conditional(p, columns), dtype=np.float64) for p in pieces])
        what = f"log p({args.conditional} | the other observed values) of {len(values)} rows"
    else:
        result = np.concatenate([np.asarray(compiled.log_prob(p), dtype=np.float64) for p in pieces])
        what = f"log p(observed values) of {len(values)} rows"
    _emit(args, result[:, None], [False], what)
    return EXIT_OK


def run_sample(args: argparse.Namespace) -> int:
    _check_output(args.output, (*OUTPUTS, ".png"))
    graph = load_circuit(args)
    evidence = data(args, args.evidence, graph, "--evidence") if args.evidence is not None else None
    n = args.n if args.n is not None else (len(evidence) if evidence is not None else 10)
    samples = np.asarray(model(args, graph).sample(n, evidence=evidence, seed=args.seed))
    discrete = [v.domain.is_discrete for v in graph.variables]
    if args.output is None:
        for row in samples:
            print(_row(row, discrete))
        return EXIT_OK
    if Path(args.output).suffix.lower() == ".png":
        from pcdsl.data.layout import write_sample_grid

        try:
            write_sample_grid(args.output, samples, graph, args.colour or graph.colour, args.scale)
        except ValueError as exc:
            raise InvalidArgument("E0809", f"-o '{args.output}': {exc}") from None
    else:
        _write(args.output, samples, discrete)
    print(f"wrote {n} samples of circuit {graph.name} to {args.output}")
    return EXIT_OK


# ---- variables -------------------------------------------------------------------------------
def variables_of(text: str, graph: CircuitGraph) -> list[int]:
    """Comma-separated variable names (commas inside brackets belong to a name: x[0, 1]) as
    column indices; spaces do not matter. InvalidArgument, with a did-you-mean, for a name the
    circuit does not have."""
    from pcdsl import arguments

    names = [n.strip() for n in re.split(r",(?![^\[]*\])", text) if n.strip()]
    if not names:
        raise InvalidArgument("E0806", f"--conditional {text!r} names no variable",
                              "give comma-separated variable names, e.g. --conditional a,b")
    compact = {v.name.replace(" ", ""): v.name for v in graph.variables}
    wanted = [compact.get(n.replace(" ", ""), n) for n in names]
    return [int(i) for i in arguments.query(wanted, [v.name for v in graph.variables], "--conditional")]


# ---- output ----------------------------------------------------------------------------------
def _check_output(path: str | None, allowed: tuple[str, ...] = OUTPUTS) -> None:
    """Refuse an output format before any work is done."""
    if path is not None and Path(path).suffix.lower() not in allowed:
        raise InvalidArgument("E0809", f"-o '{path}': unknown output format '{Path(path).suffix}' "
                                       f"(known: {', '.join(allowed)})")


def _emit(args: argparse.Namespace, table: np.ndarray, discrete: list[bool], what: str) -> None:
    if args.output is None:
        print(f"pcdsl {args.command}: {what}", file=sys.stderr)
        for row in table:
            print(_row(row, discrete))
        return
    _write(args.output, table, discrete)
    print(f"wrote {what} to {args.output}")


def _write(path: str, table: np.ndarray, discrete: list[bool]) -> None:
    """.npy (integers when every column is discrete) or comma-separated text, atomically."""
    from pcdsl.data import save_values

    try:
        save_values(Path(path), table, discrete)
    except OSError as exc:
        raise InvalidArgument("E0809", f"-o '{path}': cannot write it: {exc.strerror or exc}") from None


def _row(row: np.ndarray, discrete: list[bool]) -> str:
    from pcdsl.data import format_row

    return format_row(row, discrete)


def _print_values(values: Any) -> None:
    for value in np.asarray(values, dtype=np.float64):
        print(repr(float(value)))
