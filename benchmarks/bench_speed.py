"""pcdsl (torch-CPU and numba backends) speed beside its peers, on the peers' structures and data.

Builds, over the 784 pixels of 28x28 Fashion-MNIST (categorical(256) each):

- ``hclt``: a hidden Chow-Liu tree on the *same* tree edges as the peer scripts
  (``/work/shared/peers/common.py: cached_chow_liu_edges(load_images(2000))``), rooted at the
  tree's centre, in pcdsl's HCLT layout (pcdsl/structures/hclt.py);
- ``quad_tree``: pcdsl's quad-tree template on the 28x28 grid;

at each ``--units`` K, compiles it with ``pcdsl.compile(graph, backend, dtype="float32")`` for each
``--backends`` (torch, numba; each in its own process) and measures on
one batch of real images (median of several runs after a warm-up, as the peers do):

- forward ``log_prob`` and forward+``flows`` samples/s, and peak RSS (VmHWM since a reset);
- the sum layers alone, in G edge-evals/s (torch: each ``SumRule.forward`` over a prepared
  buffer; numba: the scaled forward kernel, whole, less the same kernel with the layer table
  cut to its input and product layers), beside the machine's limits for the same (F, M, C)
  fold shapes and batch measured in the torch process: a plain folded
  ``log(W @ exp(x - m)) + m`` with ``torch.bmm`` (fresh outputs, and into reused ``out=``
  buffers), and a plain ``torch.bmm`` of the same size;
- time per layer kind (evidence, input, product, sum) of the forward and of flows;
- the mean log-likelihood (bits/dim) and its agreement with the float64 model.

Each configuration runs in its own process (peak RSS is per process, like the peers').
If the peers' results (``--peers``, JSON lines of /work/shared/peers/run_all.sh) hold records,
prints a Markdown table of pcdsl beside them. Records go to ``--out`` as JSON lines.

    .venv/bin/python benchmarks/bench_speed.py                      # all: hclt, quad_tree x K 16, 32
    .venv/bin/python benchmarks/bench_speed.py --structures hclt --units 16
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

PEERS_DIR = Path(os.environ.get("PEERS_DIR", "/work/shared/peers"))
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "speed.jsonl"
PEER_STRUCT = {"hclt": "hclt", "quad_tree": "quad-tree-4"}  # pcdsl template -> peers' struct name
BACKEND_NAMES = {"torch-cpu": "torch-CPU", "numba": "numba"}


# ---- helpers shared with the peers (their own functions when available) --------------------------

if (PEERS_DIR / "common.py").exists():
    sys.path.insert(0, str(PEERS_DIR))
    import common as peers_common
else:
    peers_common = None


def load_images(n: int) -> tuple[np.ndarray, str]:
    if peers_common is not None:
        return peers_common.load_images(n)
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, 784), dtype=np.uint8), "random"


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def hwm_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def cur_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def time_fn(fn, warmup: int = 1, repeats: int = 5, max_seconds: float = 60.0) -> dict:
    """Median wall time of fn() after ``warmup`` calls (as the peers' common.time_fn)."""
    for _ in range(warmup):
        fn()
    times = []
    t_start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - t_start > max_seconds and len(times) >= 3:
            break
    return {"median_s": statistics.median(times), "min_s": min(times), "n": len(times)}


def bench_small(fn, warmup: int = 2, repeats: int = 5, min_time: float = 0.2) -> float:
    """Median seconds per call of a short kernel (repeated until min_time per sample)."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        ts.append(dt / n)
    return statistics.median(ts)


def tree_edges(x: np.ndarray) -> tuple[list[tuple[int, int]], str]:
    """The peers' Chow-Liu tree over the 784 pixels, else pcdsl's own."""
    if peers_common is not None:
        return peers_common.cached_chow_liu_edges(x), "peers common.cached_chow_liu_edges (16 bins)"
    from pcdsl.structures import chow_liu_edges

    return chow_liu_edges(x.astype(np.int64), np.full(x.shape[1], 256), bins=16), "pcdsl chow_liu_edges (16 bins)"


# ---- structures -------------------------------------------------------------------------------------

def make_graph(name: str):
    from pcdsl.ir.graph import CircuitGraph, Domain, Variable

    cat = Domain("categorical", 256)
    return CircuitGraph(name, tuple(Variable(f"p{i}", i, cat) for i in range(784)))


def hclt_from_edges(graph, edges: list[tuple[int, int]], hidden: int, prefix: str = "hclt") -> str:
    """pcdsl's HCLT layout (pcdsl/structures/hclt.py) on a given tree, rooted at its centre.

    latent(v) = input(v) (hadamard) prod over tree children u of sum_hidden(latent(u));
    the root is a 1-unit sum over latent(centre).
    """
    import networkx as nx

    from pcdsl.structures._common import Builder

    tree = nx.Graph()
    tree.add_nodes_from(range(len(graph.variables)))
    tree.add_edges_from(edges)
    assert nx.is_tree(tree), "the edges must form a spanning tree"
    b = Builder(graph, prefix)
    root = min(nx.center(tree, usebounds=True))
    order, kids, seen = [root], {}, {root}
    for v in order:
        kids[v] = [u for u in sorted(tree[v]) if u not in seen]
        seen.update(kids[v])
        order.extend(kids[v])
    latent: dict[int, str] = {}
    for v in reversed(order):  # children before parents
        messages = tuple(b.sum(f"v{u}.sum", (latent[u],), hidden) for u in kids[v])
        leaf = b.input(v, hidden)
        latent[v] = b.product(f"v{v}.prod", (leaf, *messages)) if messages else leaf
    return b.sum("root", (latent[root],), 1)


def build(structure: str, units: int, edges: list[tuple[int, int]] | None):
    from pcdsl.structures import generate

    graph = make_graph(f"{structure}{units}")
    if structure == "hclt":
        assert edges is not None
        hclt_from_edges(graph, edges, units)
    elif structure == "quad_tree":
        generate("quad_tree", graph, np.arange(784).reshape(28, 28), prefix="qt", units=units)
    else:
        raise ValueError(structure)
    return graph


def fold_limits(shapes: list[tuple[int, int, int]], batch: int, batch_major: bool) -> dict[str, float]:
    """Seconds for all (F, M, C) folds: plain log-space sums (fresh / out= outputs) and bare bmm."""
    import torch

    bm = batch_major
    xs = [torch.randn(f, batch, c) if bm else torch.randn(f, c, batch) for f, m, c in shapes]
    ws = [torch.softmax(torch.randn(f, c, m), dim=1) for f, m, c in shapes]  # (F, C, M)
    if not bm:
        ws = [w.transpose(1, 2).contiguous() for w in ws]  # (F, M, C)
    red = -1 if bm else 1  # the C axis of x
    e_bufs = [torch.empty_like(x) for x in xs]
    mx_bufs = [torch.empty(f, batch, 1) if bm else torch.empty(f, 1, batch) for f, m, c in shapes]
    o_bufs = [torch.empty(f, batch, m) if bm else torch.empty(f, m, batch) for f, m, c in shapes]

    def mm(x, w, out=None):
        return torch.bmm(x, w, out=out) if bm else torch.bmm(w, x, out=out)

    def lee_fresh():
        for x, w in zip(xs, ws, strict=True):
            mx = x.amax(dim=red, keepdim=True)
            torch.log(mm((x - mx).exp(), w)) + mx

    def lee_out():
        for x, w, e, mx, o in zip(xs, ws, e_bufs, mx_bufs, o_bufs, strict=True):
            torch.amax(x, dim=red, keepdim=True, out=mx)
            torch.sub(x, mx, out=e)
            e.exp_()
            mm(e, w, out=o)
            o.log_().add_(mx)

    def bmm_only():
        for x, w, o in zip(xs, ws, o_bufs, strict=True):
            mm(x, w, out=o)

    return {"lee": bench_small(lee_fresh), "lee_out": bench_small(lee_out), "bmm": bench_small(bmm_only)}


# ---- one configuration (child process) ------------------------------------------------------------

def throughput(model, xb, repeats: int) -> tuple[float, dict, float, dict, float]:
    """(RSS before timing, forward timing, its peak RSS, flows timing, its peak RSS)."""
    gc.collect()
    rss_built = cur_rss_mib()
    reset_peak_rss()
    tf = time_fn(lambda: model.log_prob(xb), repeats=repeats)
    fwd_peak = hwm_rss_mib()
    reset_peak_rss()
    tb = time_fn(lambda: model.flows(xb), repeats=repeats)
    return rss_built, tf, fwd_peak, tb, hwm_rss_mib()


def run_one(structure: str, units: int, batch: int, threads: int, repeats: int) -> dict:
    import torch

    import pcdsl
    from pcdsl.ir.graph import NodeKind
    from pcdsl.plan import InputLayer, ProductLayer, SumLayer

    torch.set_num_threads(threads)
    x_all, src = load_images(max(2000, batch))
    edges, edge_src = (tree_edges(x_all[:2000]) if structure == "hclt" else (None, None))
    rss0 = cur_rss_mib()
    t0 = time.perf_counter()
    graph = build(structure, units, edges)
    build_s = time.perf_counter() - t0
    sum_edges = sum(n.num_units * graph.child_units(n) for n in graph.nodes() if n.kind is NodeKind.SUM)
    t0 = time.perf_counter()
    model = pcdsl.compile(graph, dtype="float32")
    compile_s = time.perf_counter() - t0
    plan = model.plan
    sum_layers = [la for la in plan.layers if isinstance(la, SumLayer)]
    assert sum(math.prod(la.shape) for la in sum_layers) == sum_edges
    xb = torch.from_numpy(x_all[:batch].astype(np.int64))

    # correctness: finite, plausible, and agreeing with float64
    ll = model.log_prob(xb)
    ll_mean = float(ll.mean())
    finite = bool(torch.isfinite(ll).all())
    n64 = min(8, batch)
    model64 = pcdsl.compile(graph, dtype="float64")
    ll64 = model64.log_prob(xb[:n64])
    f64_maxdiff = float((ll[:n64].double() - ll64).abs().max())
    del model64
    rss_built, tf, fwd_peak, tb, flows_peak = throughput(model, xb, repeats)

    # ---- where the time goes: per layer kind, forward and flows ----
    # Timers wrap the model's own rules (and its evidence step), so this follows the backend
    # whatever its buffer layout; "other" = the pass's wall time minus the timed parts.
    kind_of = {InputLayer: "input", ProductLayer: "product", SumLayer: "sum"}
    rules = model.circuit.rules  # the runtime's rules (pcdsl.backends.torch.runtime)
    acc: dict[str, float] = defaultdict(float)
    saved: dict[str, tuple] = {}

    def layer_kind(rule) -> str:
        layer = getattr(rule, "layer", None)
        if layer is None:  # a rule that keeps no layer: find it in the plan by position
            layer = plan.layers[rules.index(rule)]
        return kind_of[type(layer)]

    def timed(fn, key, remember=None):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            result = fn(*args, **kwargs)
            acc[key] += time.perf_counter() - t
            if remember:
                saved[remember] = args
            return result
        return wrapper

    for rule in rules:
        kind = layer_kind(rule)
        rule.forward = timed(rule.forward, kind, "forward" if kind == "sum" else None)
        if hasattr(rule, "flows"):
            rule.flows = timed(rule.flows, kind + " (flows)")
    if hasattr(model.circuit, "_batch"):
        model.circuit._batch = timed(model.circuit._batch, "evidence")

    def profile(fn, runs: int = 5) -> dict:
        """The breakdown of the run with the median total (parts of one run add up)."""
        fn()
        samples = []
        for _ in range(runs):
            acc.clear()
            t = time.perf_counter()
            fn()
            total = time.perf_counter() - t
            sample = dict(acc)
            sample["other"] = total - sum(sample.values())
            sample["total"] = total
            samples.append(sample)
        return sorted(samples, key=lambda s: s["total"])[len(samples) // 2]

    prof_fwd = profile(lambda: model.log_prob(xb))
    prof_flows = profile(lambda: model.flows(xb))

    # ---- the sum layers alone, over a prepared buffer (the one the last forward filled) ----
    sum_rules = [r for r in rules if layer_kind(r) == "sum"]
    buf_args = saved["forward"]

    def sums_only():
        with torch.no_grad():
            for r in sum_rules:
                r.forward(*buf_args)

    t_sums = bench_small(sums_only, repeats=5)

    # ---- machine limits for the same fold shapes and batch ----
    # Both orientations: batch-major (F, B, C) @ (F, C, M), as the peers' roofline, and
    # slot-major (F, M, C) @ (F, C, B); the limit is the faster. "lee" = the stable log-space sum
    # log(W @ exp(x - m)) + m on already-gathered inputs; "out=" writes into reused buffers.
    torch.manual_seed(0)
    shapes = [la.shape for la in sum_layers]  # (F, M, C)
    limits: dict[str, float] = {}
    for orient in ("batch_major", "slot_major"):
        limits.update({f"{k}_{orient}": v for k, v in fold_limits(shapes, batch, orient == "batch_major").items()})
    t_lee = min(limits["lee_batch_major"], limits["lee_slot_major"])
    t_lee_out = min(limits["lee_out_batch_major"], limits["lee_out_slot_major"])
    t_bmm = min(limits["bmm_batch_major"], limits["bmm_slot_major"])

    def rate(t):
        return round(sum_edges * batch / t / 1e9, 3)

    layers_desc = defaultdict(int)
    for f, m, c in shapes:
        layers_desc[f"{m}x{c}"] += f
    rec = {
        "system": "pcdsl", "backend": "torch-cpu", "torch": torch.__version__, "structure": structure,
        "peer_struct": PEER_STRUCT[structure], "K": units, "batch": batch, "threads": torch.get_num_threads(),
        "data": src, "tree_edges": edge_src, "dtype": "float32", "input": "categorical-256",
        "sum_edges": sum_edges, "all_edges": graph.num_edges(), "params": graph.num_parameters(),
        "nodes": len(graph), "slots": plan.num_slots, "n_layers": len(plan.layers), "n_sum_layers": len(sum_layers),
        "sum_fold_shapes": dict(layers_desc), "build_s": round(build_s, 2), "compile_s": round(compile_s, 2),
        "ll_mean": ll_mean, "bits_per_dim": -ll_mean / (784 * math.log(2)), "ll_finite": finite,
        "f64_max_abs_diff": f64_maxdiff, "f64_rows": n64,
        "rss_import_mib": round(rss0, 1), "rss_built_mib": round(rss_built, 1),
        "fwd_median_s": tf["median_s"], "fwd_n": tf["n"], "fwd_peak_rss_mib": round(fwd_peak, 1),
        "flows_median_s": tb["median_s"], "flows_n": tb["n"], "flows_peak_rss_mib": round(flows_peak, 1),
        "fwd_samples_per_s": round(batch / tf["median_s"], 1),
        "flows_samples_per_s": round(batch / tb["median_s"], 1),
        "fwd_Gedges_per_s": rate(tf["median_s"]), "flows_Gedges_per_s": rate(tb["median_s"]),
        "sum_layers_s": t_sums, "sum_layers_Gedges_per_s": rate(t_sums),
        "limit_lee_s": t_lee, "limit_lee_Gedges_per_s": rate(t_lee),
        "limit_lee_out_s": t_lee_out, "limit_lee_out_Gedges_per_s": rate(t_lee_out),
        "limit_bmm_s": t_bmm, "limit_bmm_Gedges_per_s": rate(t_bmm),
        "limits_Gedges_per_s": {k: rate(v) for k, v in limits.items()},
        "profile_fwd_s": {k: round(v, 5) for k, v in prof_fwd.items()},
        "profile_flows_s": {k: round(v, 5) for k, v in prof_flows.items()},
    }
    return rec


def run_numba(structure: str, units: int, batch: int, threads: int, repeats: int) -> dict:
    """The numba backend on the same circuit, without torch in the process (its OpenMP threads
    and numba's would compete). The first calls run with an empty kernel cache (a fresh
    NUMBA_CACHE_DIR), so they include the kernels' compile time; later calls are steady state."""
    import tempfile

    os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="pcdsl-bench-numba-")
    import numba
    from pcdsl.backends.numba import kernels, runtime

    import pcdsl
    from pcdsl.ir.graph import NodeKind

    numba.set_num_threads(threads)
    x_all, src = load_images(max(2000, batch))
    edges, edge_src = (tree_edges(x_all[:2000]) if structure == "hclt" else (None, None))
    rss0 = cur_rss_mib()
    graph = build(structure, units, edges)
    sum_edges = sum(n.num_units * graph.child_units(n) for n in graph.nodes() if n.kind is NodeKind.SUM)
    t0 = time.perf_counter()
    model = pcdsl.compile(graph, "numba", dtype="float32")
    compile_s = time.perf_counter() - t0
    xb = x_all[:batch].astype(np.int64)
    t0 = time.perf_counter()
    ll = model.log_prob(xb)
    first_fwd_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.flows(xb)
    first_flows_s = time.perf_counter() - t0
    n64 = min(8, batch)
    ll64 = pcdsl.compile(graph, "numba", dtype="float64").log_prob(xb[:n64])
    f64_maxdiff = float(np.abs(ll[:n64] - ll64).max())
    rss_built, tf, fwd_peak, tb, flows_peak = throughput(model, xb, repeats)

    # Where the forward's time goes, timed on the kernel itself (no evidence, no Python): the
    # scaled forward on this batch with the layer table cut to no layers (the input layers only),
    # to its product layers, and whole; the sums' share is the whole less the inputs and products
    # (what they add to a real pass, whose products leave the sums' inputs in cache). A cut table
    # has scale groups of its own (product layers index them by layer); the tiles sent back to
    # the log kernels are counted (none expected: each cut reads the values of the last whole pass).
    circuit = model.circuit
    ops, groups = circuit.ops, circuit.groups
    index, real, _, _ = circuit._evidence(xb)
    parts, lost = {}, 0
    for name, subset in (("input", ops[:0]), ("input+product", ops[ops[:, kernels.KIND] == kernels.PRODUCT]),
                         ("all", ops)):
        circuit.ops = np.ascontiguousarray(subset)
        circuit.groups = groups if name == "all" else runtime._scale_groups(
            circuit.cat, circuit.gauss, circuit.ops, circuit.pindex, circuit.sindex, circuit.num_slots)
        lost += int(circuit._forward_scaled(index, real)[2].sum())
        parts[name] = bench_small(lambda: circuit._forward_scaled(index, real), repeats=7)
    circuit.ops, circuit.groups = ops, groups
    t_sums = parts["all"] - parts["input+product"]
    profile = {"input": parts["input"], "product": parts["input+product"] - parts["input"], "sum": t_sums,
               "total": parts["all"]}

    def rate(t):
        return round(sum_edges * batch / t / 1e9, 3)

    ll_mean = float(ll.mean())
    return {
        "system": "pcdsl", "backend": "numba", "numba": numba.__version__, "structure": structure,
        "peer_struct": PEER_STRUCT[structure], "K": units, "batch": batch, "threads": numba.get_num_threads(),
        "tile": circuit.tile, "data": src, "tree_edges": edge_src, "dtype": "float32", "input": "categorical-256",
        "sum_edges": sum_edges, "slots": model.plan.num_slots, "compile_s": round(compile_s, 2),
        "first_fwd_s": round(first_fwd_s, 2), "first_flows_s": round(first_flows_s, 2),
        "ll_mean": ll_mean, "bits_per_dim": -ll_mean / (784 * math.log(2)), "ll_finite": bool(np.isfinite(ll).all()),
        "f64_max_abs_diff": f64_maxdiff, "f64_rows": n64,
        "rss_import_mib": round(rss0, 1), "rss_built_mib": round(rss_built, 1),
        "fwd_median_s": tf["median_s"], "fwd_n": tf["n"], "fwd_peak_rss_mib": round(fwd_peak, 1),
        "flows_median_s": tb["median_s"], "flows_n": tb["n"], "flows_peak_rss_mib": round(flows_peak, 1),
        "fwd_samples_per_s": round(batch / tf["median_s"], 1), "flows_samples_per_s": round(batch / tb["median_s"], 1),
        "sum_layers_s": t_sums, "sum_layers_Gedges_per_s": rate(t_sums), "profile_lost_tiles": lost,
        "profile_fwd_s": {k: round(v, 5) for k, v in profile.items()},
    }


# ---- parent: run each configuration in its own process, then the table ------------------------

def load_peers(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return [r for r in rows if "peer" in r]


def fmt(v, digits=0) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:,.{digits}f}"


def table(records: list[dict], peers: list[dict]) -> str:
    out = ["| system | structure | K | sum edges | fwd samples/s | fwd+flows/bwd samples/s "
           "| peak RSS (MiB) fwd / fwd+bwd | LL mean (bits/dim) | sum layers Gedge/s "
           "| limit: lee fresh / lee out= / bmm Gedge/s |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    ratios = []
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["structure"], r["K"])].append(r)
    for (structure, k), ours in groups.items():
        for r in ours:
            out.append(f"| **pcdsl** {BACKEND_NAMES[r['backend']]} f32 | {structure} | {k} | {r['sum_edges']:,} | "
                       f"**{fmt(r['fwd_samples_per_s'])}** | **{fmt(r['flows_samples_per_s'])}** (flows) | "
                       f"{fmt(r['fwd_peak_rss_mib'])} / {fmt(r['flows_peak_rss_mib'])} | "
                       f"{r['ll_mean']:.1f} ({r['bits_per_dim']:.2f}) | {r['sum_layers_Gedges_per_s']} | "
                       f"{r.get('limit_lee_Gedges_per_s', '-')} / {r.get('limit_lee_out_Gedges_per_s', '-')} / "
                       f"{r.get('limit_bmm_Gedges_per_s', '-')} |")
        r = max(ours, key=lambda o: o["fwd_samples_per_s"])  # the faster pcdsl backend
        match = [p for p in peers if p.get("struct") == r["peer_struct"] and p.get("K") == r["K"]
                 and p.get("input") == "categorical-256"]
        for p in sorted(match, key=lambda p: -p.get("fwd_samples_per_s", 0)):
            ll = p.get("ll_mean")
            bpd = f"{ll:.1f} ({-ll / (784 * math.log(2)):.2f})" if isinstance(ll, (int, float)) else "-"
            name = f"{p['peer']} {p.get('version', '')}" + (f" ({p['layer']})" if "layer" in p else "")
            out.append(f"| {name} {p.get('dtype', '').replace('torch.', '')} | {p['struct']} | {p['K']} | "
                       f"{p.get('sum_edges', 0):,} | {fmt(p.get('fwd_samples_per_s'))} | "
                       f"{fmt(p.get('fwdbwd_samples_per_s'))} | - / {fmt(p.get('bench_peak_rss_mib'))} | {bpd} | "
                       f"{p.get('fwd_Gedges_per_s', '-')} (whole fwd) | |")
        bf = max((p.get("fwd_samples_per_s", 0) for p in match), default=0)
        bb = max((p.get("fwdbwd_samples_per_s", 0) for p in match), default=0)
        ratios.append((ours, bf, bb))
    out += ["", "| structure | K | numba / torch fwd | numba / torch fwd+flows | faster pcdsl fwd / best peer fwd "
            "| faster pcdsl fwd+flows / best peer fwd+bwd | sum layers / limit (lee fresh) | sum layers / bmm "
            "| fwd+flows / fwd samples/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for ours, bf, bb in ratios:
        by = {o["backend"]: o for o in ours}
        nb, tc = by.get("numba"), by.get("torch-cpu")
        vs = (f"{nb['fwd_samples_per_s'] / tc['fwd_samples_per_s']:.2f}x",
              f"{nb['flows_samples_per_s'] / tc['flows_samples_per_s']:.2f}x") if nb and tc else ("-", "-")
        fwd = max(ours, key=lambda o: o["fwd_samples_per_s"])
        flo = max(ours, key=lambda o: o["flows_samples_per_s"])
        peer_f = (f"{fwd['fwd_samples_per_s'] / bf:.2f}x ({BACKEND_NAMES[fwd['backend']]}; best {bf:,.0f})"
                  if bf else "-")
        peer_b = (f"{flo['flows_samples_per_s'] / bb:.2f}x ({BACKEND_NAMES[flo['backend']]}; best {bb:,.0f})"
                  if bb else "-")
        limit = ", ".join(f"{BACKEND_NAMES[o['backend']]} "
                          f"{o['sum_layers_Gedges_per_s'] / o['limit_lee_Gedges_per_s']:.0%}"
                          for o in ours if o.get("limit_lee_Gedges_per_s"))
        bmm = ", ".join(f"{BACKEND_NAMES[o['backend']]} "
                        f"{o['sum_layers_Gedges_per_s'] / o['limit_bmm_Gedges_per_s']:.0%}"
                        for o in ours if o.get("limit_bmm_Gedges_per_s"))
        keeps = ", ".join(f"{BACKEND_NAMES[o['backend']]} {o['flows_samples_per_s'] / o['fwd_samples_per_s']:.0%}"
                          for o in ours)
        out.append(f"| {fwd['structure']} | {fwd['K']} | {vs[0]} | {vs[1]} | {peer_f} | {peer_b} | {limit or '-'} "
                   f"| {bmm or '-'} | {keeps} |")
    return "\n".join(out)


def profile_table(records: list[dict]) -> str:
    out = ["| backend | structure | K | pass | total (ms) | breakdown (ms) |", "|---|---|---:|---|---:|---|"]
    for r in records:
        for key, name in (("profile_fwd_s", "forward"), ("profile_flows_s", "fwd+flows")):
            if key not in r:
                continue
            prof = dict(r[key])
            total = prof.pop("total")
            parts = ", ".join(f"{k} {v * 1e3:.0f} ({v / total:.0%})"
                              for k, v in sorted(prof.items(), key=lambda kv: -kv[1]))
            out.append(f"| {BACKEND_NAMES[r['backend']]} | {r['structure']} | {r['K']} | {name} | {total * 1e3:.0f} "
                       f"| {parts} |")
    return "\n".join(out)


RUN_ID = time.strftime("%Y%m%dT%H%M%S")
PEER_CMDS = {  # (pcdsl structure, peer) -> the peer script and its arguments
    ("hclt", "cirkit"): ["bench_cirkit.py", "--struct", "hclt"],
    ("hclt", "sparc"): ["bench_sparc.py", "--struct", "hclt"],
    ("hclt", "spflow"): ["bench_spflow.py", "--struct", "hclt"],
    ("quad_tree", "cirkit"): ["bench_cirkit.py", "--struct", "quad-tree-4"],
}


def run_peers(a, structure: str, k: int) -> None:
    """Run the peers' own scripts for this configuration; their records go to --peers-out."""
    a.peers_out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.peers_out.with_suffix(".tmp")
    for lib in a.peer_libs:
        cmd = PEER_CMDS.get((structure, lib))
        if cmd is None:
            continue
        print(f"== peer {lib} {structure} K={k}", file=sys.stderr, flush=True)
        tmp.unlink(missing_ok=True)
        env = {**os.environ, "BENCH_OUT": str(tmp), "OMP_NUM_THREADS": str(a.threads),
               "BENCH_THREADS": str(a.threads)}
        proc = subprocess.run([a.run_peers, *cmd, "--K", str(k), "--batch", str(a.batch)], cwd=PEERS_DIR, env=env,
                              stdout=subprocess.DEVNULL, timeout=1800)
        if proc.returncode or not tmp.exists():
            print(f"FAILED peer {lib} {structure} K={k} rc={proc.returncode}", file=sys.stderr)
            continue
        with open(a.peers_out, "a") as f:
            for line in tmp.read_text().splitlines():
                if line.strip():
                    f.write(json.dumps({**json.loads(line), "run_id": RUN_ID}, sort_keys=True) + "\n")
        tmp.unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--backends", nargs="+", default=["torch", "numba"], choices=["torch", "numba"])
    ap.add_argument("--structures", nargs="+", default=["hclt", "quad_tree"], choices=list(PEER_STRUCT))
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--peers", type=Path, default=Path(os.environ.get("BENCH_OUT", "/tmp/pc-peers-results.jsonl")))
    ap.add_argument("--run-peers", metavar="PYTHON", default=None,
                    help="also run the peers' scripts now, with this interpreter (e.g. /tmp/peers/bin/python), "
                         "one process before each pcdsl configuration, and compare with those records")
    ap.add_argument("--peer-libs", nargs="+", default=["cirkit", "sparc", "spflow"],
                    help="peers to run with --run-peers (hclt: all; quad_tree: cirkit)")
    ap.add_argument("--peers-out", type=Path, default=ROOT / "benchmarks" / "results" / "peers_side_by_side.jsonl")
    ap.add_argument("--in-process", action="store_true", help="run the configurations in this process")
    ap.add_argument("--child", nargs=3, metavar=("STRUCTURE", "K", "BACKEND"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))

    if a.child:
        runner = run_numba if a.child[2] == "numba" else run_one
        rec = runner(a.child[0], int(a.child[1]), a.batch, a.threads, a.repeats)
        print("RECORD " + json.dumps(rec, sort_keys=True), flush=True)
        return

    if peers_common is not None and any(s == "hclt" for s in a.structures):
        x, _ = load_images(2000)
        tree_edges(x)  # fill the peers' cache in this process, not in the timed ones
    records = []
    for structure in a.structures:
        for k in a.units:
            if a.run_peers:
                run_peers(a, structure, k)
            for backend in a.backends:
                print(f"== pcdsl {backend} {structure} K={k} batch={a.batch} threads={a.threads}", file=sys.stderr,
                      flush=True)
                if a.in_process:
                    runner = run_numba if backend == "numba" else run_one
                    rec = runner(structure, k, a.batch, a.threads, a.repeats)
                else:
                    cmd = [sys.executable, __file__, "--child", structure, str(k), backend, "--batch", str(a.batch),
                           "--threads", str(a.threads), "--repeats", str(a.repeats)]
                    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ,
                                          "OMP_NUM_THREADS": str(a.threads)})
                    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RECORD ")]
                    if proc.returncode or not lines:
                        print(f"FAILED rc={proc.returncode}: {' '.join(cmd)}", file=sys.stderr)
                        continue
                    rec = json.loads(lines[-1][len("RECORD "):])
                print(json.dumps({k2: rec[k2] for k2 in ("backend", "structure", "K", "sum_edges", "fwd_samples_per_s",
                                                         "flows_samples_per_s", "ll_mean", "f64_max_abs_diff")}),
                      file=sys.stderr, flush=True)
                records.append(rec)
    # the sum-layer limit is measured by the torch child (same fold shapes and batch, same run)
    limits = {(r["structure"], r["K"]): r for r in records if r["backend"] == "torch-cpu"}
    for r in records:
        torch_rec = limits.get((r["structure"], r["K"]))
        if r["backend"] == "numba" and torch_rec is not None:
            r.update({key: torch_rec[key] for key in torch_rec if key.startswith("limit_")})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as f:
        for rec in records:
            f.write(json.dumps({**rec, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, sort_keys=True) + "\n")
    if a.run_peers:  # this run's own peer records (same machine state as pcdsl's)
        peers = [p for p in load_peers(a.peers_out) if p.get("run_id") == RUN_ID]
        print(f"(peers re-run side by side in this run: {len(peers)} records, {a.peers_out})\n")
    else:
        peers = load_peers(a.peers)
    if not peers:
        print(f"(no peer records in {a.peers}; run /work/shared/peers/run_all.sh first)\n")
    print(table(records, peers))
    print()
    print(profile_table(records))
    for r in records:
        first = (f"; first calls with an empty kernel cache: forward {r['first_fwd_s']} s, flows "
                 f"{r['first_flows_s']} s" if "first_fwd_s" in r else "")
        print(f"\n{BACKEND_NAMES[r['backend']]} {r['structure']} K={r['K']}: LL finite={r['ll_finite']}, mean "
              f"{r['ll_mean']:.2f} nats = {r['bits_per_dim']:.3f} bits/dim; |f32 - f64| max over {r['f64_rows']} rows "
              f"= {r['f64_max_abs_diff']:.2e}; compile {r['compile_s']} s{first}")


if __name__ == "__main__":
    main()
