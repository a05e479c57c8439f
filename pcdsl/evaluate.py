"""Evaluating a compiled model on a dataset, batch by batch, with a progress bar."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROGRESS_THRESHOLD = 20_000  # rows; smaller datasets finish before a bar is worth drawing


@dataclass(frozen=True)
class Score:
    rows: int
    mean_log_likelihood: float  # nats per sample (NaN for no rows)
    bits_per_dimension: float
    per_row: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)  # when kept

    def __str__(self) -> str:
        return (f"{self.rows} samples: average log-likelihood {self.mean_log_likelihood:.4f} nats, "
                f"{self.bits_per_dimension:.4f} bits per dimension")


def evaluate(model: Any, data: np.ndarray, batch_size: int = 1024, progress: bool | None = None,
             keep_rows: bool = False) -> Score:
    """Average log-likelihood of `data` (missing values marginalised) and bits per dimension; with
    `keep_rows`, every row's log-likelihood too (``Score.per_row``). No rows: NaN averages."""
    from pcdsl import arguments

    batch_size = arguments.integer(batch_size, "batch_size", 1)
    data = arguments.evidence(data, model.variables, model.cardinalities, "data")
    show = data.shape[0] >= PROGRESS_THRESHOLD if progress is None else progress
    total = 0.0
    kept: list[np.ndarray] = []
    starts: Any = range(0, data.shape[0], batch_size)
    if show:
        from tqdm import tqdm

        starts = tqdm(starts, desc="eval", unit="batch", leave=False)
    for start in starts:
        lp = np.asarray(model.log_prob(data[start:start + batch_size]), dtype=np.float64)
        total += float(np.sum(lp))
        if keep_rows:
            kept.append(lp)
    rows = data.shape[0]
    mean = total / rows if rows else math.nan
    per_row = np.concatenate(kept) if kept else np.zeros(0)
    return Score(rows, mean, -mean / (data.shape[1] * math.log(2)), per_row)
