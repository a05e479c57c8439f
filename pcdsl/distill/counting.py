"""LVD's counting initialisation: with the latents observed, fit what they determine by counting.

For the patch heads, pixel j of cluster k's circuit starts from the histogram of pixel j over
the patches assigned to k, smoothed by a pseudocount a:

    theta_k,j(v) = (N_k,j(v) + a / L_j) / (N_k + a)          (L_j levels of pixel j)

Each of the cluster's h hidden units then gets this table times multiplicative noise
``1 - p + 2p U(0, 1)`` (renormalised): identical units would stay identical under EM forever.
With p = 0 the leaves are exactly the smoothed counts. A cluster with no patches (and a = 0)
starts uniform.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pcdsl.distill.compose import PatchShape
from pcdsl.ir.graph import CircuitGraph, NodeKind
from pcdsl.params import Parameters, initialise, input_group


def cluster_counts(patches: np.ndarray, z: np.ndarray, clusters: int, levels: int) -> np.ndarray:
    """(clusters, D, levels) counts: how often pixel j of a patch assigned to k takes value v
    (`levels`: the most values of any pixel)."""
    patches = np.asarray(patches, dtype=np.int64)
    d = patches.shape[1]
    flat = (np.asarray(z, dtype=np.int64)[:, None] * d + np.arange(d)[None, :]) * levels + patches
    return np.bincount(flat.reshape(-1), minlength=clusters * d * levels).reshape(clusters, d, levels).astype(
        np.float64)


def cluster_bits(patches: np.ndarray, z: np.ndarray, clusters: int, levels: Sequence[int],
                 pseudocount: float = 0.1) -> np.ndarray:
    """(clusters,) total negative log-likelihood (nats) of each cluster's patches under its
    smoothed per-pixel histograms (the counting initialisation without hidden units): how much
    there is to model in each cluster. A cluster of blank patches holds many patches but few bits."""
    top = max(int(v) for v in levels)
    counts = cluster_counts(patches, z, clusters, top)
    sizes = np.asarray(levels, dtype=np.float64)[None, :, None]
    inside = np.arange(top)[None, None, :] < sizes  # values a pixel can take
    total = counts.sum(axis=2, keepdims=True) + pseudocount
    probs = np.where(inside, (counts + pseudocount / sizes) / np.where(total > 0, total, 1.0), 1.0)
    return -(counts * np.log(np.where(counts > 0, probs, 1.0))).sum(axis=(1, 2))


def counting_init(graph: CircuitGraph, shape: PatchShape, patches: np.ndarray, z: np.ndarray,
                  levels: Sequence[int], pseudocount: float, seed: int = 0, perturbation: float = 0.5) -> Parameters:
    """Parameters of a training circuit (:func:`pcdsl.distill.compose.training_circuit`): leaves
    from smoothed per-cluster counts (perturbed per hidden unit), sums from :func:`initialise`."""
    params = initialise(graph, seed)
    counts = cluster_counts(patches, z, shape.clusters, max(levels))
    rng = np.random.default_rng(seed + 1)
    for node in graph.nodes():
        if node.kind is not NodeKind.INPUT or node.family != "categorical":
            continue
        assert node.var is not None
        size = int(levels[node.var])
        c = counts[:, node.var, :size]
        total = c.sum(axis=1, keepdims=True) + pseudocount
        # a cluster with no patches and no pseudocount has nothing to count: uniform
        probs = np.where(total > 0, (c + pseudocount / size) / np.where(total > 0, total, 1.0), 1.0 / size)
        table = np.repeat(probs, node.num_units // shape.clusters, axis=0)
        noise = 1.0 - perturbation + 2.0 * perturbation * rng.random(table.shape)
        table = table * noise
        params.inputs[input_group(node)] = {"probs": table / table.sum(axis=1, keepdims=True)}
    # the prior over clusters: their frequencies (a convenience; the distilled circuit does not use it)
    freq = np.bincount(np.asarray(z, dtype=np.int64), minlength=shape.clusters) + pseudocount
    params.weights["root"] = (freq / freq.sum())[None, :]
    return params
