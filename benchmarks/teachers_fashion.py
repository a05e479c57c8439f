"""Time each teacher on Fashion-MNIST (4x4 patches, default options) and report the VQ-VAE's bpd.

    python benchmarks/teachers_fashion.py [--teachers vqvae mae pixels] [--train N] [--threads 2]

Reads the Debian package's IDX files; prints one line per teacher: fit seconds, feature seconds,
and (VQ-VAE) test bits/dim, with the machine's load average (other processes slow torch down; on
a shared machine run with OMP_WAIT_POLICY=PASSIVE, or idle OpenMP threads spin against them).
"""

from __future__ import annotations

import argparse
import gzip
import os
import time
from pathlib import Path

import numpy as np
import torch

from pcdsl.distill.teachers import make_teacher

ROOT = Path("/usr/share/datasets/fashion-mnist")


def read_idx_images(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    n, h, w = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, h, w, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--teachers", nargs="+", default=["pixels", "mae", "vqvae"])
    ap.add_argument("--train", type=int, default=60000, help="use the first N training images")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train = read_idx_images(ROOT / "train-images-idx3-ubyte.gz")[:args.train]
    test = read_idx_images(ROOT / "t10k-images-idx3-ubyte.gz")
    for kind in args.teachers:
        teacher = make_teacher(kind, {}, (28, 28, 1), (4, 4))
        start = time.perf_counter()
        teacher.fit(train, None, progress=False)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        feats = teacher.features(train)
        feat_s = time.perf_counter() - start
        bpd = teacher.bpd(test)
        extra = f", test bpd {bpd:.4f}" if bpd is not None else ""
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        print(f"{kind}: fit {fit_s:.1f} s, features {feat_s:.1f} s for {feats.shape}{extra} "
              f"(load average {load})", flush=True)


if __name__ == "__main__":
    main()
