"""Expectation-maximisation over any backend that computes flows.

The update is the field's usual one (so results compare with Juice/PyJuice):
``theta_new = (F + a / |ch|) / (sum F + a)`` and
``theta <- (1 - s) theta + s theta_new`` with flows F, pseudocount a and step
size s. Gaussian leaves move to the flow-weighted mean and variance (from
statistics centred on the current mean), with a floor on the standard
deviation and an optional prior of ``k`` pseudo-observations. Tied sums learn
from the summed flows of every use.

Learning semantics (docs/numerics.md):

- a parameter row whose total flow is at most ``ZERO_FLOW`` is kept as it is,
  in every family; so are the parameters in ``params.fixed``;
- full-batch EM (s = 1) never lowers :func:`objective`, the training
  log-likelihood plus :func:`log_prior`, over parameters whose stds respect
  the floor (a generalised EM step: each row moves to its maximiser or stays).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pcdsl.learn.regularise import entropy_normalise, normalise
from pcdsl.numerics import RELATIVE_STD_FLOOR, ZERO_FLOW
from pcdsl.params import Parameters
from pcdsl.reference import Flows

StdFloor = float | Mapping[str, float] | None  # one floor, one per Gaussian leaf, or None: from the flows


@dataclass(frozen=True)
class GaussianPrior:
    """``strength`` pseudo-observations per Gaussian unit, spread as N(mean, std^2) of the leaf's
    variable (``mean``/``std`` keyed like ``Parameters.inputs``): the M step maximises
    ``LL - k log sigma - k ((mu - mean)^2 + std^2) / (2 sigma^2)`` per unit."""

    strength: float
    mean: Mapping[str, float]
    std: Mapping[str, float]


def _np(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def add_flows(total: Flows | None, more: Flows) -> Flows:
    """Accumulate flows (as float64 numpy arrays) over batches: `total` (None: a new one) is
    added to in place and returned; `more` is left as it is (its arrays are copied, not kept)."""
    if total is None:
        total = Flows()
    total.log_likelihood += more.log_likelihood
    for group, f in more.weights.items():
        _add(total.weights, group, f)
    for node, stats in more.inputs.items():
        slot = total.inputs.setdefault(node, {})
        for key, value in stats.items():
            _add(slot, key, value)
    return total


def _add(totals: dict[str, Any], key: str, value: Any) -> None:
    """totals[key] += value in float64: in place once the total is a float64 array of its own
    (a fresh array per batch would cost its page faults again), else a new one."""
    have = totals.get(key)
    if isinstance(have, np.ndarray) and have.dtype == np.float64 and have.base is None and have.flags.writeable:
        np.add(have, _np(value), out=have)
    elif have is None:
        totals[key] = _np(value).astype(np.float64)  # a copy of its own, never a view of `value`
    else:
        totals[key] = have + _np(value).astype(np.float64)


def em_update(params: Parameters, flows: Flows, step: float = 1.0, pseudocount: float = 0.1,
              min_std: StdFloor = None, entropy: dict[str, np.ndarray] | None = None, *,
              prior: GaussianPrior | None = None) -> Parameters:
    """New parameters from flows. Rows with no flow (at most ``ZERO_FLOW``) and the parameters
    in ``params.fixed`` are kept.

    `min_std`: the Gaussian std floor, one number or one per leaf (:func:`pcdsl.learn.gaussian.std_floors`
    computes them from the training data); None takes ``RELATIVE_STD_FLOOR`` times the spread of
    the data these flows saw at each leaf. `prior`: Gaussian pseudo-observations. `entropy` (from
    :func:`pcdsl.learn.regularise.entropy_weights`) gives, per weight group or leaf, the weight of
    each parameter row's entropy in the M step; rows it leaves out get plain EM.
    """
    def target(name: str, counts: np.ndarray) -> np.ndarray:
        if entropy is None or name not in entropy:
            return normalise(counts, pseudocount)
        return entropy_normalise(counts, pseudocount, entropy[name])

    def moved(old: np.ndarray, counts: np.ndarray, new_rows: np.ndarray) -> np.ndarray:
        updated = (1 - step) * old + step * new_rows
        return np.where(_reached(counts.sum(axis=-1))[..., None], updated, old)

    new = Parameters({k: dict(v) for k, v in params.inputs.items()}, dict(params.weights), params.fixed)
    for group, w in params.weights.items():
        if group in flows.weights and group not in params.fixed:
            counts = _np(flows.weights[group])
            new.weights[group] = moved(w, counts, target(group, counts))
    for node, p in params.inputs.items():
        stats = {k: _np(v) for k, v in flows.inputs.get(node, {}).items()}
        if node in params.fixed:
            continue
        if "counts" in stats:
            counts, target_probs = stats["counts"], target(node, stats["counts"])
            if "p" in p:
                old = np.stack([1 - p["p"], p["p"]], axis=1)
                new.inputs[node]["p"] = moved(old, counts, target_probs)[:, 1]
            else:
                new.inputs[node]["probs"] = moved(p["probs"], counts, target_probs)
        elif "n" in stats:
            floor = _floor(min_std, node, p, stats)
            new.inputs[node].update(_gaussian(p, stats, step, floor, _prior_of(prior, node)))
    return new


def _reached(total: np.ndarray) -> np.ndarray:
    """Rows whose flow counts: more than ZERO_FLOW expected samples."""
    return np.asarray(total) > ZERO_FLOW


def _prior_of(prior: GaussianPrior | None, node: str) -> tuple[float, float, float]:
    """(strength, mean, std) of the prior for one leaf; strength 0 without one."""
    if prior is None or prior.strength == 0 or node not in prior.mean:
        return 0.0, 0.0, 1.0
    return prior.strength, float(prior.mean[node]), float(prior.std[node])


def _floor(min_std: StdFloor, node: str, p: dict[str, np.ndarray], stats: dict[str, np.ndarray]) -> float:
    if isinstance(min_std, Mapping):
        return float(min_std[node])
    if min_std is not None:
        return float(min_std)
    return RELATIVE_STD_FLOOR * pooled_std(p, stats)


def pooled_std(p: dict[str, np.ndarray], stats: dict[str, np.ndarray]) -> float:
    """The spread of the data the flows saw at a Gaussian leaf, all its units pooled (1 without data)."""
    n = stats["n"]
    total = float(n.sum())
    if total <= ZERO_FLOW:
        return 1.0
    means = p["mean"] + np.divide(stats["dx"], n, out=np.zeros_like(n, dtype=np.float64), where=n > 0)
    centre = float((n * means).sum() / total)
    shift = p["mean"] - centre  # about the pooled centre: dxx + 2 shift dx + n shift^2, all >= 0 terms
    spread = float((stats["dxx"] + 2 * shift * stats["dx"] + n * shift**2).sum() / total)
    return float(np.sqrt(spread)) if spread > 0 else 1.0


def _gaussian(p: dict[str, np.ndarray], stats: dict[str, np.ndarray], step: float, min_std: float,
              prior: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """The M step from centred statistics: with N = n + k pseudo-observations, D1 and D2 the sums
    of d and d^2 (d = x - current mean), mean += D1 / N and var = D2 / N - (D1 / N)^2, floored."""
    k, prior_mean, prior_std = prior
    n, centre = stats["n"], p["mean"]
    offset = prior_mean - centre
    total = n + k
    d1 = stats["dx"] + k * offset
    d2 = stats["dxx"] + k * (offset**2 + prior_std**2)
    seen = _reached(n)
    safe = np.where(seen, total, 1.0)
    shift = d1 / safe
    var = np.maximum(d2 / safe - shift**2, 0.0)
    mean = np.where(seen, centre + shift, centre)
    std = np.where(seen, np.sqrt(np.maximum(var, min_std**2)), p["std"])
    return {"mean": (1 - step) * p["mean"] + step * mean, "std": (1 - step) * p["std"] + step * std}


def log_prior(params: Parameters, pseudocount: float, prior: GaussianPrior | None = None) -> float:
    """The log prior EM maximises with the likelihood (up to a constant): ``(a / k) sum_c log theta_c``
    per row of sum weights and categorical/Bernoulli leaves, and the Gaussian pseudo-observations'
    ``-k log sigma - k ((mu - mean)^2 + std^2) / (2 sigma^2)``; fixed parameters add nothing."""
    total = 0.0
    with np.errstate(divide="ignore"):
        for group, w in params.weights.items():
            if group not in params.fixed and pseudocount > 0:
                total += pseudocount / w.shape[-1] * float(np.log(w).sum())
        for node, p in params.inputs.items():
            if node in params.fixed:
                continue
            if "probs" in p and pseudocount > 0:
                total += pseudocount / p["probs"].shape[-1] * float(np.log(p["probs"]).sum())
            elif "p" in p and pseudocount > 0:
                total += pseudocount / 2 * float(np.log(p["p"]).sum() + np.log1p(-p["p"]).sum())
            elif "mean" in p:
                k, mean, std = _prior_of(prior, node)
                if k > 0:
                    var = p["std"] ** 2
                    total += float((-k * np.log(p["std"]) - k * ((p["mean"] - mean) ** 2 + std**2) / (2 * var)).sum())
    return total


def objective(model: Any, params: Parameters, data: np.ndarray, pseudocount: float,
              prior: GaussianPrior | None = None) -> float:
    """What full-batch EM never lowers: the training log-likelihood plus :func:`log_prior`."""
    return float(full_batch_flows(model, data).log_likelihood) + log_prior(params, pseudocount, prior)


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
