"""`pcdsl train` (EM on a data file) and `pcdsl run` (a recipe in a run directory)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pcdsl.arguments import InvalidArgument
from pcdsl.diagnostics import PcdslError, render_all
from pcdsl.ir.graph import CircuitGraph

from .common import (
    EXIT_DIAGNOSTICS,
    EXIT_OK,
    EXIT_USAGE,
    Exit,
    add_nproc,
    add_runnable,
    bounded,
    data,
    launch_workers,
    load_circuit,
    model,
    positive,
    read_circuit_file,
    read_model,
    seed,
    step_size,
    whole,
    workers,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    train = sub.add_parser("train", help="fit the circuit's parameters with EM",
                           description="Mini-batch EM (step size annealed from --step to --final-step), then "
                           "full-batch EM; the parameters with the best validation score are kept.")
    add_runnable(train)
    train.add_argument("--data", required=True, metavar="PATH", help="training data")
    train.add_argument("--valid", metavar="PATH", help="validation data, for early stopping and model selection")
    train.add_argument("--test", metavar="PATH", help="test data, scored once at the end")
    train.add_argument("--epochs", type=whole(0), default=10, help="mini-batch EM epochs (default: 10)")
    train.add_argument("--full-epochs", type=whole(0), default=10, help="full-batch EM epochs (default: 10)")
    train.add_argument("--batch", type=whole(1), default=512, help="mini-batch size (default: 512)")
    train.add_argument("--step", type=step_size, default=0.1, help="first step size, in (0, 1] (default: 0.1)")
    train.add_argument("--final-step", type=step_size, default=0.01,
                       help="last step size, in (0, 1] (default: 0.01)")
    train.add_argument("--pseudocount", type=bounded(0.0, None), default=0.1, help=">= 0 (default: 0.1)")
    train.add_argument("--patience", type=whole(1), default=3,
                       help="epochs without progress before stopping (default: 3)")
    train.add_argument("--soften", type=bounded(0.0, 0.5), default=0.0,
                       help="data softening: an observed value keeps 1 - SOFTEN (0 to 0.5; default: 0)")
    train.add_argument("--entropy", type=bounded(0.0, None), default=0.0,
                       help="entropy regularisation weight tau (>= 0; default: 0)")
    train.add_argument("--min-std", type=positive, default=None, metavar="STD",
                       help="floor of every Gaussian leaf's std (default: 1e-3 x its variable's std in the "
                            "training data)")
    train.add_argument("--gaussian-pseudocount", type=bounded(0.0, None), default=0.0, metavar="K",
                       help="Gaussian prior: K pseudo-observations per unit at the variable's data mean and "
                            "spread (default: 0)")
    train.add_argument("-o", "--output", metavar="MODEL",
                       help="write the trained model here (.safetensors; default: NAME.trained.safetensors in "
                            "the working directory, NAME the input file's)")
    train.add_argument("--init", metavar="MODEL",
                       help="start from a model file's parameters (same structure); FILE itself may be a "
                            "model file, whose parameters training continues from")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    train.set_defaults(handler=run_train)

    run = sub.add_parser("run", help="run a recipe (data, model, training, report) in a run directory",
                         description="Run a recipe; a restarted run resumes from its last checkpoint.")
    run.add_argument("file", metavar="RECIPE")
    run.add_argument("--recipe", metavar="NAME", help="which recipe (default: the file's first)")
    run.add_argument("--out", metavar="DIR", help="run directory (default: runs/NAME)")
    run.add_argument("--backend", choices=("torch", "numba"), default=None,
                     help="default: numba for distillation recipes on the CPU (faster there), else torch")
    for flag, default in (("--device", "cpu"), ("--dtype", "float32")):
        run.add_argument(flag, default=default, help=f"default: {default}")
    run.add_argument("--seed", type=seed, default=0)
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_nproc(run)
    run.set_defaults(handler=run_recipe_command)


def initial(args: argparse.Namespace, path: str, graph: CircuitGraph):  # type: ignore[no-untyped-def]
    """Parameters from a model or circuit file whose structure is the circuit's own."""
    def shape(g: CircuitGraph) -> list[tuple[object, ...]]:
        return [(n.name, n.kind, n.num_units, n.children, n.family, n.var, n.pattern, n.tie) for n in g.nodes()]

    saved, params = read_circuit_file(args, path) or read_model(args, path)
    if shape(saved) != shape(graph) or len(saved.variables) != len(graph.variables):
        print(f"pcdsl train: '{path}' holds a different circuit structure than '{graph.name}'", file=sys.stderr)
        raise Exit(EXIT_DIAGNOSTICS)
    return params


def run_train(args: argparse.Namespace) -> int:
    from pcdsl.learn.gaussian import from_data
    from pcdsl.learn.train import Stage, Trainer, mean_ll
    from pcdsl.params import initialise

    out = output_path(args)
    graph = load_circuit(args)
    if args.init is not None and args.trained is not None:
        from pcdsl.io.formats import is_circuit_file

        kind = "a circuit file" if is_circuit_file(args.file) else "a model file"
        raise InvalidArgument("E0809", f"--init '{args.init}': '{args.file}' is {kind} and brings its own "
                                       "parameters", "drop --init to continue from them, or train the .pc source")
    # a wrong model file: say so before reading the data
    first = initial(args, args.init, graph) if args.init is not None else args.trained
    if first is not None:
        print(f"pcdsl train: starting from the parameters of {args.init or args.file}", file=sys.stderr)
    splits = {k: data(args, p, graph) if p else None for k, p in (("train", args.data), ("valid", args.valid),
                                                                 ("test", args.test))}
    train_data = splits["train"]
    assert train_data is not None  # --data is required
    # Gaussian leaves the file leaves out start from the data
    params = first if first is not None else from_data(graph, initialise(graph, args.seed), train_data, args.seed)
    args.trained = params
    compiled = model(args, graph)
    regularise = {"soften": args.soften, "entropy": args.entropy, "min_std": args.min_std,
                  "gaussian_pseudocount": args.gaussian_pseudocount}
    stages = [Stage("em", args.epochs, args.batch, (args.step, args.final_step), args.pseudocount, args.patience,
                    **regularise),
              Stage("full_em", args.full_epochs, args.batch, (1.0,), args.pseudocount, args.patience, **regularise)]

    def report(epoch, _params):  # type: ignore[no-untyped-def]
        valid = f", valid {epoch.valid_ll:.4f}" if epoch.valid_ll is not None else ""
        kind = stages[epoch.stage].kind
        print(f"{kind} epoch {epoch.epoch + 1}: train {epoch.train_ll:.4f}{valid} ({epoch.seconds:.1f}s)")

    trainer = Trainer(compiled, params, train_data, splits["valid"], args.seed, not args.quiet, report)
    try:
        best = trainer.run(stages)
    except PcdslError:
        raise
    except ValueError as exc:
        print(f"pcdsl train: {exc}", file=sys.stderr)
        return EXIT_DIAGNOSTICS
    if splits["test"] is not None:
        print(f"test log-likelihood: {mean_ll(compiled, splits['test']):.4f} nats per sample")
    from pcdsl.io.model import save_model

    try:
        written = save_model(out, graph, best)
    except OSError as exc:
        raise InvalidArgument("E0809", f"-o '{out}': cannot write it: {exc.strerror or exc}") from None
    told = "" if args.output else " (no -o given: NAME.trained.safetensors in the working directory)"
    print(f"wrote {written}{told}")
    return EXIT_OK


def output_path(args: argparse.Namespace) -> Path:
    """Where the trained model goes: -o, else NAME.trained.safetensors in the working directory
    (never the input file itself)."""
    if args.output is not None:
        if Path(args.output).suffix.lower() != ".safetensors":
            raise InvalidArgument("E0809", f"-o '{args.output}': a model file is written as .safetensors")
        return Path(args.output)
    stem = Path(args.file).name.split(".")[0] or "model"
    out = Path(f"{stem}.trained.safetensors")
    if out.resolve() == Path(args.file).resolve():
        out = Path(f"{stem}.trained-again.safetensors")
    return out


def run_recipe_command(args: argparse.Namespace) -> int:
    from pcdsl.frontend import check_file
    from pcdsl.io.files import MODEL, file_kind
    from pcdsl.io.formats import is_circuit_file
    from pcdsl.learn.parallel import WorkerLost
    from pcdsl.run import RunError, run_recipe

    group = workers(args)
    if group is None:
        return launch_workers(args)
    if file_kind(args.file) == MODEL or is_circuit_file(args.file):
        kind = "a model file" if file_kind(args.file) == MODEL else "a circuit file"
        raise InvalidArgument("E0809", f"'{args.file}' is {kind}; pcdsl run takes a recipe in a .pc file",
                              "pcdsl eval, query, sample and train take model and circuit files")
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
