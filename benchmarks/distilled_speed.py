"""Speed of the distilled Fashion-MNIST circuit (latent variable distillation), both backends.

Builds the shape ``pcdsl run examples/lvd_fashion.pc`` ends with, without data or teacher:
28x28 categorical(256) images cut into 4x4 patches (49 positions); at each position K
cluster-conditioned patch circuits (a hidden Chow-Liu tree over the 16 pixels, ``hidden``
units per cluster) folded into node groups of K x hidden units with block-diagonal sums
(:func:`pcdsl.distill.compose.block_family`), every position tied to position 0
(``shared = true``); on top, an HCLT over the 49 latents (:func:`pcdsl.distill.lvd.latent_circuit`,
tree learned from random assignments). Parameters are random (seeded), images are random bytes.

For each backend, in its own process (peak RSS is per process), prints side by side:

- compile: ``compile_plan`` + lowering, seconds (the backend module imported before);
- forward (``log_prob``) and ``flows`` of one batch (default 512 images), best of ``--repeat``;
- ``set_parameters`` after an EM step that changed every parameter, and after one that changed
  only the top level (soft-evidence EM), best of ``--repeat``; ``em_update`` of one batch's flows
  (the rest of an EM step, the same code for both backends);
- peak RSS (VmHWM) of the process, MiB;
- the 1-minute load average when the backend's run ended (the machine may be shared).

    .venv/bin/python benchmarks/distilled_speed.py                  # K = 64, hidden = 8, both backends
    .venv/bin/python benchmarks/distilled_speed.py --hidden 12 --backends numba
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_speed import hwm_rss_mib  # this folder is on sys.path when a script here runs

SIDE, PATCH, LEVELS = 28, 4, 256


def patch_positions(side: int = SIDE, patch: int = PATCH) -> list[list[int]]:
    """The pixel columns of every patch of a side x side image, row-major, each in patch order."""
    cols = side // patch
    out = []
    for i in range(cols * cols):
        top, left = (i // cols) * patch, (i % cols) * patch
        out.append([(top + dy) * side + left + dx for dy in range(patch) for dx in range(patch)])
    return out


def grid_tree(patch: int = PATCH) -> tuple[tuple[int, int], ...]:
    """A spanning tree of the patch's pixel grid (a comb: down the first column, then along each
    row), standing in for the Chow-Liu tree a run learns (any tree over 16 pixels has this cost)."""
    edges = [(r * patch, (r + 1) * patch) for r in range(patch - 1)]
    edges += [(r * patch + c, r * patch + c + 1) for r in range(patch) for c in range(patch - 1)]
    return tuple(edges)


def build(clusters: int = 64, hidden: int = 8, top_hidden: int = 32, seed: int = 0,
          side: int = SIDE, shared: bool = True):  # type: ignore[no-untyped-def]
    """The distilled circuit (graph, parameters) with random parameters."""
    from pcdsl.distill.compose import PatchShape, block_family, compose
    from pcdsl.distill.lvd import latent_circuit
    from pcdsl.ir.graph import Domain, Variable
    from pcdsl.params import initialise

    positions = patch_positions(side)
    shape = PatchShape(PATCH * PATCH, grid_tree(), hidden, clusters)
    family = block_family(shape, [LEVELS] * shape.dims)
    rng = np.random.default_rng(seed)
    z = rng.integers(0, clusters, size=(2000, len(positions)))
    top = latent_circuit(len(positions), clusters, z, top_hidden)
    variables = tuple(Variable(f"x[{i // side}, {i % side}]", i, Domain("categorical", LEVELS))
                      for i in range(side * side))
    patch_params = initialise(family.graph, seed)
    count = 1 if shared else len(positions)
    patches = [initialise(family.graph, seed + i) for i in range(count)] if not shared else [patch_params]
    return compose(top, initialise(top, seed), family, patches, variables, positions, shared, "distilled")


def _perturbed(params, groups, seed: int):  # type: ignore[no-untyped-def]
    """A copy of `params` whose `groups` (weights and leaves) are drawn afresh, as after an EM step."""
    from pcdsl.params import Parameters

    rng = np.random.default_rng(seed)

    def fresh(a: np.ndarray) -> np.ndarray:
        b = a * rng.uniform(0.5, 1.5, size=a.shape)
        return b / b.sum(axis=-1, keepdims=True)

    weights = {g: fresh(w) if g in groups else w for g, w in params.weights.items()}
    inputs = {g: ({"probs": fresh(p["probs"])} if g in groups and "probs" in p else p)
              for g, p in params.inputs.items()}
    return Parameters(inputs, weights, params.fixed)




def _best(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(backend: str, clusters: int, hidden: int, top_hidden: int, batch: int, repeat: int,
            dtype: str, threads: int) -> dict:
    """One backend's figures (run in a process of its own, on `threads` threads)."""
    from pcdsl.backends import lower

    from pcdsl.distill.compose import top_parameter_groups
    from pcdsl.learn.em import em_update
    from pcdsl.plan import compile_plan

    importlib.import_module(f"pcdsl.backends.{backend}")  # importing torch or numba is not compiling
    runtime = importlib.import_module("torch" if backend == "torch" else "numba")
    runtime.set_num_threads(threads)
    started = time.perf_counter()
    graph, params = build(clusters, hidden, top_hidden)
    built = time.perf_counter() - started
    started = time.perf_counter()
    model = lower(compile_plan(graph, params), backend, dtype=dtype)
    compiled = time.perf_counter() - started
    x = np.random.default_rng(1).integers(0, LEVELS, size=(batch, SIDE * SIDE)).astype(np.float64)
    model.log_prob(x[:8])  # warm-up: numba kernels load from their cache, torch allocates
    model.flows(x[:8])
    forward = _best(lambda: model.log_prob(x), repeat)
    flows = _best(lambda: model.flows(x), repeat)
    everything = set(params.weights) | set(params.inputs)
    changed = [_perturbed(params, everything, seed) for seed in range(repeat)]
    top = [_perturbed(params, top_parameter_groups(graph), seed) for seed in range(repeat)]
    it = iter(changed)
    set_all = _best(lambda: model.set_parameters(next(it)), repeat)
    it_top = iter(top)
    set_top = _best(lambda: model.set_parameters(next(it_top)), repeat)
    flows_x = model.flows(x)
    update = _best(lambda: em_update(params, flows_x, step=0.1, pseudocount=0.1), repeat)
    ll = float(np.mean(model.log_prob(x[:64])))
    return {"backend": backend, "threads": threads, "clusters": clusters, "hidden": hidden, "top_hidden": top_hidden,
            "batch": batch, "dtype": dtype, "node_groups": len(graph), "edges": graph.num_edges(),
            "build_s": built, "compile_s": compiled, "forward_s": forward, "flows_s": flows,
            "set_parameters_s": set_all, "set_top_s": set_top, "em_update_s": update, "peak_rss_mib": hwm_rss_mib(),
            "mean_ll_64": ll, "load_1min": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=["torch", "numba"])
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=8)
    parser.add_argument("--top-hidden", type=int, default=32)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        record = measure(args.child, args.clusters, args.hidden, args.top_hidden, args.batch, args.repeat, args.dtype,
                         args.threads)
        print(json.dumps(record))
        return
    records = []
    for backend in args.backends:
        command = [sys.executable, __file__, "--child", backend, "--clusters", str(args.clusters),
                   "--hidden", str(args.hidden), "--top-hidden", str(args.top_hidden), "--batch", str(args.batch),
                   "--repeat", str(args.repeat), "--dtype", args.dtype, "--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              cwd=Path(__file__).resolve().parent.parent)
        if done.returncode != 0:
            print(f"{backend}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        records.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if not records:
        sys.exit(1)
    first = records[0]
    print(f"distilled circuit: K = {first['clusters']}, hidden = {first['hidden']}, top hidden = "
          f"{first['top_hidden']}, {first['node_groups']} node groups, {first['edges']:,} edges; "
          f"batch {first['batch']}, {first['dtype']}, {first['threads']} threads on {os.cpu_count()} cores")
    rows = [("build graph (s)", "build_s"), ("compile (s)", "compile_s"), ("forward (s)", "forward_s"),
            ("flows (s)", "flows_s"), ("set_parameters, all (s)", "set_parameters_s"),
            ("set_parameters, top only (s)", "set_top_s"), ("em_update of those flows (s)", "em_update_s"),
            ("peak RSS (MiB)", "peak_rss_mib"),
            ("mean log p, 64 images", "mean_ll_64"), ("load average (1 min)", "load_1min")]
    print("| | " + " | ".join(r["backend"] for r in records) + " |")
    print("|---|" + "---:|" * len(records))
    for label, key in rows:
        print(f"| {label} | " + " | ".join(f"{r[key]:.2f}" if key != "peak_rss_mib" else f"{r[key]:,.0f}"
                                          for r in records) + " |")


if __name__ == "__main__":
    main()
