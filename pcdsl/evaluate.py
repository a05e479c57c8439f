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
             group: Any = None, keep_rows: bool = False) -> Score:
    """Average log-likelihood of `data` (missing values marginalised) and bits per dimension; with
    `keep_rows`, every row's log-likelihood too (``Score.per_row``). No rows: NaN averages. With a
    worker `group` (:mod:`pcdsl.learn.parallel`) of several, each worker scores its shard of the
    rows and the sums are all-reduced: every worker gets the whole score (without per-row values)."""
    from pcdsl import arguments

    batch_size = arguments.integer(batch_size, "batch_size", 1)
    data = arguments.evidence(data, model.variables, model.cardinalities, "data")
    show = data.shape[0] >= PROGRESS_THRESHOLD if progress is None else progress
    rows = data.shape[0]
    if group is not None and group.size > 1:
        from pcdsl.learn.parallel import all_reduce_sum, shard

        mine = data[shard(np.arange(rows), group)]
        total = all_reduce_sum(total_log_likelihood(model, mine, batch_size, show and group.rank == 0), group)
        per_row = np.zeros(0)
    else:
        lp = _log_likelihoods(model, data, batch_size, show)
        total, per_row = float(lp.sum()), lp if keep_rows else np.zeros(0)
    mean = total / rows if rows else math.nan
    return Score(rows, mean, -mean / (data.shape[1] * math.log(2)), per_row)


def _log_likelihoods(model: Any, data: np.ndarray, batch_size: int, progress: bool) -> np.ndarray:
    """log p(x) of every row of `data`, batch by batch."""
    starts: Any = range(0, data.shape[0], batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="eval", unit="batch", leave=False)
    parts = [np.asarray(model.log_prob(data[start:start + batch_size]), dtype=np.float64) for start in starts]
    return np.concatenate(parts) if parts else np.zeros(0)


def total_log_likelihood(model: Any, data: np.ndarray, batch_size: int = 1024, progress: bool = False) -> float:
    """The sum of log p(x) over the rows of `data`, batch by batch."""
    return float(_log_likelihoods(model, data, batch_size, progress).sum())
