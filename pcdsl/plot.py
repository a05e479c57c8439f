"""Learning curves from run directories: train and valid log-likelihood per epoch.

A run directory of ``pcdsl run`` holds ``metrics.jsonl``, one JSON object per finished epoch
(``stage``, ``epoch``, ``step``, ``train_ll``, ``valid_ll``, ``seconds``; see
:class:`pcdsl.learn.train.Epoch`). A distillation run holds one ``{stage}.metrics.jsonl`` per
fitted stage instead; its curves are those of the whole model (``top_em``, ``em``) and of the
top level over the latents (``top``), or, when it has none of those yet, every stage's.

Drawing needs matplotlib (the ``plot`` extra); reading the curves does not.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pcdsl.io.atomic import write_atomic

MODEL_STAGES = ("top", "top_em", "em")  # a distillation run's stages over the whole model (or its top)
FORMATS = ("png", "svg", "pdf")


class PlotError(Exception):
    """A run directory or metrics file that cannot be plotted; the message names it and says why.
    `status`: the exit status of `pcdsl plot` (1: a malformed file, 2: a usage error)."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Curve:
    """One metrics file: train and valid mean log-likelihood (nats per sample) per epoch, in the
    order the epochs ran, and where each training stage after the first began."""

    label: str
    train: tuple[float, ...]
    valid: tuple[float | None, ...]
    stage_starts: tuple[int, ...]


def metrics_files(run_dir: str | Path) -> list[Path]:
    """The metrics files of a run directory, in the order their stages run."""
    run = Path(run_dir)
    if not run.is_dir():
        raise PlotError(f"{run}: not a directory (give the run directories of `pcdsl run`)")
    if (run / "metrics.jsonl").is_file():
        return [run / "metrics.jsonl"]
    staged = {p.name.removesuffix(".metrics.jsonl"): p for p in sorted(run.glob("*.metrics.jsonl"))}
    chosen = [staged[s] for s in MODEL_STAGES if s in staged] or list(staged.values())
    if not chosen:
        raise PlotError(f"{run}: no metrics.jsonl (nor any stage's .metrics.jsonl): it has no finished epoch yet, "
                        f"or it is not a run directory")
    return chosen


def read_curve(path: Path, label: str) -> Curve:
    """A metrics file's curve; a malformed line is an error naming the file and line."""
    train: list[float] = []
    valid: list[float | None] = []
    starts: list[int] = []
    stage = None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ll, vl = float(row["train_ll"]), row.get("valid_ll")
            vl = None if vl is None else float(vl)
        except (ValueError, KeyError, TypeError):
            raise PlotError(f"{path}:{number}: not an epoch record (a JSON object with a number 'train_ll')",
                            status=1) from None
        if stage is not None and row.get("stage") != stage:
            starts.append(len(train))
        stage = row.get("stage")
        train.append(ll)
        valid.append(vl)
    if not train:
        raise PlotError(f"{path}: no epochs recorded yet")
    return Curve(label, tuple(train), tuple(valid), tuple(starts))


def run_curves(run_dirs: Sequence[str | Path]) -> list[Curve]:
    """Every curve of the run directories, labelled by directory (and stage, for distillation)."""
    names = [Path(r).resolve().name for r in run_dirs]
    curves = []
    for run, name in zip(run_dirs, names, strict=True):
        base = name if names.count(name) == 1 else str(run)  # two runs of one name: their paths
        for path in metrics_files(run):
            stage = "" if path.name == "metrics.jsonl" else path.name.removesuffix(".metrics.jsonl")
            curves.append(read_curve(path, f"{base}: {stage}" if stage else base))
    return curves


def plot_curves(curves: Sequence[Curve], out: str | Path, title: str | None = None) -> Path:
    """Draw the curves (train solid, valid dashed, one colour per curve) to a PNG, SVG or PDF
    file (by suffix), atomically."""
    out = Path(out)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise PlotError(f"{out}: unknown picture format '{fmt}' (known: {', '.join(FORMATS)})")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError("drawing curves needs matplotlib: pip install 'pcdsl[plot]'") from None
    figure = Figure(figsize=(7.5, 4.5), dpi=100)  # no pyplot: no global state, no display needed
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for i, curve in enumerate(curves):
        colour = f"C{i % 10}"
        epochs = range(1, len(curve.train) + 1)
        axes.plot(epochs, curve.train, color=colour, label=f"{curve.label} (train)")
        if any(v is not None for v in curve.valid):
            axes.plot(epochs, [math.nan if v is None else v for v in curve.valid], color=colour, linestyle="--",
                      label=f"{curve.label} (valid)")
        for start in curve.stage_starts:  # a new training stage (e.g. mini-batch EM -> full-batch EM)
            axes.axvline(start + 0.5, color=colour, linestyle=":", linewidth=0.8)
    axes.set_xlabel("epoch")
    axes.set_ylabel("mean log-likelihood (nats per sample)")
    axes.set_title(title or "learning curves")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt)
    try:
        write_atomic(out, buffer.getvalue())
    except OSError as exc:
        raise PlotError(f"cannot write '{out}': {exc.strerror}") from None
    return out


# ---- the `pcdsl plot` command (registered by pcdsl.cli.convert) --------------------------------
def add_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    plot = sub.add_parser("plot", help="draw learning curves of run directories",
                          description="Draw train (solid) and valid (dashed) log-likelihood per epoch from "
                          "the metrics.jsonl of one or more run directories, on one plot.")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("-o", "--output", required=True, metavar="OUT", help="a .png, .svg or .pdf file")
    plot.add_argument("--title", help="the plot's title (default: learning curves)")
    plot.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    """Exit 0 with the picture written; 1 for a malformed metrics file; 2 for a usage error."""
    try:
        out = plot_curves(run_curves(args.runs), args.output, args.title)
    except PlotError as exc:
        print(f"pcdsl plot: {exc}", file=sys.stderr)
        return exc.status
    print(f"wrote {out}")
    return 0
