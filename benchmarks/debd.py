"""The binary density-estimation benchmark: run benchmarks/debd/<name>.pc for each dataset and
print test log-likelihoods beside the published numbers of ../shared/BENCHMARKS.md.

    python benchmarks/debd.py [--data ROOT] [--only nltcs plants] [--out runs/debd]
                              [--backend torch|numba] [--threads N] [--recipes DIR] [--seed S]

ROOT holds debd/<name>/<name>.{train,valid,test}.data (default: ../shared/data, next to the
repository). Models and hyper-parameters are chosen on valid; test is only reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATASETS = ["nltcs", "plants", "baudio", "jester", "bnetflix", "accidents", "pumsb_star", "dna", "bbc"]
# "best" column of ../shared/BENCHMARKS.md: the better of HCLT (NeurIPS 2021) and HCLT-100 (2026)
PUBLISHED = {"nltcs": -6.00, "plants": -12.68, "baudio": -39.62, "jester": -52.46, "bnetflix": -56.22,
             "accidents": -26.64, "pumsb_star": -22.78, "dna": -79.06, "bbc": -251.05}
MATCH = 0.1  # within 0.1 nats counts as a match


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
                 platform.processor())
    return f"{model}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data"))
    parser.add_argument("--only", nargs="*", default=DATASETS)
    parser.add_argument("--out", default="runs/debd")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="torch", choices=["torch", "numba"])
    parser.add_argument("--seed", type=int, default=0, help="seeds initialisation and batch order")
    parser.add_argument("--recipes", default=str(HERE / "debd"),
                        help="folder of <name>.pc recipes (default: benchmarks/debd)")
    args = parser.parse_args()
    os.environ["PCDSL_DATA"] = args.data
    import torch

    from pcdsl.frontend import check_file
    from pcdsl.run import run_recipe

    torch.set_num_threads(args.threads)
    if args.backend == "numba":
        import numba

        numba.set_num_threads(args.threads)
    rows = []
    for name in args.only:
        started = time.perf_counter()
        checked = check_file(Path(args.recipes) / f"{name}.pc")
        report = run_recipe(checked, name, Path(args.out) / name, backend=args.backend, seed=args.seed,
                            progress=False, log=lambda _: None)
        seconds = time.perf_counter() - started
        valid = json.loads((Path(args.out) / name / "state.json").read_text()).get("best_score")
        rows.append((name, report["test_loglik"], PUBLISHED[name], seconds))
        print(json.dumps({"dataset": name, "valid_loglik": valid, "test_loglik": report["test_loglik"],
                          "seconds": round(seconds, 1)}), flush=True)
    print(f"\nmachine: {machine()}, backend {args.backend}, {args.threads} thread(s)\n")
    print("| dataset | pcdsl test LL | published best | difference | verdict | time (s) |")
    print("|---|---:|---:|---:|---|---:|")
    for name, ours, best, seconds in rows:
        diff = ours - best
        verdict = "beats" if diff > MATCH else "matches" if diff >= -MATCH else "short"
        print(f"| {name} | {ours:.2f} | {best:.2f} | {diff:+.2f} | {verdict} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
