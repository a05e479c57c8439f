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
from pcdsl.distill.compose import PatchFamily, PatchShape, block_family, training_circuit
from pcdsl.distill.counting import counting_init
from pcdsl.distill.grown import keep_zeros
from pcdsl.ir.graph import CircuitGraph, Domain, Variable
from pcdsl.learn.parallel import SOLO, Group
from pcdsl.learn.train import Snapshot, Stage, Trainer
from pcdsl.params import Parameters, initialise
from pcdsl.structures.chow_liu import chow_liu_edges


@dataclass(frozen=True)
class Resume:
    """Where an interrupted fit continues (a :class:`pcdsl.learn.train.Snapshot` of it; None:
    from the start), and what to do with the trainer before it runs (e.g. attach a
    :class:`pcdsl.learn.checkpoint.Checkpointer`)."""

    snapshot: Snapshot | None = None
    attach: Callable[[Trainer], None] | None = None
    group: Group = SOLO  # data-parallel workers of the fit


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


def train(graph: CircuitGraph, params: Parameters, train: np.ndarray, valid: np.ndarray | None, fit: Fit,
          resume: Resume = Resume(), learn: set[str] | None = None, model: Any = None) -> Parameters:
    """EM stages on a circuit (only the groups in `learn` when given), resumable from any
    snapshot with the same result as an uninterrupted fit; `model`: what runs the circuit, when
    not the circuit compiled by `fit` (e.g. :class:`pcdsl.distill.soft.EvidenceModel`)."""
    if model is None:
        model = fit.compile(graph, params)
    trainer = Trainer(model, params, train, valid, fit.seed, fit.progress, group=resume.group)
    trainer.per_epoch_rng, trainer.learn = True, learn
    trainer.constrain = keep_zeros(params)  # pruned edges (progressive growing) stay pruned
    if resume.attach is not None:
        resume.attach(trainer)
    return trainer.run(list(fit.stages), resume=resume.snapshot)


def fit_patches(shape: PatchShape, levels: Sequence[int], rows: np.ndarray, valid: np.ndarray | None,
                pseudocount: float, fit: Fit, resume: Resume = Resume()) -> tuple[CircuitGraph, Parameters]:
    """Counting initialisation and cluster-conditioned EM of the patch circuits on rows from
    :func:`patch_rows`."""
    family = block_family(shape, levels)
    graph = training_circuit(family)
    params = counting_init(graph, shape, rows[:, :-1], rows[:, -1], levels, pseudocount, fit.seed)
    return graph, fit_family(family, params, rows, valid, fit, resume)


def fit_family(family: PatchFamily, start: Parameters, rows: np.ndarray, valid: np.ndarray | None, fit: Fit,
               resume: Resume = Resume()) -> Parameters:
    """Cluster-conditioned EM of any patch family (e.g. a grown one) from `start`."""
    return train(training_circuit(family), start, rows, valid, fit, resume)


def latent_circuit(m: int, clusters: int, z: np.ndarray, hidden: int, trees: int = 1,
                   pseudocount: float = 0.1) -> CircuitGraph:
    """An HCLT over the latents Z_1..Z_m (categorical over the clusters), tree learned from z."""
    from pcdsl.structures import generate

    domain = Domain("categorical", clusters)
    graph = CircuitGraph("latents", tuple(Variable(f"z[{i}]", i, domain) for i in range(m)))
    # bins = clusters: the mutual information sees every cluster (binning would merge them)
    generate("hclt", graph, np.arange(m), prefix="hclt", data=np.asarray(z, dtype=np.int64), hidden=hidden,
             trees=trees, pseudocount=pseudocount, bins=max(2, clusters))
    return graph


def fit_latents(graph: CircuitGraph, z: np.ndarray, valid: np.ndarray | None, fit: Fit,
                resume: Resume = Resume()) -> Parameters:
    """EM of the top level on the hard assignments."""
    return train(graph, initialise(graph, fit.seed), z.astype(np.float64),
                 None if valid is None else valid.astype(np.float64), fit, resume)


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


def lvd_bound(latent_model: Any, z: np.ndarray, patch_models: Sequence[Any], patches: np.ndarray) -> np.ndarray:
    """Per image: log p(z) + sum_i log p(x_i | z_i), a lower bound on log p(x); `patch_models`
    are training circuits, one for every position or one for all, `patches` (N, P, D)."""
    n, m = z.shape
    total = np.concatenate([np.asarray(latent_model.log_prob(z[lo:lo + 4096].astype(np.float64)), dtype=np.float64)
                            for lo in range(0, n, 4096)])
    for i in range(m):
        model = patch_models[i if len(patch_models) > 1 else 0]
        total += patch_log_likelihoods(model, patch_rows(patches[:, i:i + 1], z[:, i:i + 1]))
    return total


def fit_distilled(graph: CircuitGraph, params: Parameters, images: np.ndarray, valid: np.ndarray | None, fit: Fit,
                  learn: set[str] | None = None, resume: Resume = Resume()) -> Parameters:
    """EM on log p(x) of the distilled circuit. With `learn` = the top level's groups this is
    EM on exact soft evidence from the frozen patch circuits; with None, all parameters learn."""
    return train(graph, params, images, valid, fit, resume, learn)
