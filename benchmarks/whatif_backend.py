"""What three torch-backend changes would gain, measured by monkeypatching a compiled model in
this process only (the backend's files are not touched). Prints a Markdown table of samples/s,
forward / forward+flows: as is; (1) categorical inputs: gather straight into the buffer
(`torch.gather(..., out=)`, no `torch.where` when nothing is missing) and input flows by
`scatter_add_` along the category axis instead of masked `index_add_`; (1)+(2) a reused (slots, B)
forward buffer. Then (3): a sum layer's `log(W @ exp(x - m)) + m` over HCLT shapes, whole vs
tiled over folds (chunks that stay in cache). Patches follow the backend as of 2026-11-26 and
may need updating when it changes.

    .venv/bin/python benchmarks/whatif_backend.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from pcdsl.backends.torch.layers import InputRule

import pcdsl
from pcdsl.plan import ONE, ZERO

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_speed as bs  # a sibling script, not a package

BATCH = 512


def median_seconds(fn: Callable[[], Any], reps: int = 5) -> float:
    """Median wall time of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def patch_inputs(model: Any) -> None:
    """(1): categorical inputs gather into the buffer; input flows by scatter-add."""
    for rule in model.circuit.rules:
        if isinstance(rule, InputRule) and rule.layer.family == "categorical":
            rule.forward, rule.flows = _gather_forward(rule), _scatter_flows(rule)


def _gather_forward(rule: Any) -> Callable[..., Any]:
    original = rule.forward

    def forward(buf: torch.Tensor, batch: Any, mode: str) -> Any:
        if mode != "sum" or bool(batch.missing.any()):
            return original(buf, batch, mode)
        groups, width = rule.grid.shape[0], rule.width
        index = batch.index[rule.group_var][:, None, :].expand(-1, width, -1)
        torch.gather(rule.grid, 2, index, out=buf[rule.start:rule.stop].view(groups, width, -1))
        return None

    return forward


def _scatter_flows(rule: Any) -> Callable[..., Any]:
    original = rule.flows

    def flows(buf: torch.Tensor, flow: torch.Tensor, batch: Any) -> Any:
        if bool(batch.missing.any()):
            return original(buf, flow, batch)
        groups, width, size = rule.grid.shape
        f = flow[rule.start:rule.stop].view(groups, width, -1)
        counts = torch.zeros(groups, width, size, dtype=f.dtype)
        counts.scatter_add_(2, batch.index[rule.group_var][:, None, :].expand(-1, width, -1), f)
        return {"counts": counts.view(groups * width, size)}

    return flows


def patch_workspace(model: Any) -> None:
    """(2): one forward buffer per (slots, batch) shape, reused between calls."""
    buffers: dict[tuple[int, int], torch.Tensor] = {}

    def _forward(self: Any, batch: Any, mode: str = "sum") -> torch.Tensor:
        key = (self.plan.num_slots, batch.index.shape[1])
        if key not in buffers:
            buffers[key] = torch.empty(*key, dtype=self.dtype)
        buf = buffers[key]
        buf[ONE], buf[ZERO] = 0.0, -torch.inf
        with torch.no_grad():
            for rule in self.rules:
                rule.forward(buf, batch, mode)
        return buf

    model.circuit._forward = types.MethodType(_forward, model.circuit)


def backend_table(x: torch.Tensor, edges: Any) -> None:
    def rates(model: Any) -> str:
        forward = median_seconds(lambda: model.log_prob(x))
        both = median_seconds(lambda: model.flows(x))
        return f"{BATCH / forward:,.0f} / {BATCH / both:,.0f}"

    print("| structure | K | as is | (1) inputs | (1)+(2) workspace | max abs diff lp / counts |")
    print("|---|---:|---:|---:|---:|---|")
    for struct, k in (("hclt", 16), ("hclt", 32), ("quad_tree", 16), ("quad_tree", 32)):
        model = pcdsl.compile(bs.build(struct, k, edges if struct == "hclt" else None), dtype="float32")
        ref_lp, ref_flows = model.log_prob(x).clone(), model.flows(x)
        as_is = rates(model)
        patch_inputs(model)
        lp, flows = model.log_prob(x), model.flows(x)
        err_lp = (lp - ref_lp).abs().max().item()
        err_flows = max((flows.inputs[n]["counts"] - ref_flows.inputs[n]["counts"]).abs().max().item()
                        for n in list(ref_flows.inputs)[:50])
        inputs = rates(model)
        patch_workspace(model)
        print(f"| {struct} | {k} | {as_is} | {inputs} | {rates(model)} | {err_lp:.1e} / {err_flows:.1e} |",
              flush=True)


def tiling_table() -> None:
    """(3): one HCLT-shaped sum layer (783 folds of K x K, batch 512), whole vs tiled over folds."""
    folds = 783
    for k in (16, 32):
        buf = torch.randn(folds * k * 3, BATCH)
        rows = torch.arange(folds * k) * 2 % (folds * k * 3)  # strided but ordered rows, like a plan
        weights = torch.softmax(torch.randn(folds, k, k), 2)
        out = torch.empty(folds, k, BATCH)

        def run(chunk: int, buf: torch.Tensor = buf, rows: torch.Tensor = rows,
                weights: torch.Tensor = weights, out: torch.Tensor = out, k: int = k) -> None:
            for lo in range(0, folds, chunk):
                hi = min(folds, lo + chunk)
                x = buf.index_select(0, rows[lo * k:hi * k]).view(hi - lo, k, BATCH)
                m = x.amax(dim=1, keepdim=True)
                o = out[lo:hi]
                torch.bmm(weights[lo:hi], x.sub_(m).exp_(), out=o)
                o.log_().add_(m)

        run(folds)
        whole = out.clone()
        print(f"K={k} untiled {median_seconds(lambda: run(folds), 9) * 1e3:.2f} ms")
        for chunk in (8, 16, 32, 64, 128):
            ms = median_seconds(lambda chunk=chunk: run(chunk), 9) * 1e3
            err = (out - whole).abs().max().item()
            print(f"K={k} tiled folds/chunk={chunk:4d} ({chunk * k * BATCH * 4 / 2**20:.2f} MiB) {ms:.2f} ms "
                  f"err {err:.1e}")


def main() -> None:
    torch.set_num_threads(2)
    images, _ = bs.load_images(2000)
    x = torch.from_numpy(images[:BATCH].astype(np.int64))
    edges, _ = bs.tree_edges(images)
    backend_table(x, edges)
    print()
    tiling_table()


if __name__ == "__main__":
    main()
