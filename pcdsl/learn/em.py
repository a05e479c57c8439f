"""Expectation-maximisation over any backend that computes flows.

The update is the field's usual one (so results compare with Juice/PyJuice):
``theta_new = (F + a / |ch|) / (sum F + a)`` and
``theta <- (1 - s) theta + s theta_new`` with flows F, pseudocount a and step
size s. Full-batch EM accumulates the flows of the whole dataset and takes
s = 1, so every step can only raise the training log-likelihood (with a = 0).
Gaussian leaves move to the flow-weighted mean and variance, with a floor on
the standard deviation. Tied sums learn from the summed flows of every use.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from pcdsl.learn.regularise import entropy_normalise, normalise
from pcdsl.params import Parameters
from pcdsl.reference import Flows


def _np(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def add_flows(total: Flows | None, more: Flows) -> Flows:
    """Accumulate flows (as float64 numpy arrays) over batches."""
    if total is None:
        total = Flows()
    total.log_likelihood += more.log_likelihood
    for group, f in more.weights.items():
        total.weights[group] = total.weights.get(group, 0) + _np(f).astype(np.float64)
    for node, stats in more.inputs.items():
        slot = total.inputs.setdefault(node, {})
        for key, value in stats.items():
            slot[key] = slot.get(key, 0) + _np(value).astype(np.float64)
    return total


def em_update(params: Parameters, flows: Flows, step: float = 1.0, pseudocount: float = 0.1,
              min_std: float = 1e-2, entropy: dict[str, np.ndarray] | None = None) -> Parameters:
    """New parameters from flows; parameters that received no flows are kept.

    `entropy` (from :func:`pcdsl.learn.regularise.entropy_weights`) gives, per weight group or
    leaf, the weight of each parameter row's entropy in the M step; rows it leaves out get plain EM.
    """
    def target(name: str, counts: np.ndarray) -> np.ndarray:
        if entropy is None or name not in entropy:
            return normalise(counts, pseudocount)
        return entropy_normalise(counts, pseudocount, entropy[name])

    new = Parameters({k: dict(v) for k, v in params.inputs.items()}, dict(params.weights))
    for group, w in params.weights.items():
        if group in flows.weights:
            new.weights[group] = (1 - step) * w + step * target(group, _np(flows.weights[group]))
    for node, p in params.inputs.items():
        stats = {k: _np(v) for k, v in flows.inputs.get(node, {}).items()}
        if "counts" in stats:
            target_probs = target(node, stats["counts"])
            if "p" in p:
                new.inputs[node]["p"] = (1 - step) * p["p"] + step * target_probs[:, 1]
            else:
                new.inputs[node]["probs"] = (1 - step) * p["probs"] + step * target_probs
        elif "n" in stats:
            new.inputs[node].update(_gaussian(p, stats, step, min_std))
    return new


def _gaussian(p: dict[str, np.ndarray], stats: dict[str, np.ndarray], step: float,
              min_std: float) -> dict[str, np.ndarray]:
    n = stats["n"]
    seen = n > 1e-12
    safe = np.where(seen, n, 1.0)
    mean = np.where(seen, stats["sx"] / safe, p["mean"])
    var = np.where(seen, stats["sxx"] / safe - mean**2, p["std"] ** 2)
    std = np.sqrt(np.maximum(var, min_std**2))
    return {"mean": (1 - step) * p["mean"] + step * mean, "std": (1 - step) * p["std"] + step * std}


def batches(n: int, size: int, rng: np.random.Generator | None) -> Iterator[np.ndarray]:
    """Row indices of ceil(n / size) mini-batches of near-equal sizes (shuffled when `rng` is given).

    Sizes differ by at most one row, so no batch is a small remainder: with a fixed step size,
    a last batch of a few rows would pull the parameters towards those rows alone.
    """
    order = rng.permutation(n) if rng is not None else np.arange(n)
    if n > 0:
        yield from np.array_split(order, -(-n // size))


def full_batch_flows(model: Any, data: np.ndarray, batch_size: int = 1024) -> Flows:
    """The flows of a whole dataset, accumulated batch by batch."""
    total: Flows | None = None
    for rows in batches(len(data), batch_size, None):
        total = add_flows(total, model.flows(data[rows]))
    assert total is not None, "no data"
    return total
