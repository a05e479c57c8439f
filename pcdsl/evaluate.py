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


def evaluate(model: Any, data: np.ndarray, batch_size: int = 1024, progress: bool | None = None,
             group: Any = None) -> Score:
    """Average log-likelihood of `data` (missing values marginalised) and bits per dimension.
    With a worker `group` (:mod:`pcdsl.learn.parallel`) of several, each worker scores its shard
    of the rows and the sums are all-reduced: every worker gets the whole score."""
    if data.ndim != 2 or data.shape[1] != len(model.variables):
        raise ValueError(f"data has shape {data.shape}, but the circuit has {len(model.variables)} variables")
    show = data.shape[0] >= PROGRESS_THRESHOLD if progress is None else progress
    if group is not None and group.size > 1:
        from pcdsl.learn.parallel import all_reduce_sum, shard

        mine = data[shard(np.arange(len(data)), group)]
        total = all_reduce_sum(total_log_likelihood(model, mine, batch_size, show and group.rank == 0), group)
    else:
        total = total_log_likelihood(model, data, batch_size, show)
    mean = total / data.shape[0]
    return Score(data.shape[0], mean, -mean / (data.shape[1] * math.log(2)))


def total_log_likelihood(model: Any, data: np.ndarray, batch_size: int = 1024, progress: bool = False) -> float:
    """The sum of log p(x) over the rows of `data`, batch by batch."""
    total = 0.0
    starts: Any = range(0, data.shape[0], batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="eval", unit="batch", leave=False)
    for start in starts:
        total += float(np.sum(np.asarray(model.log_prob(data[start:start + batch_size]), dtype=np.float64)))
    return total
