"""Pruned circuits cost what they keep: HCLT-64 over Fashion-MNIST, pruned by flow to 50%, 25%
and 10% of its sum edges (``pcdsl.distill.grown.prune_to_fraction``), on both backends.

For each kept fraction k it measures, on one batch of real images (median of repeats after a
warm-up), the forward (``log_prob``) and forward+flows seconds, and reports each against the dense
time scaled by k (the goal of issue 15: at most 1.5). It also measures a floor: the same circuit
with one edge per unit, whose time is what the layers that pruning cannot shrink (inputs,
products, the exps of each fold's inputs) cost; ``sum part`` = time - floor is the share that
follows the edges, and ``sum ratio`` compares it with the dense one scaled by k.

    .venv/bin/python benchmarks/pruning.py                   # numba and torch, batch 512
    .venv/bin/python benchmarks/pruning.py --backends numba --batch 256 --hidden 32

The tree is learned from 5,000 training images; parameters come from a few steps of EM so that the
flows that decide the pruning are not those of random weights. Records go to ``--out`` (JSON lines).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "pruning.jsonl"


def images(split: str, n: int) -> np.ndarray:
    from pcdsl.data.idx import read_idx

    name = "train-images-idx3-ubyte.gz" if split == "train" else "t10k-images-idx3-ubyte.gz"
    return read_idx(DATA / name)[:n].reshape(n, -1).astype(np.int64)


def circuit(hidden: int, train: np.ndarray, em_steps: int):  # type: ignore[no-untyped-def]
    """HCLT over the 784 pixels and parameters after `em_steps` mini-batch EM steps (numba)."""
    import pcdsl
    from pcdsl.ir.graph import CircuitGraph, Domain, NodeKind, Variable
    from pcdsl.learn.em import em_update
    from pcdsl.params import initialise
    from pcdsl.structures.hclt import hclt

    graph = CircuitGraph(f"hclt{hidden}", tuple(Variable(f"p{i}", i, Domain("categorical", 256)) for i in range(784)))
    hclt(graph, np.arange(784), prefix="hclt", data=train, hidden=hidden)
    params = initialise(graph, 0)
    model = pcdsl.compile(graph, "numba", params=params, dtype="float32")
    for step in range(em_steps):
        rows = train[step * 512 % len(train):][:512]
        params = em_update(params, model.flows(rows), step=0.5, pseudocount=0.1)
        model.set_parameters(params)
    groups = [n.tie or n.name for n in graph.nodes() if n.kind is NodeKind.SUM]
    return graph, params, model.flows(train[:2048]), sorted(set(groups))


def timed(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", nargs="+", default=["numba", "torch"], choices=["numba", "torch"])
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--keep", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    ap.add_argument("--em-steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args()

    from pcdsl.backends import lower

    from pcdsl.distill.grown import prune_to_fraction
    from pcdsl.plan import SumLayer, compile_plan

    train, test = images("train", 5000), images("test", a.batch)
    graph, params, flows, groups = circuit(a.hidden, train, a.em_steps)
    variants = {1.0: params, **{k: prune_to_fraction(params, flows, groups, k) for k in a.keep},
                0.0: prune_to_fraction(params, flows, groups, 1e-9)}  # 0.0: the floor, one edge per unit
    load = os.getloadavg()
    records = []
    for backend in a.backends:
        times: dict[float, tuple[float, float]] = {}
        for keep, p in variants.items():
            plan = compile_plan(graph, p)
            model = lower(plan, backend, dtype="float32")
            edges = sum(layer.edges for layer in plan.layers if isinstance(layer, SumLayer))
            times[keep] = (timed(lambda m=model: m.log_prob(test), a.repeats),
                           timed(lambda m=model: m.flows(test), a.repeats))
            sparse = sum(layer.sparse is not None for layer in plan.layers if isinstance(layer, SumLayer))
            records.append({"backend": backend, "keep": keep, "hidden": a.hidden, "batch": a.batch, "edges": edges,
                            "sparse_layers": sparse, "forward_s": times[keep][0], "flows_s": times[keep][1],
                            "load": load})
        dense, floor = times[1.0], times[0.0]
        print(f"\n{backend}: HCLT-{a.hidden}, batch {a.batch}, load average {load[0]:.1f} (2 cores)")
        print("| kept | fwd s | fwd / (dense x kept) | fwd sum ratio | fwd+flows s | fwd+flows / (dense x kept) "
              "| fwd+flows sum ratio |")
        print("|---|---|---|---|---|---|---|")
        for keep in [1.0, *a.keep, 0.0]:
            row = [f"{keep:.0%}" if keep else "1 edge/unit"]
            for i in (0, 1):
                t = times[keep][i]
                scaled = t / (dense[i] * keep) if keep else float("nan")
                part = (t - floor[i]) / ((dense[i] - floor[i]) * keep) if keep else float("nan")
                row += [f"{t:.3f}", f"{scaled:.2f}", f"{part:.2f}"]
            print("| " + " | ".join(row) + " |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
