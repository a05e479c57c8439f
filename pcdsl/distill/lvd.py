"""Latent variable distillation, stage by stage, on numpy arrays (no run directory here).

With patches x_i and their cluster assignments z_i (one per image and patch):

1. the patch circuits p(x_i | Z_i = k) are fit on the patches assigned to k: counting
   initialisation, then EM on the training circuit with z observed (cluster-conditioned EM);
2. the top level, an HCLT over Z_1..Z_m, is fit by EM on the assignments (hard evidence);
3. :func:`pcdsl.distill.compose.compose` joins both into one circuit over the pixels, whose top
   level is then trained by EM on exact soft evidence (the patch circuits frozen), and
   optionally all of it by EM on log p(x).

The LVD bound of an image is log p(z) + sum_i log p(x_i | z_i) <= log p(x) (z is one term of
the sum over all latent states that the distilled circuit computes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import pcdsl
from pcdsl.distill.compose import PatchShape, training_circuit
from pcdsl.distill.counting import counting_init
from pcdsl.ir.graph import CircuitGraph, Domain, Variable
from pcdsl.learn.train import Epoch, Stage, Trainer
from pcdsl.params import Parameters, initialise
from pcdsl.structures.chow_liu import chow_liu_edges

OnEpoch = Callable[[Epoch, Parameters], None]


@dataclass(frozen=True)
class Fit:
    """How one EM fit runs: its stages, backend options, seed and progress output."""

    stages: tuple[Stage, ...]
    backend: str = "torch"
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    progress: bool = True

    def compile(self, graph: CircuitGraph, params: Parameters) -> Any:
        return pcdsl.compile(graph, self.backend, params=params, device=self.device, dtype=self.dtype)


def patch_rows(patches: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Training rows of the patch circuits: (N * P, D + 1) values, each patch then its cluster."""
    n, p, d = patches.shape
    return np.concatenate([patches.reshape(n * p, d), z.reshape(n * p, 1)], axis=1).astype(np.float64)


def patch_shape(patches: np.ndarray, levels: Sequence[int], hidden: int, clusters: int, factorized: bool = False,
                sample: int = 20_000, seed: int = 0) -> PatchShape:
    """The patch circuits' shape: a Chow-Liu tree over pixel positions, learned from a seeded
    subsample of the (pooled) patches (n, D)."""
    d = patches.shape[1]
    if factorized or d == 1:
        return PatchShape(d, (), hidden, clusters, factorized=True)
    rng = np.random.default_rng(seed)
    rows = patches if len(patches) <= sample else patches[rng.choice(len(patches), sample, replace=False)]
    edges = chow_liu_edges(np.asarray(rows, dtype=np.int64), np.asarray(levels, dtype=np.int64))
    return PatchShape(d, tuple((int(i), int(j)) for i, j in edges), hidden, clusters)


def fit_patches(shape: PatchShape, levels: Sequence[int], train: np.ndarray, valid: np.ndarray | None, pseudocount: float,
                fit: Fit, start: Parameters | None = None, start_epoch: int = 0,
                on_epoch: OnEpoch | None = None) -> tuple[CircuitGraph, Parameters]:
    """Counting initialisation (unless resuming from `start`) and cluster-conditioned EM of the
    patch circuits on rows from :func:`patch_rows`."""
    graph = training_circuit(shape, levels)
    params = start if start is not None else counting_init(
        graph, shape, train[:, :-1], train[:, -1], levels, pseudocount, fit.seed)
    trainer = Trainer(fit.compile(graph, params), params, train, valid, fit.seed, fit.progress, on_epoch)
    return graph, trainer.run(list(fit.stages), start_epoch)


def latent_circuit(m: int, clusters: int, z: np.ndarray, hidden: int, trees: int = 1,
                   pseudocount: float = 0.1) -> CircuitGraph:
    """An HCLT over the latents Z_1..Z_m (categorical over the clusters), tree learned from z."""
    from pcdsl.structures import generate

    domain = Domain("categorical", clusters)
    graph = CircuitGraph("latents", tuple(Variable(f"z[{i}]", i, domain) for i in range(m)))
    generate("hclt", graph, np.arange(m), prefix="hclt", data=np.asarray(z, dtype=np.int64), hidden=hidden,
             trees=trees, pseudocount=pseudocount)
    return graph


def fit_latents(graph: CircuitGraph, train: np.ndarray, valid: np.ndarray | None, fit: Fit,
                start: Parameters | None = None, start_epoch: int = 0,
                on_epoch: OnEpoch | None = None) -> Parameters:
    """EM of the top level on the hard assignments."""
    params = start if start is not None else initialise(graph, fit.seed)
    trainer = Trainer(fit.compile(graph, params), params, train.astype(np.float64),
                      None if valid is None else valid.astype(np.float64), fit.seed, fit.progress, on_epoch)
    return trainer.run(list(fit.stages), start_epoch)


def patch_log_likelihoods(model: Any, rows: np.ndarray, batch: int = 8192) -> np.ndarray:
    """log p(x_i | z_i) of training-circuit rows: log p(x, z) - log p(z)."""
    out = np.empty(len(rows))
    for lo in range(0, len(rows), batch):
        chunk = rows[lo:lo + batch]
        prior = chunk.copy()
        prior[:, :-1] = -1
        out[lo:lo + batch] = np.asarray(model.log_prob(chunk), dtype=np.float64) - np.asarray(
            model.log_prob(prior), dtype=np.float64)
    return out


def lvd_bound(latent_model: Any, z: np.ndarray, patch_model: Any, rows: np.ndarray) -> np.ndarray:
    """Per image: log p(z) + sum_i log p(x_i | z_i), a lower bound on log p(x)."""
    n, m = z.shape
    top = np.concatenate([np.asarray(latent_model.log_prob(z[lo:lo + 4096].astype(np.float64)), dtype=np.float64)
                          for lo in range(0, n, 4096)])
    return top + patch_log_likelihoods(patch_model, rows).reshape(n, m).sum(axis=1)


def fit_distilled(graph: CircuitGraph, params: Parameters, train: np.ndarray, valid: np.ndarray | None, fit: Fit,
                  learn: set[str] | None = None, start_epoch: int = 0,
                  on_epoch: OnEpoch | None = None) -> Parameters:
    """EM on log p(x) of the distilled circuit. With `learn` = the top level's groups this is
    EM on exact soft evidence from the frozen patch circuits; with None, all parameters learn."""
    trainer = Trainer(fit.compile(graph, params), params, train, valid, fit.seed, fit.progress, on_epoch)
    trainer.learn = learn
    return trainer.run(list(fit.stages), start_epoch)
