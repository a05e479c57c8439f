"""Gaussian leaves and the training data: the std floor, the prior, the start.

- :func:`std_floors`: the floor of each Gaussian leaf's std, ``min_std`` when given, else
  ``RELATIVE_STD_FLOOR`` (1e-3) times the std of its variable in the training data, so the floor
  scales with the data (a fixed 0.01 would dominate data whose spread is 0.001).
- :func:`gaussian_prior`: ``k`` pseudo-observations per unit spread as the variable's data
  (mean and std), the Gaussian counterpart of the categorical pseudocount.
- :func:`from_data`: Gaussian leaves whose parameters the file leaves out start at the means and
  stds of a 1-D k-means split of (a subsample of) their variable's data, rather than at N(0, 1).
- :func:`project`: stds below their floor raised to it, so EM starts inside the set where it is
  monotone.

Leaves are keyed as in ``Parameters.inputs`` (:func:`leaf_key`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pcdsl.ir.graph import CircuitGraph, Node, NodeKind
from pcdsl.learn.em import GaussianPrior
from pcdsl.numerics import RELATIVE_STD_FLOOR
from pcdsl.params import Parameters, input_group
from pcdsl.plan import InputLayer, LayeredPlan

SUBSAMPLE = 10_000  # values per leaf that the k-means start looks at
KMEANS_STEPS = 10


def leaf_key(node: Node) -> str:
    """The key of a leaf's parameters in ``Parameters.inputs`` (a tied leaf's group)."""
    return input_group(node)


def leaf_variables(plan: LayeredPlan) -> dict[str, int]:
    """The variable of every Gaussian leaf of a plan, by parameter key."""
    out: dict[str, int] = {}
    for layer in plan.layers:
        if isinstance(layer, InputLayer) and layer.family == "gaussian":
            offset = 0
            for name, units in zip(layer.nodes, layer.node_units, strict=True):
                out[name] = int(layer.var[offset])
                offset += units
    return out


def _observed(data: np.ndarray, var: int) -> np.ndarray:
    column = np.asarray(data[:, var], dtype=np.float64)
    return column[np.isfinite(column)]


def data_scale(values: np.ndarray) -> tuple[float, float]:
    """(mean, std) of observed values: (0, 1) without any, std 1 when they do not vary."""
    if values.size == 0:
        return 0.0, 1.0
    mean = float(values.mean())
    std = float(np.sqrt(np.mean((values - mean) ** 2)))  # two passes: no cancellation
    return mean, std if std > 0 else 1.0


def std_floors(plan: LayeredPlan, data: np.ndarray, min_std: float | None = None,
               relative: float = RELATIVE_STD_FLOOR) -> dict[str, float]:
    """The std floor of every Gaussian leaf: `min_std`, or `relative` times its variable's data std."""
    if min_std is not None:
        if not min_std > 0:
            raise ValueError(f"min_std must be positive, got {min_std}")
        return dict.fromkeys(leaf_variables(plan), float(min_std))
    scales = {v: data_scale(_observed(data, v))[1] for v in set(leaf_variables(plan).values())}
    return {key: relative * scales[v] for key, v in leaf_variables(plan).items()}


def gaussian_prior(plan: LayeredPlan, data: np.ndarray, strength: float) -> GaussianPrior | None:
    """`strength` pseudo-observations per Gaussian unit at its variable's data mean and std (None at 0)."""
    if strength < 0:
        raise ValueError(f"the Gaussian pseudocount must be >= 0, got {strength}")
    if strength == 0:
        return None
    leaves = leaf_variables(plan)
    scales = {v: data_scale(_observed(data, v)) for v in set(leaves.values())}
    return GaussianPrior(strength, {k: scales[v][0] for k, v in leaves.items()},
                         {k: scales[v][1] for k, v in leaves.items()})


def project(params: Parameters, floors: Mapping[str, float]) -> Parameters:
    """The parameters with every (learned) Gaussian std raised to at least its floor (`params`
    itself when none is below)."""
    inputs = dict(params.inputs)
    low = [k for k, floor in floors.items() if k in inputs and "std" in inputs[k] and k not in params.fixed
           and (inputs[k]["std"] < floor).any()]
    for key in low:
        inputs[key] = {**inputs[key], "std": np.maximum(inputs[key]["std"], floors[key])}
    return Parameters(inputs, params.weights, params.fixed) if low else params


def from_data(graph: CircuitGraph, params: Parameters, data: np.ndarray, seed: int = 0) -> Parameters:
    """Gaussian leaves the file leaves out start from their variable's data: each unit the mean and
    std of one cluster of a 1-D k-means split of a random subsample (other parameters unchanged)."""
    rng = np.random.default_rng(seed)
    inputs = dict(params.inputs)
    for node in graph.nodes():
        if node.kind is not NodeKind.INPUT or node.family != "gaussian" or node.params is not None:
            continue
        key = leaf_key(node)
        assert node.var is not None
        values = _observed(data, node.var)
        if values.size == 0 or key in params.fixed:
            continue
        sample = rng.choice(values, size=min(values.size, SUBSAMPLE), replace=values.size > SUBSAMPLE)
        floor = RELATIVE_STD_FLOOR * data_scale(values)[1]
        inputs[key] = _kmeans_1d(np.sort(sample), node.num_units, floor)
    return Parameters(inputs, params.weights, params.fixed)


def _kmeans_1d(values: np.ndarray, k: int, floor: float) -> dict[str, np.ndarray]:
    """Means and stds of k clusters of sorted values: quantile chunks, then Lloyd steps."""
    chunks = np.array_split(values, k)
    centres = np.array([c.mean() if c.size else values.mean() for c in chunks])
    for _ in range(KMEANS_STEPS):
        order = np.argsort(centres, kind="stable")
        centres = centres[order]
        cuts = np.searchsorted(values, (centres[1:] + centres[:-1]) / 2)
        parts = np.split(values, cuts)
        centres = np.array([p.mean() if p.size else c for p, c in zip(parts, centres, strict=True)])
    cuts = np.searchsorted(values, (centres[1:] + centres[:-1]) / 2)
    spread = data_scale(values)[1] / k  # a cluster too small to measure gets a share of the whole
    stds = np.array([np.sqrt(np.mean((p - p.mean()) ** 2)) if p.size > 1 else spread
                     for p in np.split(values, cuts)])
    return {"mean": centres, "std": np.maximum(stds, max(floor, np.finfo(np.float64).tiny))}
