"""pcdsl (torch backend) beside PyJuice on PyJuice's published structures, on one GPU.

One run of this script gives, per structure, seconds per epoch of 60,000 samples (forward, flows,
mini-batch EM update per batch) and peak device memory, for pcdsl and, where ``import pyjuice``
works, for PyJuice on the same card, with the card's name on every record.

Structures (PyJuice's benchmark, ImageNet32 16x16 crops: 768 categorical(256) variables):

- HCLT at about 2.56M, 10.1M, 39.9M and 159M edges: latents 32, 64, 128, 256 (the Chow-Liu tree
  learned from the data; pcdsl's edge count is printed beside the target);
- PD (Poon-Domingos over the 16x16x3 crop) at about 15.6M and 56.3M edges: the number of units
  is the one whose edge count comes nearest the target.

Data: ``--data crops.npy`` (uint8 (n, 16, 16, 3) or (n, 768)); without it, random crops (the
speed of a pass does not depend on the values; the HCLT tree then is any spanning tree).

    python benchmarks/gpu.py                                  # everything, on cuda
    python benchmarks/gpu.py --device cpu --tiny              # the CPU check: tiny structures

``--tiny`` swaps in structures of a few thousand edges and 1,024 samples, so the script's
every path (building, compiling, epochs, records) runs on a CPU in seconds; its figures mean
nothing about a GPU. Records go to ``--out`` as JSON lines.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu.jsonl"
HCLT_TARGETS = {32: 2.56e6, 64: 10.1e6, 128: 39.9e6, 256: 159e6}  # latents -> PyJuice's edge count
PD_TARGETS = (15.6e6, 56.3e6)
PD_UNITS = (8, 12, 16, 24, 32, 48, 64, 96, 128)  # candidates searched for the PD targets


def crops(path: Path | None, n: int, side: int) -> np.ndarray:
    """(n, side * side * 3) int64 pixel values."""
    if path is None:
        return np.random.default_rng(0).integers(0, 256, (n, side * side * 3))
    x = np.load(path, allow_pickle=False)
    return x.reshape(len(x), -1)[:n].astype(np.int64)


def graph_of(structure: str, units: int, side: int, data: np.ndarray):  # type: ignore[no-untyped-def]
    from pcdsl.ir.graph import CircuitGraph, Domain, Variable
    from pcdsl.structures import generate

    variables = tuple(Variable(f"x{i}", i, Domain("categorical", 256)) for i in range(side * side * 3))
    graph = CircuitGraph(f"{structure}{units}", variables)
    if structure == "hclt":
        generate("hclt", graph, np.arange(len(variables)), prefix="h", data=data, hidden=units)
    else:  # PD over the crop's pixels, the colour channels of a pixel side by side in a row
        grid = np.arange(len(variables)).reshape(side, side * 3)
        delta = max(1, side // 4)
        generate("poon_domingos", graph, grid, prefix="pd", delta=[delta, 3 * delta], units=units)
    return graph


def structures(tiny: bool, side: int, data: np.ndarray) -> list[tuple[str, int, float, Any]]:
    """(structure, units, target edges, graph) of every configuration."""
    if tiny:
        return [("hclt", 4, 0.0, graph_of("hclt", 4, side, data)), ("pd", 2, 0.0, graph_of("pd", 2, side, data))]
    out = [("hclt", h, target, graph_of("hclt", h, side, data)) for h, target in HCLT_TARGETS.items()]
    for target in PD_TARGETS:
        best = min(PD_UNITS, key=lambda k: abs(graph_of("pd", k, side, data).num_edges() - target))
        out.append(("pd", best, target, graph_of("pd", best, side, data)))
    return out


def synchronise(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def epoch_pcdsl(graph, data: np.ndarray, device: str, batch: int, dtype: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """One epoch of mini-batch EM with pcdsl's torch backend: per batch forward, flows, update."""
    import torch

    import pcdsl
    from pcdsl.learn.em import em_update
    from pcdsl.params import initialise

    params = initialise(graph, 0)
    model = pcdsl.compile(graph, "torch", params=params, device=device, dtype=dtype)
    x = torch.as_tensor(data, device=device)
    model.flows(x[:batch])  # warm-up: allocations, kernels
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    synchronise(device)
    start = time.perf_counter()
    for lo in range(0, len(x), batch):
        flows = model.flows(x[lo:lo + batch])
        params = em_update(params, flows, step=0.1, pseudocount=0.1)
        model.set_parameters(params)
    synchronise(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return {"epoch_s": seconds, "peak_gib": peak}


def epoch_pyjuice(structure: str, units: int, data: np.ndarray, device: str, batch: int) -> dict[str, float] | str:
    """The same epoch with PyJuice (its own HCLT and PD builders), or why it did not run."""
    try:
        import pyjuice as juice
        import torch
    except ImportError as error:
        return f"pyjuice not importable: {error}"
    x = torch.as_tensor(data, device=device)
    if structure == "hclt":
        ns = juice.structures.HCLT(x[:20000].float(), num_latents=units)
    else:
        side = round((data.shape[1] / 3) ** 0.5)
        ns = juice.structures.PD(data_shape=(side, side * 3), num_latents=units, split_intervals=max(1, side // 4))
    pc = juice.compile(ns).to(device)
    def step(xb: torch.Tensor) -> None:
        lls = pc(xb)
        pc.backward(xb, flows_memory=1.0)
        pc.mini_batch_em(step_size=0.1, pseudocount=0.1)
        del lls

    step(x[:batch])
    torch.cuda.reset_peak_memory_stats()
    synchronise(device)
    start = time.perf_counter()
    for lo in range(0, len(x), batch):
        step(x[lo:lo + batch])
    synchronise(device)
    return {"epoch_s": time.perf_counter() - start, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def card(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--samples", type=int, default=60000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--tiny", action="store_true", help="tiny structures and 1,024 samples: the CPU check")
    ap.add_argument("--no-pyjuice", action="store_true")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args()
    side = 4 if a.tiny else 16
    data = crops(a.data, 1024 if a.tiny else a.samples, side)
    records = []
    for structure, units, target, graph in structures(a.tiny, side, data):
        record: dict[str, Any] = {"structure": structure, "units": units, "target_edges": target,
                                  "edges": graph.num_edges(), "samples": len(data), "batch": a.batch,
                                  "device": card(a.device), "dtype": a.dtype}
        record["pcdsl"] = epoch_pcdsl(graph, data, a.device, a.batch, a.dtype)
        if not a.no_pyjuice:
            record["pyjuice"] = epoch_pyjuice(structure, units, data, a.device, a.batch)
        records.append(record)
        print(json.dumps(record), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
