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

    def state(self) -> tuple[dict[str, np.ndarray], int]:
        """What a resumed run needs to take the same steps: theta (which the parameters do not
        determine: softmax forgets shifts), Adam's moments (``m/KEY``, ``v/KEY``) and the step count."""
        arrays = {f"theta/{k}": v for k, v in self.theta.items()}
        for key, (m, v) in self.moments.items():
            arrays[f"m/{key}"], arrays[f"v/{key}"] = m, v
        return arrays, self.t

    def load_state(self, arrays: dict[str, np.ndarray], t: int) -> None:
        """Continue from :meth:`state`'s output."""
        self.theta = {k.partition("/")[2]: v for k, v in arrays.items() if k.startswith("theta/")}
        self.moments = {k.partition("/")[2]: (v, arrays["v/" + k.partition("/")[2]])
                        for k, v in arrays.items() if k.startswith("m/")}
        self.t = t

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
        moved: dict[str, np.ndarray] = {}  # rows whose parameters this step changes
        for key, g in self._gradients(params, flows, rows).items():
            reached = reach[key]
            if key.partition("/")[2] in params.fixed or not reached.any():
                continue
            stepped = self.theta[key] + lr * self._direction(key, g, reached)
            mask = reached.reshape(reached.shape + (1,) * (g.ndim - 1))
            self.theta[key] = np.where(mask, stepped, self.theta[key])
            moved[key] = reached
        self._floor(params, moved)
        return self._to_params(params, moved)

    def _floor(self, params: Parameters, moved: dict[str, np.ndarray]) -> None:
        """Keep log std at or above log of the floor."""
        if self.min_std is None:
            return
        for node, p in params.inputs.items():
            key = f"s/{node}"
            if "mean" in p and node not in params.fixed:
                floor = self.min_std[node] if isinstance(self.min_std, Mapping) else self.min_std
                low = self.theta[key] < np.log(floor)
                self.theta[key] = np.where(low, np.log(floor), self.theta[key])
                moved[key] = moved.get(key, np.zeros_like(low)) | low

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

    def _to_params(self, old: Parameters, moved: dict[str, np.ndarray] | None = None) -> Parameters:
        """New parameters from theta, row by row where `moved` says so (others stay bit for bit;
        None: every row of every array not fixed)."""
        def rows(key: str, current: np.ndarray, value: np.ndarray) -> np.ndarray:
            if moved is None:
                return current if key.partition("/")[2] in old.fixed else value
            if key not in moved:
                return current
            mask = moved[key].reshape(moved[key].shape + (1,) * (value.ndim - 1))
            return np.where(mask, value, current)

        new = Parameters({k: dict(v) for k, v in old.inputs.items()}, dict(old.weights), old.fixed)
        for group, w in old.weights.items():
            new.weights[group] = rows(f"w/{group}", w, _softmax(self.theta[f"w/{group}"]))
        for node, p in new.inputs.items():
            if "probs" in p:
                p["probs"] = rows(f"c/{node}", p["probs"], _softmax(self.theta[f"c/{node}"]))
            elif "p" in p:
                p["p"] = rows(f"c/{node}", p["p"], _softmax(self.theta[f"c/{node}"])[:, 1])
            elif "mean" in p:
                p["mean"] = rows(f"m/{node}", p["mean"], self.theta[f"m/{node}"])
                p["std"] = rows(f"s/{node}", p["std"], np.exp(self.theta[f"s/{node}"]))
        return new

