"""A tiny DEBD dataset (the first rows of NLTCS, shipped in examples/data) and recipes over it,
for the tests of runs that crash, resume and run on several workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import EXAMPLES, ROOT

NLTCS = EXAMPLES / "data" / "debd" / "nltcs"

# mini-batch EM, a stage that stops early (patience, noisy steps), full-batch EM, then Adam: the
# best valid score comes in the last stage, so the model file shows every stage's work
STAGES = ("em(epochs = 4, step = 0.3 -> 0.1, batch = 100); em(epochs = 6, step = 1.0, batch = 10, patience = 1); "
          "full_em(epochs = 3); sgd(epochs = 2, lr = 0.02, batch = 150)")
EPOCHS = 4 + 4 + 3 + 2  # the second stage stops after its 4th epoch


def tiny_debd(folder: Path, rows: tuple[int, int, int] = (600, 200, 200)) -> Path:
    """`folder`/tiny/tiny.{train,valid,test}.data: the first rows of each NLTCS split."""
    (folder / "tiny").mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "valid", "test"), rows, strict=True):
        lines = (NLTCS / f"nltcs.{split}.data").read_text().splitlines()[:n]
        (folder / "tiny" / f"tiny.{split}.data").write_text("\n".join(lines) + "\n")
    return folder


def recipe(tmp: Path, stages: str = STAGES, hidden: int = 4) -> Path:
    root = tiny_debd(tmp / "data")
    path = tmp / "tiny.pc"
    path.write_text(f"""recipe tiny {{
  data   = debd("tiny", root = "{root}")
  model  = hclt(over = data, hidden = {hidden}, subsample = 0)
  train  {{ {stages} }}
  report loglik(test), bpd(test), samples(3)
}}
""")
    return path


def pcdsl(*args: str, fault: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """`pcdsl ARGS` in a fresh process (checkpoints after every mini-batch; `fault`: a crash
    point, :mod:`pcdsl.io.faults`)."""
    full = {**os.environ, "PCDSL_CHECKPOINT_SECONDS": "0", **env}
    full.pop("PCDSL_FAULT", None)
    if fault is not None:
        full["PCDSL_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "pcdsl.cli", *args], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=600)
