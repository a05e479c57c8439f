"""How the IR passes and the compiler scale: check and compile time and peak memory against size.

Each configuration runs in a fresh process (so its peak RSS is its own), one after another:

- **quad_tree n**: ``circuit q { var x[n, n] : categorical(4)  structure = quad_tree(x, units = 4) }``
  checked from its source text (parse, elaborate, validate, analyse: the work of ``pcdsl check``);
- **hclt K / pd K**: the structures of ``benchmarks/gpu.py`` (768 categorical(256) variables, a
  16x16x3 crop; HCLT's tree learned from 2,000 random crops), built by the template (timed apart,
  as "build"), then validated and analysed ("check").

"compile" is ``pcdsl.compile(graph, "torch")``: random parameters, the layered plan, the torch
module. Peak memory is the process's peak RSS above its RSS after the imports.

    .venv/bin/python benchmarks/scale.py                      # quad trees 64..512, HCLT/PD to ~5e7 edges
    .venv/bin/python benchmarks/scale.py --quad 64 128 --hclt 16 --pd 8     # a quick look

Records are appended to ``--out`` as JSON lines; a Markdown table goes to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "scale.jsonl"
QUAD = "circuit q {{\n  var x[{n}, {n}] : categorical(4)\n  structure = quad_tree(x, units = 4)\n}}\n"


def rss_mib() -> float:
    """This process's resident memory now."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(structure: str, size: int) -> dict[str, Any]:
    """One configuration, in this process: sizes, seconds per phase, peak memory."""
    import torch  # noqa: F401  (imported before the baseline: its memory is not the circuit's)

    import pcdsl
    from pcdsl.frontend import check_text
    from pcdsl.ir.validate import analyse, validate

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu import crops, graph_of

    base = rss_mib()
    start = time.perf_counter()
    if structure == "quad_tree":
        build = 0.0
        graph = check_text(QUAD.format(n=size), f"q{size}.pc").circuit()
    else:
        graph = graph_of(structure, size, 16, crops(None, 2000, 16))
        build = time.perf_counter() - start
        found = validate(graph)
        assert not any(d.is_error for d in found), found
        analyse(graph, found)
    checked = time.perf_counter()
    pcdsl.compile(graph, "torch")
    done = time.perf_counter()
    return {"structure": structure, "size": size, "node_groups": len(graph), "variables": len(graph.variables),
            "edges": graph.num_edges(), "build_s": build, "check_s": checked - start - build,
            "compile_s": done - checked, "peak_mib": peak_mib() - base}


def run_one(structure: str, size: int, timeout: float) -> dict[str, Any]:
    """`measure` in a fresh process (its own peak RSS); a failure or timeout becomes a record."""
    command = [sys.executable, __file__, "--one", structure, str(size)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"structure": structure, "size": size, "error": f"over {timeout:.0f} s"}
    if done.returncode != 0:
        return {"structure": structure, "size": size, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def table(records: list[dict[str, Any]]) -> str:
    lines = ["| structure | size | node groups | variables | edges | build s | check s | compile s | "
             "peak MiB | check µs / group |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['structure']} | {r['size']} | {r['error']} |||||||")
            continue
        per = 1e6 * r["check_s"] / r["node_groups"]
        lines.append(f"| {r['structure']} | {r['size']} | {r['node_groups']:,} | {r['variables']:,} | "
                     f"{r['edges']:,} | {r['build_s']:.1f} | {r['check_s']:.2f} | {r['compile_s']:.2f} | "
                     f"{r['peak_mib']:.0f} | {per:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quad", type=int, nargs="*", default=[64, 128, 256, 512], help="grid sides")
    parser.add_argument("--hclt", type=int, nargs="*", default=[16, 32, 64, 128], help="latents")
    parser.add_argument("--pd", type=int, nargs="*", default=[8, 16, 32], help="units")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per configuration")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--one", nargs=2, metavar=("STRUCTURE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]))))
        return
    configs = [("quad_tree", n) for n in args.quad] + [("hclt", k) for k in args.hclt] + [("pd", k) for k in args.pd]
    records = []
    for structure, size in configs:
        record = run_one(structure, size, args.timeout)
        record["load"] = os.getloadavg()[0]
        records.append(record)
        print(json.dumps(record), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as out:
            out.write(json.dumps(record) + "\n")
    print(table(records))


if __name__ == "__main__":
    main()
