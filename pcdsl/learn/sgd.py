"""Gradient ascent on log-parameters (SGD or Adam), from the same flows as EM.

With weights w = softmax(theta), the gradient of the batch log-likelihood is
``dLL/dtheta_c = F_c - w_c * sum(F)`` (F the flows), so no autograd graph is
needed: every backend that computes flows can train this way. Categorical and
Bernoulli leaves are softmax-parameterised the same way; Gaussian leaves use
mean and log-std: ``dLL/dmean = (sx - mean n) / var``,
``dLL/dlog std = (sxx - 2 mean sx + mean^2 n) / var - n``.
"""

from __future__ import annotations

import numpy as np

from pcdsl.learn.em import _np
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
                 eps: float = 1e-8):
        self.kind, self.betas, self.eps = kind, betas, eps
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
                n, sx, sxx = (_np(stats[k]) for k in ("n", "sx", "sxx"))
                mean, var = params.inputs[node]["mean"], params.inputs[node]["std"] ** 2
                grads[f"m/{node}"] = (sx - mean * n) / var / rows
                grads[f"s/{node}"] = ((sxx - 2 * mean * sx + mean**2 * n) / var - n) / rows
        return grads

    def step(self, params: Parameters, flows: Flows, rows: int, lr: float) -> Parameters:
        """One ascent step on the mean log-likelihood of a batch of `rows` samples."""
        self.t += 1
        for key, g in self._gradients(params, flows, rows).items():
            self.theta[key] = self.theta[key] + lr * self._direction(key, g)
        return self._to_params(params)

    def _direction(self, key: str, g: np.ndarray) -> np.ndarray:
        if self.kind == "sgd":
            return g
        b1, b2 = self.betas
        m, v = self.moments.get(key, (np.zeros_like(g), np.zeros_like(g)))
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        self.moments[key] = (m, v)
        return (m / (1 - b1**self.t)) / (np.sqrt(v / (1 - b2**self.t)) + self.eps)

    def _to_params(self, old: Parameters) -> Parameters:
        new = Parameters({k: dict(v) for k, v in old.inputs.items()}, dict(old.weights))
        for group in new.weights:
            new.weights[group] = _softmax(self.theta[f"w/{group}"])
        for node, p in new.inputs.items():
            if "probs" in p:
                p["probs"] = _softmax(self.theta[f"c/{node}"])
            elif "p" in p:
                p["p"] = _softmax(self.theta[f"c/{node}"])[:, 1]
            elif "mean" in p:
                p["mean"], p["std"] = self.theta[f"m/{node}"].copy(), np.exp(self.theta[f"s/{node}"])
        return new

