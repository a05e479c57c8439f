"""How fast pcdsl reads large Juice.jl `.jpc` files.

Writes a `.jpc` of about `--edges` edges in a scratch folder and times reading it:

- `read_jpc`: the file parsed and checked (ids, children before parents, counts, weights that
  add up, leaf domains) into a flat scalar circuit;
- `read_circuit` on a smaller file (`--graph-edges`): the same, plus the pcdsl circuit graph
  (one node group per scalar node) and its smoothness / decomposability check.

The circuit is what Juice writes for a balanced region tree: over V Boolean variables, H
categorical leaves per variable, and per inner region H products (unit i of the left child times
unit i of the right) under H sums of H children each, so almost all edges sit in dense sums, as
in HCLT and PD models. Usage::

    python benchmarks/read_formats.py [--edges 10000000] [--hidden 64] [--graph-edges 1000000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def write_region_tree(path: Path, target_edges: int, hidden: int, seed: int = 0) -> tuple[int, int, int]:
    """Write the benchmark circuit; returns (variables, lines, edges)."""
    rng = np.random.default_rng(seed)
    inner = max(1, math.ceil(target_edges / (hidden * hidden + 2 * hidden)) + 1)
    variables = inner + 1
    next_id = 0
    lines: list[str] = []
    regions: list[list[int]] = []
    for v in range(1, variables + 1):
        p = rng.uniform(0.05, 0.95, hidden)
        ids = list(range(next_id, next_id + hidden))
        lines += [f"C {i} 0 {v} {math.log1p(-q)!r} {math.log(q)!r}" for i, q in zip(ids, p.tolist(), strict=True)]
        next_id += hidden
        regions.append(ids)
    edges = 0
    while len(regions) > 1:
        merged = []
        for a, b in zip(regions[::2], regions[1::2], strict=False):
            top = len(regions) == 2
            products = list(range(next_id, next_id + hidden))
            lines += [f"P {i} 0 2 {x} {y}" for i, x, y in zip(products, a, b, strict=True)]
            next_id += hidden
            sums = []
            for _ in range(1 if top else hidden):
                w = np.log(rng.dirichlet(np.ones(hidden))).tolist()
                body = " ".join(f"{c} {x!r}" for c, x in zip(products, w, strict=True))
                lines.append(f"S {next_id} 0 {hidden} {body}")
                sums.append(next_id)
                next_id += 1
            edges += 2 * hidden + hidden * len(sums)
            merged.append(sums)
        if len(regions) % 2:
            merged.append(regions[-1])
        regions = merged
    with open(path, "w") as f:
        f.write(f"c benchmark circuit: {variables} variables, hidden {hidden}\njpc {len(lines)}\n")
        f.write("\n".join(lines))
        f.write("\n")
    return variables, len(lines), edges


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edges", type=int, default=10_000_000)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--graph-edges", type=int, default=1_000_000)
    parser.add_argument("--keep", metavar="DIR", help="write the files here and keep them")
    args = parser.parse_args()

    from pcdsl.io.formats import read_circuit
    from pcdsl.io.jpc import read_jpc

    folder = Path(args.keep or tempfile.mkdtemp(prefix="pcdsl-read-"))
    folder.mkdir(parents=True, exist_ok=True)
    results = {"load_average": os.getloadavg()[0], "cpus": os.cpu_count()}
    big = folder / "big.jpc"
    start = time.perf_counter()
    variables, lines, edges = write_region_tree(big, args.edges, args.hidden)
    results.update(write_s=time.perf_counter() - start, variables=variables, lines=lines, edges=edges,
                   mib=big.stat().st_size / 2**20)
    start = time.perf_counter()
    flat = read_jpc(big)
    results["read_jpc_s"] = time.perf_counter() - start
    assert flat.num_edges() == edges and len(flat) == lines
    del flat
    results["peak_rss_mib_after_read_jpc"] = peak_rss_mib()

    small = folder / "small.jpc"
    _, small_lines, small_edges = write_region_tree(small, args.graph_edges, args.hidden)
    start = time.perf_counter()
    imported = read_circuit(small)
    results.update(graph_lines=small_lines, graph_edges=small_edges, read_circuit_s=time.perf_counter() - start)
    assert len(imported.graph) == small_lines
    if not args.keep:
        big.unlink()
        small.unlink()
        folder.rmdir()
    print(json.dumps(results, indent=2))
    print(f"read_jpc: {edges / 1e6:.1f}M edges, {lines} lines, {results['mib']:.0f} MiB in "
          f"{results['read_jpc_s']:.1f} s ({edges / results['read_jpc_s'] / 1e6:.1f}M edges/s); "
          f"read_circuit (graph too): {small_edges / 1e6:.2f}M edges in {results['read_circuit_s']:.1f} s")


if __name__ == "__main__":
    main()
