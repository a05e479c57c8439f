"""Emitted code against the in-process model: the same circuit, the same batch, side by side.

For each structure (HCLT over the 784 Fashion-MNIST pixels on pcdsl's Chow-Liu tree, and the
28x28 quad-tree) and each K, the circuit is compiled in-process for torch and numba, and emitted
with ``pcdsl compile -o`` semantics (``backends.*.emit.emit_module``) into a temporary folder; the
emitted module is imported and timed against the in-process model on one batch of test images,
alternating the two (median of the repeats, and the ratio of the best runs, which other
processes on a shared box disturb less), for ``log_prob`` and ``flows``. Each pair is also checked
for equal results (float32: largest difference of log p per image).

    pip install -e '.[all]'
    python benchmarks/emitted.py [--units 16 32] [--batch 512] [--repeats 7]

Records go to ``--out`` as JSON lines; a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "emitted.jsonl"


FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


def images(n: int, train: bool) -> np.ndarray:
    """The first n Fashion-MNIST images (train or test) as (n, 784) rows."""
    from pcdsl.data.images import read_idx

    name = "train-images-idx3-ubyte.gz" if train else "t10k-images-idx3-ubyte.gz"
    return read_idx(FASHION / name)[:n].reshape(n, -1).astype(np.float64)


def circuit(structure: str, units: int, train: np.ndarray) -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_speed import build

    from pcdsl.structures import chow_liu_edges

    edges = chow_liu_edges(train.astype(np.int64), np.full(train.shape[1], 256), bins=16) \
        if structure == "hclt" else None
    return build(structure, units, edges)


def emitted(backend: str, plan: Any, folder: Path, name: str) -> Any:
    """The emitted module of `plan`, imported, loaded in float32."""
    emit = importlib.import_module(f"pcdsl.backends.{backend}.emit")
    emit.emit_module(plan, folder, name)
    sys.path.insert(0, str(folder))
    module = importlib.import_module(name)
    return module.load(dtype="float32")


def paired(a: Any, b: Any, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of each run of a() and b(), run alternately (which goes first alternates too) after
    one warm-up each."""
    a(), b()
    ta: list[float] = []
    tb: list[float] = []
    for i in range(repeats):
        for f, out in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            start = time.perf_counter()
            f()
            out.append(time.perf_counter() - start)
    return ta, tb


def measure(structure: str, units: int, backend: str, x: np.ndarray, train: np.ndarray, repeats: int,
            folder: Path) -> dict[str, Any]:
    import pcdsl
    from pcdsl.params import initialise

    graph = circuit(structure, units, train)
    params = initialise(graph, 0)
    model = pcdsl.compile(graph, backend, params=params, dtype="float32")
    module = emitted(backend, model.plan, folder, f"emitted_{backend}_{structure}{units}")
    ours, theirs = model.log_prob(x), np.asarray(module.log_prob(x))
    record: dict[str, Any] = {"structure": structure, "K": units, "backend": backend, "batch": len(x),
                              "edges": graph.num_edges(), "max_abs_diff": float(np.abs(ours - theirs).max())}
    for query in ("log_prob", "flows"):
        inproc, emit = paired(lambda q=query: getattr(model, q)(x), lambda q=query: getattr(module, q)(x), repeats)
        mid_inproc, mid_emit = statistics.median(inproc), statistics.median(emit)
        record[f"{query}_inprocess_s"], record[f"{query}_emitted_s"] = mid_inproc, mid_emit
        record[f"{query}_ratio"] = mid_emit / mid_inproc
        # on a shared box the median carries other processes' interruptions; the best run less so
        record[f"{query}_best_ratio"] = min(emit) / min(inproc)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--structures", nargs="*", default=["hclt", "quad_tree"])
    parser.add_argument("--units", type=int, nargs="*", default=[16, 32])
    parser.add_argument("--backends", nargs="*", default=["torch", "numba"])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    x, train = images(args.batch, False), images(2000, True)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for structure in args.structures:
            for units in args.units:
                for backend in args.backends:
                    record = measure(structure, units, backend, x, train, args.repeats, Path(tmp))
                    record["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
                    records.append(record)
                    print(json.dumps(record), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    print("| structure | K | backend | log_prob in-process s | emitted s | emitted / in-process (best) | "
          "flows in-process s | emitted s | emitted / in-process (best) | max abs diff log p |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in records:
        print(f"| {r['structure']} | {r['K']} | {r['backend']} | {r['log_prob_inprocess_s']:.4f} | "
              f"{r['log_prob_emitted_s']:.4f} | {r['log_prob_ratio']:.2f} ({r['log_prob_best_ratio']:.2f}) | "
              f"{r['flows_inprocess_s']:.4f} | {r['flows_emitted_s']:.4f} | "
              f"{r['flows_ratio']:.2f} ({r['flows_best_ratio']:.2f}) | {r['max_abs_diff']:.1e} |")


if __name__ == "__main__":
    main()
