"""`pcdsl eval` and `pcdsl sample`: queries on a circuit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import EXIT_DIAGNOSTICS, EXIT_OK, EXIT_USAGE, add_runnable, data, load_circuit, model


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    eval_ = sub.add_parser("eval", help="average log-likelihood and bits per dimension of a dataset",
                           description="Evaluate a circuit on data (.data/.csv/.txt/.npy/.npz; -1, '?' or an "
                           "empty field marks a missing value, which is marginalised) or on image files (IDX, "
                           "CIFAR-10 .bin, ImageNet .npz, .npy (N, H, W[, C])), one row per image.")
    add_runnable(eval_)
    eval_.add_argument("--data", required=True, metavar="PATH")
    eval_.add_argument("--batch", type=int, default=1024, help="rows per batch (default: 1024)")
    eval_.set_defaults(handler=run_eval)

    sample = sub.add_parser("sample", help="draw samples from a circuit",
                            description="Draw samples; print them as CSV or write them (-o x.csv, x.npy, or "
                            "x.png: a picture grid, for circuits over an image array such as x[28, 28]).")
    add_runnable(sample)
    sample.add_argument("-n", type=int, default=10, help="how many (default: 10)")
    sample.add_argument("-o", "--output", metavar="OUT", help="write to a .csv, .npy or .png file")
    sample.add_argument("--scale", type=int, default=1, help="PNG: enlarge each pixel this many times")
    sample.add_argument("--colour", default="identity", choices=("identity", "ycocg_r", "ycbcr"),
                        help="PNG: the colour space the model's values are in (default: identity)")
    sample.set_defaults(handler=run_sample)


def run_eval(args: argparse.Namespace) -> int:
    from pcdsl.evaluate import evaluate

    graph = load_circuit(args)
    values = data(args, args.data, graph)
    compiled = model(args, graph)
    try:
        score = evaluate(compiled, values, args.batch)
    except ValueError as exc:
        print(f"pcdsl eval: {args.data}: {exc}", file=sys.stderr)
        return EXIT_DIAGNOSTICS
    print(f"{args.file}: circuit {graph.name} on {args.data}: {score}")
    return EXIT_OK


def run_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from pcdsl.data import format_row, save_values

    graph = load_circuit(args)
    samples = np.asarray(model(args, graph).sample(args.n, seed=args.seed))
    discrete = [v.domain.is_discrete for v in graph.variables]
    if args.output is None:
        for row in samples:
            print(format_row(row, discrete))
        return EXIT_OK
    try:
        if Path(args.output).suffix.lower() == ".png":
            from pcdsl.data.layout import write_sample_grid

            write_sample_grid(args.output, samples, graph, args.colour, args.scale)
        else:
            save_values(Path(args.output), samples, discrete)
    except (OSError, ValueError) as exc:
        print(f"pcdsl sample: cannot write '{args.output}': {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {args.n} samples of circuit {graph.name} to {args.output}")
    return EXIT_OK
