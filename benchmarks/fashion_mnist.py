"""Fashion-MNIST: HCLT without LVD, LVD with each teacher, LVD-PG, and the teacher's own figure.

One script, one table (markdown on stdout and `RESULTS/fashion_mnist.json`). Each configuration is
a recipe run with `pcdsl run` semantics in its own run directory under RESULTS, so a stopped
benchmark resumes where it stopped (every stage is cached, EM checkpoints every epoch), and in a
process of its own, so its peak memory (`NAME/bench.json`) is its own.

    pip install -e '.[all]'
    python benchmarks/fashion_mnist.py [--only NAME ...] [--threads 2] [--results DIR] [--quick]

Needs Debian's `dataset-fashion-mnist` (IDX files in /usr/share/datasets/fashion-mnist) or
`--root DIR`. Full data: 60,000 training images (5,000 held out for validation, chosen on valid
only), the 10,000 test images, 784 pixels of 256 levels, no transform. `--quick` runs every
configuration on 2,000 training and 500 test images with few epochs (a smoke test of the script).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
HIDDEN_HCLT = 16  # parameter counts below are matched to within 20% at these sizes
CLUSTERS, PATCH_HIDDEN, TOP_HIDDEN = 64, 12, 32
LVD_TRAIN = """
    counting(pseudocount = 0.1)
    patch_em(epochs = {pe}, batch = 4096, rows = {prows}, step = 0.3 -> 0.05)
    latent_em(epochs = 10, batch = 512)
    top_em(epochs = {te}, batch = 512, rows = {rows})
    em(epochs = {ee}, step = 0.1 -> 0.01, batch = 512, rows = {rows})"""


def _data(root: str, quick: bool) -> str:
    limit = ", limit = 2000" if quick else ""
    valid = 200 if quick else 5000
    return f'fashion_mnist(root = "{root}", valid = {valid}{limit})'


def recipes(root: str, quick: bool) -> dict[str, str]:
    sizes = dict(pe=1, prows=20000, te=1, ee=1, rows=1000) if quick else \
        dict(pe=3, prows=400000, te=2, ee=2, rows=20000)
    train = LVD_TRAIN.format(**sizes)
    epochs = "epochs = 2" if quick else "epochs = 30, patience = 3"
    out = {"hclt": f"""
recipe hclt {{
  data  = {_data(root, quick)}
  model = hclt(over = data, hidden = {HIDDEN_HCLT})
  train {{ em({epochs}, batch = 512, step = 0.5 -> 0.05, pseudocount = 0.1) }}
  report bpd(test)
}}"""}
    teachers = {"lvd_pixels": "pixels()", "lvd_mae": "mae(epochs = 3)",
                "lvd_vqvae": "vqvae(codes = 256, epochs = 3)"}
    if quick:
        teachers = {k: v.replace("epochs = 3", "epochs = 1") for k, v in teachers.items()}
    grow = {"lvd_pg": f" | grow(to = {2 * CLUSTERS})"}
    for name, teacher in {**teachers, "lvd_pg": teachers["lvd_vqvae"]}.items():
        clusters = CLUSTERS if name != "lvd_pg" else CLUSTERS // 2
        latents = f"kmeans(teacher.features, clusters = {clusters}){grow.get(name, '')}"
        out[name] = f"""
recipe {name} {{
  data    = {_data(root, quick)}
  patches = grid(x, 4, 4)
  teacher = {teacher}
  latents = {latents}
  model   = hclt(over = latents, hidden = {TOP_HIDDEN}) with patch_pc = hclt(hidden = {PATCH_HIDDEN}, shared = true)
  train   {{ {train} }}
  report  bpd(test), samples(64), inpaint(test, mask = left_half)
}}"""
    return out


def run_one(name: str, text: str, results: Path, backend: str | None) -> dict:
    """One configuration in this process; its peak memory and wall time go to `bench.json` beside
    the run's files (this process's own: each configuration runs in a fresh one)."""
    from pcdsl.frontend import check_text
    from pcdsl.run import run_recipe

    directory = results / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "recipe.pc").write_text(text)
    checked = check_text(text, str(directory / "recipe.pc"))
    started = time.perf_counter()
    report = run_recipe(checked, name, directory, backend=backend, progress=True)
    process = {"wall_seconds": time.perf_counter() - started,
               "peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    (directory / "bench.json").write_text(json.dumps(process, indent=2))
    return report


def measured(directory: Path) -> dict:
    """A configuration's report with what the benchmark measured around it: its process's peak
    memory (`bench.json`, when it ran in a process of its own) and, for recipes whose report has no
    stage times (plain training), the seconds of its EM epochs from `metrics.jsonl`."""
    report = json.loads((directory / "report.json").read_text())
    bench = directory / "bench.json"
    if bench.exists():
        report["peak_memory_mib"] = json.loads(bench.read_text())["peak_memory_mib"]
    metrics = directory / "metrics.jsonl"
    if "seconds" not in report and metrics.exists():
        epochs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        report["seconds"] = {f"{len(epochs)} EM epochs": sum(e["seconds"] for e in epochs)}
    return report


def table(reports: dict[str, dict]) -> str:
    """The benchmark's table; the VQ-VAE teacher's own figure is a row of its own."""
    lines = ["| model | test bpd | LVD bound (bpd) | teacher bpd | parameters (non-zero) | seconds per stage | "
             "total s | peak MiB |", "|---|---:|---:|---:|---:|---|---:|---:|"]
    for name, r in reports.items():
        seconds = r.get("seconds", {})
        stages = ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
        size = f"{r.get('parameters', 0):,}"
        if r.get("nonzero_parameters") not in (None, r.get("parameters")):
            size += f" ({r['nonzero_parameters']:,})"
        cells = [name, _f(r.get("test_bpd")), _f(r.get("lvd_bound_test_bpd")), _f(r.get("teacher_test_bpd")),
                 size, stages or "-", f"{sum(seconds.values()):.0f}" if seconds else "-",
                 "-" if r.get("peak_memory_mib") is None else f"{r['peak_memory_mib']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    teacher = next((r for n, r in reports.items() if n in ("lvd_vqvae", "lvd_pg") and "teacher_test_bpd" in r), None)
    if teacher is not None:
        lines.append(f"| VQ-VAE teacher alone (not tractable) | {teacher['teacher_test_bpd']:.3f} | - | - | - | "
                     f"teacher {teacher.get('seconds', {}).get('teacher', 0):.0f} | - | - |")
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="configurations to run (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--results", default=str(ROOT / "results" / "fashion"))
    parser.add_argument("--backend", choices=("torch", "numba"), default=None)
    parser.add_argument("--quick", action="store_true", help="2,000 images, few epochs: a smoke test")
    parser.add_argument("--table", action="store_true", help="print the table of the reports already in RESULTS")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # one configuration, in this process
    args = parser.parse_args()
    results = Path(args.results)
    chosen = recipes(args.root, args.quick)
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        report = run_one(args.one, chosen[args.one], results, args.backend)
        print(f"{args.one}: {json.dumps({k: v for k, v in report.items() if 'bpd' in k})}", flush=True)
        return
    if not args.table:
        for name in chosen:
            if args.only and name not in args.only:
                continue
            command = [sys.executable, __file__, "--one", name, "--threads", str(args.threads), "--root", args.root,
                       "--results", str(results)] + (["--backend", args.backend] if args.backend else []) + \
                      (["--quick"] if args.quick else [])
            done = subprocess.run(command, check=False)
            if done.returncode != 0:
                sys.exit(f"{name}: stopped with exit code {done.returncode}; run the same command again to resume")
    reports = {name: measured(results / name) for name in chosen if (results / name / "report.json").exists()}
    (results / "fashion_mnist.json").write_text(json.dumps(reports, indent=2, sort_keys=True, default=str))
    print(table(reports))

if __name__ == "__main__":
    main()
