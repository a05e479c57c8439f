"""Gradient ascent on log-parameters (SGD or Adam), from the same flows as EM.

With weights w = softmax(theta), the gradient of the batch log-likelihood is
``dLL/dtheta_c = F_c - w_c * sum(F)`` (F the flows), so no autograd graph is
needed: every backend that computes flows can train this way. Categorical and
Bernoulli leaves are softmax-parameterised the same way; Gaussian leaves use
mean and log-std, from statistics centred on the current mean:
``dLL/dmean = dx / var``, ``dLL/dlog std = dxx / var - n``.

As in EM (docs/numerics.md): parameters in ``params.fixed`` are never changed, a
row whose flow in the batch is at most ``ZERO_FLOW`` is left as it is (not even
moved by Adam's momentum), and Gaussian stds are kept at or above their floor.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pcdsl.learn.em import StdFloor, _np
from pcdsl.numerics import ZERO_FLOW
from pcdsl.params import Parameters
from pcdsl.reference import Flows


def _logits(probs: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.maximum(probs, 1e-300))


def _softmax(theta: np.ndarray) -> np.ndarray:
    e = np.exp(theta - theta.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Optimizer:
    """SGD or Adam over every learnable parameter; `step` returns new Parameters."""

    def __init__(self, params: Parameters, kind: str = "adam", betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, min_std: StdFloor = None):
        self.kind, self.betas, self.eps = kind, betas, eps
        self.min_std = min_std  # None: no floor beyond what exp(log std) gives
        self.theta = self._to_theta(params)
        self.moments: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.t = 0

    @staticmethod
    def _to_theta(params: Parameters) -> dict[str, np.ndarray]:
        theta = {f"w/{g}": _logits(w) for g, w in params.weights.items()}
        for node, p in params.inputs.items():
            if "probs" in p:
                theta[f"c/{node}"] = _logits(p["probs"])
            elif "p" in p:
                theta[f"c/{node}"] = _logits(np.stack([1 - p["p"], p["p"]], axis=1))
            elif "mean" in p:
                theta[f"m/{node}"] = np.array(p["mean"], dtype=np.float64)
                theta[f"s/{node}"] = np.log(p["std"])
        return theta

    def _gradients(self, params: Parameters, flows: Flows, rows: int) -> dict[str, np.ndarray]:
        grads = {}
        for group, f in flows.weights.items():
            f = _np(f)
            grads[f"w/{group}"] = (f - params.weights[group] * f.sum(axis=1, keepdims=True)) / rows
        for node, stats in flows.inputs.items():
            if "counts" in stats:
                counts = _np(stats["counts"])
                probs = _softmax(self.theta[f"c/{node}"])
                grads[f"c/{node}"] = (counts - probs * counts.sum(axis=1, keepdims=True)) / rows
            elif "n" in stats:
                n, dx, dxx = (_np(stats[k]) for k in ("n", "dx", "dxx"))
                var = params.inputs[node]["std"] ** 2
                grads[f"m/{node}"] = dx / var / rows
                grads[f"s/{node}"] = (dxx / var - n) / rows
        return grads

    @staticmethod
    def _reached(flows: Flows) -> dict[str, np.ndarray]:
        """Per parameter array, the rows whose flow in the batch is more than ZERO_FLOW."""
        out = {f"w/{group}": _np(f).sum(axis=1) > ZERO_FLOW for group, f in flows.weights.items()}
        for node, stats in flows.inputs.items():
            if "counts" in stats:
                out[f"c/{node}"] = _np(stats["counts"]).sum(axis=1) > ZERO_FLOW
            elif "n" in stats:
                out[f"m/{node}"] = out[f"s/{node}"] = _np(stats["n"]) > ZERO_FLOW
        return out

    def step(self, params: Parameters, flows: Flows, rows: int, lr: float) -> Parameters:
        """One ascent step on the mean log-likelihood of a batch of `rows` samples."""
        self.t += 1
        reach = self._reached(flows)
        for key, g in self._gradients(params, flows, rows).items():
            reached = reach[key]
            if key.partition("/")[2] in params.fixed or not reached.any():
                continue
            moved = self.theta[key] + lr * self._direction(key, g, reached)
            mask = reached.reshape(reached.shape + (1,) * (g.ndim - 1))
            self.theta[key] = np.where(mask, moved, self.theta[key])
        self._floor(params)
        return self._to_params(params)

    def _floor(self, params: Parameters) -> None:
        """Keep log std at or above log of the floor."""
        if self.min_std is None:
            return
        for node, p in params.inputs.items():
            if "mean" in p and node not in params.fixed:
                floor = self.min_std[node] if isinstance(self.min_std, Mapping) else self.min_std
                self.theta[f"s/{node}"] = np.maximum(self.theta[f"s/{node}"], np.log(floor))

    def _direction(self, key: str, g: np.ndarray, reached: np.ndarray) -> np.ndarray:
        if self.kind == "sgd":
            return g
        b1, b2 = self.betas
        m0, v0 = self.moments.get(key, (np.zeros_like(g), np.zeros_like(g)))
        m, v = b1 * m0 + (1 - b1) * g, b2 * v0 + (1 - b2) * g * g
        mask = reached.reshape(reached.shape + (1,) * (g.ndim - 1))  # unreached rows keep their moments
        m, v = np.where(mask, m, m0), np.where(mask, v, v0)
        self.moments[key] = (m, v)
        return (m / (1 - b1**self.t)) / (np.sqrt(v / (1 - b2**self.t)) + self.eps)

    def _to_params(self, old: Parameters) -> Parameters:
        new = Parameters({k: dict(v) for k, v in old.inputs.items()}, dict(old.weights), old.fixed)
        for group in new.weights:
            if group not in old.fixed:
                new.weights[group] = _softmax(self.theta[f"w/{group}"])
        for node, p in new.inputs.items():
            if node in old.fixed:
                continue
            if "probs" in p:
                p["probs"] = _softmax(self.theta[f"c/{node}"])
            elif "p" in p:
                p["p"] = _softmax(self.theta[f"c/{node}"])[:, 1]
            elif "mean" in p:
                p["mean"], p["std"] = self.theta[f"m/{node}"].copy(), np.exp(self.theta[f"s/{node}"])
        return new

