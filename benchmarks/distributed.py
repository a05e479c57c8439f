"""Data-parallel EM throughput with 1 and 2 workers (torch.distributed, gloo), the bytes
all-reduced per step, and what a simple model of the step predicts for N GPUs.

    python benchmarks/distributed.py [--data ROOT] [--dataset plants] [--hidden 32] [--batch 512]
                                     [--epochs 3] [--backend torch] [--configs 1x1 1x2 2x1]

ROOT holds debd/<name>/<name>.train.data (default: ../shared/data, next to the repository).
Each configuration runs as its own set of processes, started the way `pcdsl run --nproc N`
starts them (pcdsl.launch); WORKERSxTHREADS sets the torch threads of each worker. Prints one
JSON line per configuration and writes them, with the model's predictions, to
benchmarks/results/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# The model of one mini-batch EM step on N workers (stated as a model, not measured here):
#   t(N) = t_flows / N + t_update + t_allreduce(N),
#   t_allreduce(N) = 2 (N - 1) * LATENCY + 2 (N - 1) / N * bytes / BANDWIDTH   (ring all-reduce),
# t_flows and t_update measured with one worker (t_update: the M step, done by every worker on
# the host). Link figures are typical, assumed: NVLink within a node, InfiniBand between nodes.
LINKS = {"NVLink (one node, ~100 GB/s bus bandwidth, 10 us per hop)": (100e9, 10e-6),
         "InfiniBand HDR (across nodes, ~20 GB/s, 20 us per hop)": (20e9, 20e-6),
         "10 Gb Ethernet (~1 GB/s, 50 us per hop)": (1e9, 50e-6)}
GPU_SPEEDUP = 20.0  # assumed: a GPU computes the flows this many times faster than one worker here


def _worker(args: argparse.Namespace) -> None:
    import numpy as np

    import pcdsl
    from pcdsl.data import load_values
    from pcdsl.ir.graph import BOOL, CircuitGraph, Variable
    from pcdsl.learn.parallel import from_environment
    from pcdsl.learn.train import Stage, Trainer
    from pcdsl.params import initialise
    from pcdsl.structures import generate

    group = from_environment("cpu")
    train = load_values(Path(args.data) / "debd" / args.dataset / f"{args.dataset}.train.data")
    graph = CircuitGraph(args.dataset, tuple(Variable(f"x[{i}]", i, BOOL) for i in range(train.shape[1])))
    generate("hclt", graph, np.arange(train.shape[1]), prefix="hclt", data=train.astype(np.int64),
             hidden=args.hidden, subsample=0)
    params = initialise(graph, 0)
    model = pcdsl.compile(graph, args.backend, params=params, dtype="float32")
    clock = {"flows": 0.0, "allreduce": 0.0}

    def timed(name: str, call: Any) -> Any:
        def run(*a: Any) -> Any:
            started = time.perf_counter()
            try:
                return call(*a)
            finally:
                clock[name] += time.perf_counter() - started
        return run

    model.flows = timed("flows", model.flows)
    group.all_reduce = timed("allreduce", group.all_reduce)  # type: ignore[method-assign]
    trainer = Trainer(model, params, train, None, seed=0, progress=False, group=group)
    seconds: list[float] = []
    marks = {"flows": [0.0], "allreduce": [0.0]}

    def on_epoch(epoch: Any, _params: Any) -> None:
        seconds.append(epoch.seconds)
        for k in marks:
            marks[k].append(clock[k])

    trainer.on_epoch = on_epoch
    trainer.run([Stage("em", args.epochs, args.batch, (0.1,))])
    steps = -(-len(train) // args.batch)
    best = int(np.argmin(seconds))  # the least disturbed epoch of a shared machine
    per_step = {k: (marks[k][best + 1] - marks[k][best]) / steps for k in marks}
    epoch_s = seconds[best]
    if group.rank == 0:
        result = {"workers": group.size, "threads_per_worker": int(os.environ.get("OMP_NUM_THREADS", "0")),
                  "dataset": args.dataset, "rows": len(train), "hidden": args.hidden, "batch": args.batch,
                  "backend": args.backend, "epoch_s": epoch_s, "epoch_s_all": seconds,
                  "rows_per_s": len(train) / epoch_s, "steps_per_epoch": steps,
                  "bytes_per_step": group.reduced_bytes // max(1, steps * args.epochs) if group.size > 1 else
                  8 * (1 + sum(w.size for w in params.weights.values()) +
                       sum(v.size for p in params.inputs.values() for v in p.values())),
                  "flows_ms_per_step": 1e3 * per_step["flows"], "allreduce_ms_per_step": 1e3 * per_step["allreduce"],
                  "other_ms_per_step": 1e3 * (epoch_s / steps - per_step["flows"] - per_step["allreduce"])}
        Path(args.result).write_text(json.dumps(result))


def predict(one: dict[str, Any], n: int, bandwidth: float, latency: float) -> float:
    """Rows per second of N GPUs by the model above, from the one-worker figures."""
    flows = one["flows_ms_per_step"] / 1e3 / GPU_SPEEDUP
    update = one["other_ms_per_step"] / 1e3
    allreduce = 0.0 if n == 1 else 2 * (n - 1) * latency + 2 * (n - 1) / n * one["bytes_per_step"] / bandwidth
    return one["batch"] / (flows / n + update + allreduce)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data"))
    parser.add_argument("--dataset", default="plants")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--backend", default="torch", choices=["torch", "numba"])
    parser.add_argument("--configs", nargs="+", default=["1x1", "1x2", "2x1"],
                        help="WORKERSxTHREADS each (default: 1x1 1x2 2x1)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    from debd import machine

    from pcdsl.launch import launch

    results = []
    for config in args.configs:
        n, threads = (int(v) for v in config.split("x"))
        out = Path(f"/tmp/pcdsl-distributed-{os.getpid()}-{config}.json")
        argv = [*sys.argv[1:], "--worker", "--result", str(out)]
        status = launch(argv, n, threads, program=[sys.executable, str(Path(__file__).resolve())])
        if status != 0:
            raise SystemExit(f"the {n}-worker run failed (status {status})")
        results.append(json.loads(out.read_text()))
        out.unlink()
        print(json.dumps(results[-1]))
    one = min((r for r in results if r["workers"] == 1), key=lambda r: r["epoch_s"])
    model = {link: {n: predict(one, n, bw, lat) for n in (1, 2, 4, 8, 16, 64)} for link, (bw, lat) in LINKS.items()}
    for link, rows in model.items():
        print(f"model, {link}: " + ", ".join(f"{n} GPUs {r:,.0f} rows/s" for n, r in rows.items()))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "distributed.json").write_text(json.dumps(
        {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M"), "runs": results,
         "model": {"gpu_speedup_assumed": GPU_SPEEDUP, "rows_per_s": model}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
