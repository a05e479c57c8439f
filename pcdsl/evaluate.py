"""Evaluating a compiled model on a dataset, batch by batch, with a progress bar."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

PROGRESS_THRESHOLD = 20_000  # rows; smaller datasets finish before a bar is worth drawing


@dataclass(frozen=True)
class Score:
    rows: int
    mean_log_likelihood: float  # nats per sample
    bits_per_dimension: float

    def __str__(self) -> str:
        return (f"{self.rows} samples: average log-likelihood {self.mean_log_likelihood:.4f} nats, "
                f"{self.bits_per_dimension:.4f} bits per dimension")


def evaluate(model: Any, data: np.ndarray, batch_size: int = 1024, progress: bool | None = None) -> Score:
    """Average log-likelihood of `data` (missing values marginalised) and bits per dimension."""
    if data.ndim != 2 or data.shape[1] != len(model.variables):
        raise ValueError(f"data has shape {data.shape}, but the circuit has {len(model.variables)} variables")
    show = data.shape[0] >= PROGRESS_THRESHOLD if progress is None else progress
    total = 0.0
    starts = range(0, data.shape[0], batch_size)
    if show:
        from tqdm import tqdm

        starts = tqdm(starts, desc="eval", unit="batch", leave=False)
    for start in starts:
        total += float(np.sum(np.asarray(model.log_prob(data[start:start + batch_size]), dtype=np.float64)))
    mean = total / data.shape[0]
    return Score(data.shape[0], mean, -mean / (data.shape[1] * math.log(2)))
