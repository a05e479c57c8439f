"""Progressive growing of the patch circuits (LVD-PG; Liu et al., ICML 2023).

Each global cluster g (k-means on teacher features) gets its own HCLT over the patch's pixels
whose root latent feeds a sum group ``g{g}/heads`` of S_g units, one head per sub-cluster (the
heads share every region below). Starting from one head, each global cluster loops:

1. cluster-conditioned EM on its own patches (each patch scored only by its own head);
2. prune: per sum unit, edges carrying less than `threshold` of the unit's flow get weight 0
   (the unit's best edge always stays); later EM keeps those zeros;
3. reassign each patch to its best head, moving only when the gain exceeds `margin` nats;
4. split the worst-fitting sub-clusters (lowest mean log-likelihood) that together hold more
   than `cover` of the patches in two, by 2-means on their features started from the old
   centroid and a perturbed copy; the new head starts as a noisy copy of the old one;
5. grow: duplicate the highest-flow states of every latent variable, each copy's rows times
   ``1 - noise + 2 noise U(0, 1)``; with noise = 0 the distribution is exactly unchanged;

until it has its share of the `heads` target (and at least `rounds` rounds). The target is shared
out in proportion to each global cluster's bits (the negative log-likelihood of its patches under
its own per-pixel histograms), not its patch count: a cluster of blank background patches, often
the largest, has little to model. A global cluster larger than `sample` patches runs the loop on
a seeded sample of that size, and its other patches take their best head at the end. The structure is
validated after every prune and grow. Global clusters are independent: with ``workers > 1`` they
run in parallel processes, with the same results as inline; with a cache folder each finished
cluster is written there at once, so a stopped run grows only the clusters it had not finished.
"""

from __future__ import annotations

import heapq
import json
import math
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pcdsl.distill.compose import PatchFamily, PatchShape, training_circuit
from pcdsl.distill.counting import cluster_bits, counting_init
from pcdsl.distill.grown import (
    ClusterCircuit,
    LatentTree,
    check,
    duplicate_states,
    grown_family,
    keep_zeros,
    multiplicative_noise,
    nonzero_parameters,
    own_parameters,
    prune,
    states_to_grow,
    training_parameters,
)
from pcdsl.distill.latents import LatentError, assign, kmeans
from pcdsl.distill.lvd import Fit
from pcdsl.io.atomic import write_atomic, write_json
from pcdsl.io.model import load_model, save_model
from pcdsl.ir.graph import CircuitGraph
from pcdsl.learn.em import full_batch_flows
from pcdsl.learn.train import Trainer
from pcdsl.params import Parameters, initialise


@dataclass(frozen=True)
class Growing:
    """Settings of progressive growing (see the module docstring for what each step does)."""

    heads: int  # target number of heads over all global clusters (>= the number of clusters)
    rounds: int = 1  # at least this many rounds of EM, prune and reassignment per global cluster
    noise: float = 0.1  # multiplicative noise of grown and split copies
    grow: float = 0.25  # fraction of each latent variable's states duplicated per growing step
    max_hidden: int | None = None  # no latent variable grows past this many states
    threshold: float = 0.01  # prune edges with less than this share of their unit's flow
    margin: float = 1.0  # nats a patch must gain to move to another head
    cover: float = 0.4  # split the worst sub-clusters holding more than this share of the patches
    sample: int | None = 100_000  # patches of a global cluster the loop runs on (None: all); the rest take
    # their best head at the end
    pseudocount: float = 0.1  # counting initialisation of each cluster's circuit
    iterations: int = 50  # of each 2-means split
    seed: int = 0
    workers: int = 1  # parallel processes over global clusters (1: inline)


@dataclass(frozen=True)
class RoundStats:
    """One round: heads after it, patches moved, mean log p(x | own head) after reassignment,
    sub-clusters split, non-zero parameters after it."""

    heads: int
    moved: int
    mean_ll: float
    split: int
    parameters: int


def reassign(ll: np.ndarray, sub: np.ndarray, margin: float) -> tuple[np.ndarray, int]:
    """Each row's best column of `ll` (n, S) where it beats the current one by more than
    `margin`; returns the new assignment and how many moved."""
    rows = np.arange(len(ll))
    best = ll.argmax(axis=1)
    move = ll[rows, best] - ll[rows, sub] > margin
    return np.where(move, best, sub).astype(np.int64), int(move.sum())


def worst_subclusters(own: np.ndarray, sub: np.ndarray, heads: int, cover: float, budget: int) -> list[int]:
    """The sub-clusters with the lowest mean log-likelihood (`own`: each patch's under its own
    head), worst first, until they hold more than `cover` of the patches; at most `budget`.
    Sub-clusters of fewer than two patches cannot split and are passed over."""
    counts = np.bincount(sub, minlength=heads)
    means = np.bincount(sub, weights=own, minlength=heads) / np.maximum(counts, 1)
    chosen: list[int] = []
    covered = 0
    for s in np.argsort(means, kind="stable"):
        if covered > cover * len(sub) or len(chosen) >= budget:
            break
        if counts[s] >= 2:
            chosen.append(int(s))
            covered += int(counts[s])
    return chosen


def split_side(features: np.ndarray, rng: np.random.Generator, iterations: int) -> np.ndarray:
    """Which patches of a sub-cluster go to its new half: 2-means from the centroid and a copy
    perturbed by a tenth of each feature's spread (a random half when the features cannot split)."""
    x = np.asarray(features, dtype=np.float64)
    centre = x.mean(axis=0)
    init = np.stack([centre, centre + 0.1 * x.std(axis=0) * rng.standard_normal(x.shape[1])])
    seed = int(rng.integers(2**31))
    try:
        side = assign(x, kmeans(x, 2, seed, iterations, init, sample=None)) == 1
    except LatentError:  # fewer than two distinct features
        side = np.zeros(len(x), dtype=bool)
    if side.all() or not side.any():
        side = np.zeros(len(x), dtype=bool)
        side[rng.permutation(len(x))[:len(x) // 2]] = True
    return side


def split(circuit: ClusterCircuit, params: Parameters, sub: np.ndarray, features: np.ndarray,
          chosen: Sequence[int], noise: float, rng: np.random.Generator,
          iterations: int = 50) -> tuple[ClusterCircuit, Parameters, np.ndarray]:
    """Split each chosen sub-cluster in two (:func:`split_side`); the new half gets a new head, a
    noisy copy of the old head's row."""
    sub = sub.copy()
    heads = params.weights[circuit.head_group]
    for s in chosen:
        members = np.flatnonzero(sub == s)
        sub[members[split_side(features[members], rng, iterations)]] = len(heads)
        row = heads[s] * (multiplicative_noise(rng, heads[s].shape, noise) if noise > 0 else 1.0)
        heads = np.concatenate([heads, (row / row.sum())[None]])
    weights = dict(params.weights)
    weights[circuit.head_group] = heads
    return replace(circuit, heads=len(heads)), Parameters(params.inputs, weights), sub


# --- one global cluster --------------------------------------------------------------------------

def _rows(patches: np.ndarray, sub: np.ndarray) -> np.ndarray:
    return np.concatenate([patches, sub[:, None]], axis=1).astype(np.float64)


def head_log_likelihoods(model: Any, circuit: ClusterCircuit, params: Parameters, patches: np.ndarray,
                         batch: int = 8192) -> np.ndarray:
    """(n, S) log p_s(x) of every patch under every head, on a compiled training circuit."""
    model.set_parameters(training_parameters(circuit, params))
    out = np.empty((len(patches), circuit.heads))
    for s in range(circuit.heads):
        rows = _rows(patches, np.full(len(patches), s))
        for lo in range(0, len(rows), batch):  # log p(x, z = s) = log p_s(x) - log S
            out[lo:lo + batch, s] = np.asarray(model.log_prob(rows[lo:lo + batch]), dtype=np.float64)
    return out + math.log(circuit.heads)


def cluster_em(circuit: ClusterCircuit, params: Parameters, patches: np.ndarray, sub: np.ndarray, levels: Sequence[int],
               fit: Fit) -> tuple[Any, Parameters]:
    """Cluster-conditioned EM (pruned weights stay 0); returns the compiled training circuit
    (holding the result) and the circuit's trained parameters."""
    graph = training_circuit(circuit.family(levels))
    start = training_parameters(circuit, params)
    trainer = Trainer(fit.compile(graph, start), start, _rows(patches, sub), None, fit.seed, fit.progress)
    trainer.per_epoch_rng, trainer.constrain = True, keep_zeros(params)
    return trainer.model, own_parameters(trainer.run(list(fit.stages)), circuit.prefix)


@dataclass(frozen=True)
class _Task:
    cluster: int
    patches: np.ndarray
    features: np.ndarray
    tree: LatentTree
    hidden: int
    levels: tuple[int, ...]
    target: int
    fit: Fit
    settings: Growing


@dataclass(frozen=True)
class _Result:
    circuit: ClusterCircuit
    params: Parameters
    sub: np.ndarray
    stats: tuple[RoundStats, ...]


def _initial(task: _Task, circuit: ClusterCircuit, seed: int) -> Parameters:
    """Counting initialisation of the one-head circuit (random where the cluster has no patches)."""
    graph = training_circuit(circuit.family(task.levels))
    if len(task.patches) == 0:
        return own_parameters(initialise(graph, seed), circuit.prefix)
    shape = PatchShape(len(task.levels), (), task.hidden, clusters=1)
    return own_parameters(counting_init(graph, shape, task.patches, np.zeros(len(task.patches), np.int64), task.levels,
                              task.settings.pseudocount, seed), circuit.prefix)


def _checked(circuit: ClusterCircuit, params: Parameters, levels: Sequence[int]) -> None:
    check(training_circuit(circuit.family(levels)), training_parameters(circuit, params))


def grow_cluster(task: _Task) -> _Result:
    """Progressive growing of one global cluster (the module docstring's loop)."""
    s, levels, patches, features = task.settings, task.levels, task.patches, task.features
    rng = np.random.default_rng([s.seed, task.cluster])
    rest = np.zeros(len(patches), dtype=bool)  # patches outside the loop's sample
    if s.sample is not None and len(patches) > s.sample:
        rest[:] = True
        rest[np.random.default_rng([s.seed, task.cluster, 1]).choice(len(patches), s.sample, replace=False)] = False
        patches, features = patches[~rest], features[~rest]
    circuit = ClusterCircuit(task.tree, (task.hidden,) * len(task.tree.order), 1, f"g{task.cluster}")
    params = _initial(task, circuit, int(rng.integers(2**31)))
    sub = np.zeros(len(patches), dtype=np.int64)
    stats: list[RoundStats] = []
    while len(patches):
        fit = replace(task.fit, seed=int(rng.integers(2**31)))
        model, params = cluster_em(circuit, params, patches, sub, levels, fit)
        params = prune(params, full_batch_flows(model, _rows(patches, sub)), circuit.sums(), s.threshold)
        _checked(circuit, params, levels)
        ll = head_log_likelihoods(model, circuit, params, patches)
        sub, moved = reassign(ll, sub, s.margin)
        own = ll[np.arange(len(sub)), sub]
        done = circuit.heads >= task.target and len(stats) + 1 >= s.rounds
        chosen = [] if done else worst_subclusters(own, sub, circuit.heads, s.cover, task.target - circuit.heads)
        if chosen:  # grow where the split patches flow: the flows of the circuit before the split
            where = np.isin(sub, chosen)
            flows = full_batch_flows(model, _rows(patches[where], sub[where]))  # model holds `params`
            circuit, params, sub = split(circuit, params, sub, features, chosen, s.noise, rng, s.iterations)
            circuit, params = duplicate_states(circuit, params, states_to_grow(circuit, flows, s.grow, s.max_hidden),
                                               s.noise, rng)
            _checked(circuit, params, levels)
        size = nonzero_parameters(circuit.family(levels).graph, params)
        stats.append(RoundStats(circuit.heads, moved, float(own.mean()), len(chosen), size))
        if done or (not chosen and circuit.heads < task.target):  # finished, or nothing left that can split
            break
    if rest.any():  # the model holds the final structure: the last round grew nothing
        heads = np.empty(len(rest), dtype=np.int64)
        heads[~rest] = sub
        heads[rest] = head_log_likelihoods(model, circuit, params, task.patches[rest]).argmax(axis=1)
        sub = heads
    return _Result(circuit, params, sub, tuple(stats))


# --- all global clusters -------------------------------------------------------------------------

@dataclass(frozen=True)
class Grown:
    """The grown patch family, its parameters (named as in the family's graph), each patch's
    latent state z over all heads (global cluster g's heads are states offset_g .. offset_g +
    S_g - 1), and per-round statistics: summed over global clusters (`rounds`; a cluster that
    finished early counts with its last round) and per cluster (`clusters`)."""

    family: PatchFamily
    params: Parameters
    z: np.ndarray
    circuits: tuple[ClusterCircuit, ...]
    rounds: tuple[RoundStats, ...]
    clusters: tuple[tuple[RoundStats, ...], ...]

    @property
    def offsets(self) -> np.ndarray:
        """The first state of each global cluster's heads."""
        return np.concatenate([[0], np.cumsum([c.heads for c in self.circuits])[:-1]]).astype(np.int64)

    def report(self) -> dict[str, Any]:
        """What a run's report shows of the growing."""
        return {"heads": [c.heads for c in self.circuits], "hidden": [list(c.hidden) for c in self.circuits],
                "rounds": [asdict(r) for r in self.rounds],
                "parameters": nonzero_parameters(self.family.graph, self.params)}

    def training(self) -> tuple[CircuitGraph, Parameters]:
        """The family's training circuit (:func:`pcdsl.distill.compose.training_circuit`, Z the
        last column) with these parameters and a uniform prior over the heads: what
        cluster-conditioned EM of all heads together, or the LVD bound, runs on."""
        graph = training_circuit(self.family)
        k = self.family.clusters
        params = Parameters(dict(self.params.inputs), {**self.params.weights, "root": np.full((1, k), 1.0 / k)})
        for g, (circuit, offset) in enumerate(zip(self.circuits, self.offsets, strict=True)):
            params.inputs[f"z{g}"] = {"value": offset + np.arange(circuit.heads)}
        return graph, params


def allocate(sizes: Sequence[int], heads: int, weights: Sequence[float] | None = None) -> list[int]:
    """Heads per global cluster: one each, then one at a time to the cluster with the most
    `weights` (default: patches) per head (ties: the lower index), never more heads than patches."""
    if not len(sizes) <= heads <= sum(max(1, int(n)) for n in sizes):
        raise ValueError(f"grow: heads = {heads} must lie between the number of global clusters ({len(sizes)}) "
                         f"and the number of patches they hold ({sum(max(1, int(n)) for n in sizes)})")
    weight = [float(w) for w in (sizes if weights is None else weights)]
    out = [1] * len(sizes)
    queue = [(-weight[g], g) for g, n in enumerate(sizes) if n > 1]
    heapq.heapify(queue)
    for _ in range(heads - len(sizes)):
        _, g = heapq.heappop(queue)
        out[g] += 1
        if out[g] < sizes[g]:
            heapq.heappush(queue, (-weight[g] / out[g], g))
    return out


def _check_inputs(patches: np.ndarray, z: np.ndarray, features: np.ndarray, shape: PatchShape,
                  levels: Sequence[int], settings: Growing) -> None:
    n = len(patches)
    if patches.ndim != 2 or patches.shape[1] != shape.dims or len(levels) != shape.dims:
        raise ValueError(f"grow: patches must be (n, {shape.dims}) with {shape.dims} levels, "
                         f"got {patches.shape} and {len(levels)} levels")
    if n and ((patches < 0).any() or (patches >= np.asarray(levels)[None, :]).any()):
        raise ValueError("grow: patch values must lie in 0 .. levels - 1 of their pixel")
    if z.shape != (n,) or (n and (z.min() < 0 or z.max() >= shape.clusters)):
        raise ValueError(f"grow: z must be ({n},) global clusters in 0 .. {shape.clusters - 1}")
    if features.ndim != 2 or len(features) != n or not np.isfinite(features).all():
        raise ValueError(f"grow: features must be ({n}, d) finite values, got {features.shape}")
    s = settings
    if s.rounds < 1 or s.workers < 1 or s.iterations < 1 or (s.sample is not None and s.sample < 2):
        raise ValueError("grow: rounds, workers and iterations must be at least 1, sample at least 2")
    if not (0 <= s.noise <= 1 and 0 <= s.threshold < 1 and 0 <= s.grow <= 1 and 0 < s.cover <= 1 and s.margin >= 0
            and s.pseudocount >= 0 and (s.max_hidden is None or s.max_hidden >= shape.hidden)):
        raise ValueError("grow: noise and grow must lie in [0, 1], threshold in [0, 1), cover in (0, 1], margin and "
                         "pseudocount >= 0, max_hidden >= the patch circuit's hidden size")


def progressive_growing(patches: np.ndarray, z: np.ndarray, features: np.ndarray, shape: PatchShape,
                        levels: Sequence[int], fit: Fit, settings: Growing, cache: Path | None = None) -> Grown:
    """Grow the patch circuits of `shape.clusters` global clusters (`z`: each patch's global
    cluster; `features`: what k-means clustered) to `settings.heads` heads in all; each starts as
    one HCLT of `shape.hidden` states per latent, fit by counting and then the growing loop.
    With ``workers > 1`` the clusters run in spawned processes, so a script that calls this
    must do so under ``if __name__ == "__main__":``. With `cache`, finished clusters are kept in
    (and taken from) that folder, which must belong to these arguments alone."""
    patches, z = np.asarray(patches, dtype=np.int64), np.asarray(z, dtype=np.int64)
    features = np.asarray(features, dtype=np.float64)
    _check_inputs(patches, z, features, shape, levels, settings)
    sizes = np.bincount(z, minlength=shape.clusters)
    bits = cluster_bits(patches, z, shape.clusters, levels, settings.pseudocount)
    targets = allocate(sizes.tolist(), settings.heads, bits.tolist())
    tree = LatentTree.of(shape)
    tasks = [_Task(g, patches[z == g], features[z == g], tree, shape.hidden, tuple(int(v) for v in levels),
                   targets[g], fit, settings) for g in range(shape.clusters)]
    results = _run(tasks, settings.workers, fit.progress, cache)
    circuits = tuple(r.circuit for r in results)
    family = grown_family(circuits, levels)
    params = Parameters({k: v for r in results for k, v in r.params.inputs.items()},
                        {k: v for r in results for k, v in r.params.weights.items()})
    grown = Grown(family, params, np.empty(len(z), dtype=np.int64), circuits, _total(results, sizes),
                  tuple(r.stats for r in results))
    for g, r in enumerate(results):
        grown.z[z == g] = grown.offsets[g] + r.sub
    return grown


# --- finished clusters, one file each -------------------------------------------------------------

def _cache_files(cache: Path, cluster: int) -> tuple[Path, Path, Path]:
    return cache / f"g{cluster}.safetensors", cache / f"g{cluster}.npy", cache / f"g{cluster}.json"


def save_result(cache: Path, task: _Task, result: _Result) -> None:
    """Write one finished cluster (its training circuit's model file, each patch's head, the
    circuit's sizes and round statistics); the JSON, written last, marks it complete."""
    import io

    model, heads, meta = _cache_files(cache, task.cluster)
    circuit = result.circuit
    save_model(model, training_circuit(circuit.family(task.levels)), training_parameters(circuit, result.params))
    buffer = io.BytesIO()
    np.save(buffer, result.sub, allow_pickle=False)
    write_atomic(heads, buffer.getvalue())
    write_json(meta, {"hidden": list(circuit.hidden), "heads": circuit.heads, "patches": len(task.patches),
                      "stats": [asdict(r) for r in result.stats]})


def load_result(cache: Path, task: _Task) -> _Result | None:
    """A finished cluster from `cache`, or None when it is not there (or not for this task)."""
    model, heads, meta = _cache_files(cache, task.cluster)
    if not meta.exists():
        return None
    saved = json.loads(meta.read_text())
    if saved["patches"] != len(task.patches):
        return None
    circuit = ClusterCircuit(task.tree, tuple(saved["hidden"]), int(saved["heads"]), f"g{task.cluster}")
    params = own_parameters(load_model(model)[1], circuit.prefix)
    sub = np.load(heads, allow_pickle=False)
    return _Result(circuit, params, sub, tuple(RoundStats(**r) for r in saved["stats"]))


def _total(results: Sequence[_Result], sizes: np.ndarray) -> tuple[RoundStats, ...]:
    out = []
    for i in range(max((len(r.stats) for r in results), default=0)):
        last = [(r.stats[min(i, len(r.stats) - 1)], n) for r, n in zip(results, sizes, strict=True) if r.stats]
        out.append(RoundStats(sum(r.circuit.heads if not r.stats else r.stats[min(i, len(r.stats) - 1)].heads
                                  for r in results),
                              sum(r.stats[i].moved for r in results if i < len(r.stats)),
                              float(sum(s.mean_ll * n for s, n in last) / max(1, sum(n for _, n in last))),
                              sum(r.stats[i].split for r in results if i < len(r.stats)),
                              sum(s.parameters for s, _ in last)))
    return tuple(out)


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run(tasks: list[_Task], workers: int, progress: bool, cache: Path | None = None) -> list[_Result]:
    """Every task, inline or in `workers` processes (spawned: forking a process that already runs
    torch's thread pool can hang); larger clusters start first; finished ones go to `cache`."""
    results: dict[int, _Result] = {}
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        results = {i: r for i, t in enumerate(tasks) if (r := load_result(cache, t)) is not None}

    def finished(i: int, result: _Result) -> None:
        results[i] = result
        if cache is not None:
            save_result(cache, tasks[i], result)

    todo = sorted((i for i in range(len(tasks)) if i not in results), key=lambda i: -len(tasks[i].patches))
    if workers == 1:
        for i in todo:
            finished(i, grow_cluster(tasks[i]))
        return [results[i] for i in range(len(tasks))]
    quiet = [replace(t, fit=replace(t.fit, progress=False)) for t in tasks]
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), _limit_threads, (threads,)) as pool:
        futures = {pool.submit(grow_cluster, quiet[i]): i for i in todo}
        done: Iterable[Any] = as_completed(futures)
        if progress:
            from tqdm import tqdm

            done = tqdm(done, total=len(tasks), initial=len(tasks) - len(todo), desc="growing", leave=False)
        for future in done:
            finished(futures[future], future.result())
    return [results[i] for i in range(len(tasks))]


def assign_heads(grown: Grown, patches: np.ndarray, z: np.ndarray, fit: Fit) -> np.ndarray:
    """The latent state of new patches (valid, test): the best head of their global cluster `z`."""
    patches, z = np.asarray(patches, dtype=np.int64), np.asarray(z, dtype=np.int64)
    levels = [int(v.domain.size or 0) for v in grown.family.graph.variables]
    out = np.empty(len(z), dtype=np.int64)
    for g, circuit in enumerate(grown.circuits):
        where = z == g
        if where.any():
            own = own_parameters(grown.params, circuit.prefix)
            model = fit.compile(training_circuit(circuit.family(levels)), training_parameters(circuit, own))
            out[where] = grown.offsets[g] + head_log_likelihoods(model, circuit, own, patches[where]).argmax(axis=1)
    return out
