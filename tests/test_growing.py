"""Progressive growing on enumerable patches (3 binary pixels): every edit keeps each head a
distribution, growing without noise changes nothing, and the loop is seeded and process-free."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from pcdsl import reference
from pcdsl.distill.compose import PatchShape, training_circuit
from pcdsl.distill.growing import (
    Growing,
    Grown,
    allocate,
    assign_heads,
    cluster_bits,
    cluster_em,
    head_log_likelihoods,
    progressive_growing,
    reassign,
    split_side,
    worst_subclusters,
)
from pcdsl.distill.grown import (
    ClusterCircuit,
    LatentTree,
    check,
    cluster_circuits,
    duplicate_states,
    grown_family,
    own_parameters,
    prune,
    training_parameters,
)
from pcdsl.distill.lvd import Fit
from pcdsl.io.model import load_model, save_model
from pcdsl.ir.validate import validate
from pcdsl.learn.train import Stage
from pcdsl.params import Parameters, initialise
from pcdsl.reference import Flows

LEVELS = [2, 2, 2]
WORLDS = np.array(list(itertools.product(range(2), repeat=3)), dtype=np.float64)
SHAPES = {"hclt": PatchShape(3, ((0, 1), (1, 2)), 2, 1), "factorized": PatchShape(3, (), 2, 1, factorized=True)}
QUICK = Fit((Stage("full_em", epochs=3, pseudocount=0.1),), dtype="float64", progress=False)


def _circuit(kind: str, heads: int = 3, hidden: int = 3) -> ClusterCircuit:
    tree = LatentTree.of(SHAPES[kind])
    return ClusterCircuit(tree, (hidden,) * len(tree.order), heads, "g0")


def _random(circuit: ClusterCircuit, seed: int) -> Parameters:
    return own_parameters(initialise(training_circuit(circuit.family(LEVELS)), seed, perturbation=1.0), "g0")


def _patches(seed: int, n: int = 300) -> np.ndarray:
    """Two kinds of patch: mostly ones with pixel 1 copying pixel 0, or mostly zeros."""
    rng = np.random.default_rng(seed)
    x = (rng.random((n, 3)) < np.where(rng.random((n, 1)) < 0.5, 0.8, 0.15)).astype(np.int64)
    x[: n // 3, 1] = x[: n // 3, 0]
    return x


def _heads(circuit: ClusterCircuit, params: Parameters, x: np.ndarray = WORLDS) -> np.ndarray:
    """(rows, S) log p_s(x) by the reference evaluator."""
    return reference.forward(circuit.family(LEVELS).graph, params, x)[circuit.head_group]


def _flows(circuit: ClusterCircuit, params: Parameters, patches: np.ndarray, sub: np.ndarray) -> Flows:
    rows = np.concatenate([patches, sub[:, None]], axis=1).astype(np.float64)
    return reference.flows(training_circuit(circuit.family(LEVELS)), training_parameters(circuit, params), rows)


def _pruned(kind: str, threshold: float = 0.3) -> tuple[ClusterCircuit, Parameters, np.ndarray, np.ndarray]:
    circuit = _circuit(kind)
    params = _random(circuit, 1)
    patches = _patches(2, 90)
    sub = np.arange(90) % 3
    return circuit, prune(params, _flows(circuit, params, patches, sub), circuit.sums(), threshold), patches, sub


@pytest.mark.parametrize("kind", SHAPES)
def test_prune_and_grow_keep_every_head_a_distribution(kind: str) -> None:
    circuit, pruned, _, _ = _pruned(kind)
    zeros = sum(int((w == 0).sum()) for w in pruned.weights.values())
    assert zeros > 0
    check(training_circuit(circuit.family(LEVELS)), training_parameters(circuit, pruned))
    np.testing.assert_allclose(np.exp(_heads(circuit, pruned)).sum(axis=0), 1.0, atol=1e-12)
    states = [[0, 2, 0]] * len(circuit.hidden)  # state 0 twice: its copy is copied again
    grown, params = duplicate_states(circuit, pruned, states, 0.5, np.random.default_rng(0))
    assert grown.hidden == tuple(h + 3 for h in circuit.hidden)
    check(training_circuit(grown.family(LEVELS)), training_parameters(grown, params))
    assert validate(training_circuit(grown.family(LEVELS))) == []
    np.testing.assert_allclose(np.exp(_heads(grown, params)).sum(axis=0), 1.0, atol=1e-12)
    assert sum(int((w == 0).sum()) for w in params.weights.values()) >= zeros  # copies of pruned rows stay pruned


@pytest.mark.parametrize("kind", SHAPES)
@pytest.mark.parametrize("prune_first", [False, True])
def test_growing_without_noise_leaves_every_head_unchanged(kind: str, prune_first: bool) -> None:
    circuit, params = (_pruned(kind)[:2] if prune_first else (_circuit(kind), _random(_circuit(kind), 4)))
    states = [[1, 0, 1, 2]] * len(circuit.hidden)
    grown, after = duplicate_states(circuit, params, states, 0.0, np.random.default_rng(0))
    assert grown.hidden == tuple(h + 4 for h in circuit.hidden)
    np.testing.assert_allclose(_heads(grown, after), _heads(circuit, params), rtol=0, atol=1e-12)
    _, noisy = duplicate_states(circuit, params, states, 0.3, np.random.default_rng(0))
    assert np.abs(_heads(grown, noisy) - _heads(circuit, params)).max() > 1e-4  # noise does move it


def test_pruning_keeps_each_units_best_edge() -> None:
    w = np.array([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]])
    f = np.array([[10.0, 0.05, 3.0], [0.0, 0.0, 0.0], [4.0, 3.0, 3.0], [1.0, 2.0, 1.5]])
    params, flows = Parameters({}, {"s": w}), Flows({"s": f})
    mild = prune(params, flows, ["s"], 0.2).weights["s"]
    np.testing.assert_allclose(mild[0], [0.2 / 0.7, 0.0, 0.5 / 0.7])
    np.testing.assert_array_equal(mild[1:], w[1:])  # unit 1 has no flow: it keeps everything
    harsh = prune(params, flows, ["s"], 0.9).weights["s"]  # no edge carries 90%: only the best stays
    np.testing.assert_array_equal(harsh[[0, 2, 3]], [[1, 0, 0], [1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(harsh[1], w[1])
    np.testing.assert_array_equal(params.weights["s"], w)  # a new Parameters, the old untouched


def test_em_keeps_pruned_weights_at_zero_and_torch_agrees_with_the_reference() -> None:
    circuit, pruned, patches, sub = _pruned("hclt")
    model, trained = cluster_em(circuit, pruned, patches, sub, LEVELS, QUICK)
    moved = 0.0
    for group, w in pruned.weights.items():
        np.testing.assert_array_equal(trained.weights[group] == 0, w == 0)
        np.testing.assert_allclose(trained.weights[group].sum(axis=1), 1.0, atol=1e-12)
        moved = max(moved, float(np.abs(trained.weights[group] - w).max()))
    assert moved > 1e-3
    by_torch = head_log_likelihoods(model, circuit, trained, patches)
    np.testing.assert_allclose(by_torch, _heads(circuit, trained, patches), atol=1e-9)


def test_reassignment_moves_only_past_the_margin() -> None:
    rng = np.random.default_rng(0)
    ll, sub = rng.normal(0, 3, (500, 4)), rng.integers(0, 4, 500)
    rows = np.arange(500)
    same, moved = reassign(ll, sub, 1e9)
    assert moved == 0 and np.array_equal(same, sub)
    best, moved = reassign(ll, sub, 0.0)
    np.testing.assert_array_equal(ll[rows, best], ll.max(axis=1))
    assert moved == int((ll[rows, sub] < ll.max(axis=1)).sum())
    some, moved = reassign(ll, sub, 1.0)
    gain = ll.max(axis=1) - ll[rows, sub]
    assert moved == int((some != sub).sum()) and 0 < moved < 500
    assert (gain[some != sub] > 1.0).all() and (gain[some == sub] <= 1.0).all()
    np.testing.assert_array_equal(some[some != sub], ll.argmax(axis=1)[some != sub])


def test_worst_subclusters_cover_the_share_worst_first() -> None:
    sizes, means = [10, 30, 20, 39, 1], [-1.0, -5.0, -3.0, -2.0, -9.0]
    sub = np.repeat(np.arange(5), sizes)
    own = np.repeat(means, sizes)
    assert worst_subclusters(own, sub, 5, 0.4, 5) == [1, 2]  # 30 patches <= 40%, 50 > 40%; a singleton cannot split
    assert worst_subclusters(own, sub, 5, 0.4, 1) == [1]
    assert worst_subclusters(own, sub, 5, 0.8, 5) == [1, 2, 3]


def test_split_follows_the_features() -> None:
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 0.1, (30, 2)), rng.normal(5, 0.1, (20, 2))])
    side = split_side(features, np.random.default_rng(1), 50)
    assert side[:30].all() != side[30:].all() and len(set(side[:30])) == len(set(side[30:])) == 1
    same = split_side(np.ones((9, 2)), np.random.default_rng(1), 50)  # nothing to split on: a random half
    assert same.sum() == 4


def test_allocation_follows_cluster_sizes_or_bits() -> None:
    assert allocate([100, 50, 0], 6) == [3, 2, 1]
    assert allocate([2, 1], 3) == [2, 1]
    assert allocate([100, 50, 0], 6, [10.0, 500.0, 0.0]) == [1, 4, 1]  # the bits, not the patches
    assert allocate([100, 2], 5, [1.0, 500.0]) == [3, 2]  # never more heads than patches
    for heads in (1, 4):
        with pytest.raises(ValueError, match="heads = "):
            allocate([2, 1], heads)


def _problem(n: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    patches = _patches(5, n)
    rng = np.random.default_rng(6)
    return patches, patches[:, 2].copy(), patches + 0.3 * rng.standard_normal(patches.shape)


def _grow(kind: str = "hclt", **settings: object) -> Grown:
    patches, z, features = _problem()
    shape = PatchShape(3, SHAPES[kind].edges, 2, 2, SHAPES[kind].factorized)
    options = {"heads": 5, "rounds": 2, "margin": 0.0, "threshold": 0.05, **settings}
    return progressive_growing(patches, z, features, shape, LEVELS, QUICK, Growing(**options))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", SHAPES)
def test_growing_reaches_the_target_with_a_valid_family(kind: str) -> None:
    patches, z, _ = _problem()
    grown = _grow(kind)
    bits = cluster_bits(patches, z, 2, LEVELS, 0.1)
    assert [c.heads for c in grown.circuits] == allocate(np.bincount(z).tolist(), 5, bits.tolist())
    assert grown.family.clusters == 5 and grown.rounds[-1].heads == 5
    assert all(len(stats) >= 2 for stats in grown.clusters)
    assert sum(r.split for r in grown.rounds) == 3  # 2 global clusters start with one head each
    for g, circuit in enumerate(grown.circuits):  # each patch stays inside its global cluster
        assert ((grown.z[z == g] >= grown.offsets[g]) & (grown.z[z == g] < grown.offsets[g] + circuit.heads)).all()
    # the family as the pipeline uses it: p(z, x) with z observed sums to 1 over every (x, z)
    graph, params = grown.training()
    assert validate(graph) == []
    rebuilt = grown_family(cluster_circuits(PatchShape(3, SHAPES[kind].edges, 2, 2, SHAPES[kind].factorized),
                                            grown.report()["hidden"], grown.report()["heads"]), LEVELS)
    assert rebuilt.heads == grown.family.heads
    assert [(n.name, n.num_units) for n in rebuilt.graph.nodes()] == [(n.name, n.num_units)
                                                                       for n in grown.family.graph.nodes()]
    worlds = np.array([[*x, k] for x in WORLDS for k in range(5)])
    assert abs(np.exp(reference.log_prob(graph, params, worlds)).sum() - 1.0) < 1e-12
    # the reported fit is each patch's own head, and with margin 0 the last reassignment is the argmax
    values = reference.forward(grown.family.graph, grown.params, patches.astype(np.float64))
    ll = np.concatenate([values[h] for h in grown.family.heads], axis=1)
    assert abs(ll[np.arange(len(z)), grown.z].mean() - grown.rounds[-1].mean_ll) < 1e-9
    np.testing.assert_array_equal(assign_heads(grown, patches, z, QUICK), grown.z)


def test_grown_training_circuit_saves_and_loads(tmp_path: Path) -> None:
    grown = _grow(heads=3, rounds=1)
    graph, params = grown.training()
    save_model(tmp_path / "patches.safetensors", graph, params)
    loaded_graph, loaded = load_model(tmp_path / "patches.safetensors")
    rows = np.array([[*x, k] for x in WORLDS for k in range(3)])
    np.testing.assert_allclose(reference.log_prob(loaded_graph, loaded, rows), reference.log_prob(graph, params, rows),
                               atol=1e-12)


def _same(a: Grown, b: Grown) -> bool:
    return (np.array_equal(a.z, b.z) and a.params.weights.keys() == b.params.weights.keys()
            and all(np.array_equal(w, b.params.weights[k]) for k, w in a.params.weights.items())
            and all(np.array_equal(p["probs"], b.params.inputs[k]["probs"]) for k, p in a.params.inputs.items()))


def test_growing_is_seeded_and_independent_of_workers() -> None:
    first = _grow(seed=3)
    assert _same(first, _grow(seed=3))
    assert _same(first, _grow(seed=3, workers=2))
    assert not _same(first, _grow(seed=4))


def test_a_stopped_growing_resumes_from_its_finished_clusters(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after its first global cluster, growing with a cache grows only the others again,
    and ends where an uninterrupted run ends, bit for bit."""
    import pcdsl.distill.growing as growing

    from conftest import Interrupting

    whole = _grow(seed=3)
    dies = Interrupting(growing.grow_cluster, at=2)

    patches, z, features = _problem()
    shape = PatchShape(3, SHAPES["hclt"].edges, 2, 2)
    settings = Growing(heads=5, rounds=2, margin=0.0, threshold=0.05, seed=3)
    monkeypatch.setattr(growing, "grow_cluster", dies)
    with pytest.raises(KeyboardInterrupt):
        progressive_growing(patches, z, features, shape, LEVELS, QUICK, settings, tmp_path)
    assert len(list(tmp_path.glob("g*.json"))) == 1
    dies.calls = -100  # the resumed run grows the one cluster left
    resumed = progressive_growing(patches, z, features, shape, LEVELS, QUICK, settings, tmp_path)
    assert dies.calls == -99
    assert _same(whole, resumed)
    assert whole.clusters == resumed.clusters and [c.hidden for c in whole.circuits] == [c.hidden for c in
                                                                                        resumed.circuits]
    # a finished cluster edited since it was written is reported, not used
    from pcdsl.io.rundir import RunDirError

    heads = next(tmp_path.glob("g*.npy"))
    heads.write_bytes(heads.read_bytes()[:-8])
    with pytest.raises(RunDirError, match=f"{heads.name} has .* bytes where .* were written"):
        progressive_growing(patches, z, features, shape, LEVELS, QUICK, settings, tmp_path)


def test_cluster_bits_are_the_histogram_negative_log_likelihood() -> None:
    patches, z, _ = _problem(60)
    bits = cluster_bits(patches, z, 3, LEVELS, 0.1)
    for g in range(3):
        mine = patches[z == g]
        expected = 0.0
        for j, size in enumerate(LEVELS):
            counts = np.bincount(mine[:, j], minlength=size)
            probs = (counts + 0.1 / size) / (len(mine) + 0.1)
            expected -= (counts * np.log(probs)).sum()
        assert abs(bits[g] - expected) < 1e-9 * max(1.0, abs(expected))
    assert cluster_bits(np.zeros((50, 3), np.int64), np.zeros(50, np.int64), 1, LEVELS, 0.0)[0] == 0.0


def test_a_sampled_loop_gives_every_patch_its_best_head() -> None:
    """Past `sample` patches, the loop runs on a sample and the others take their best head."""
    patches, z, _ = _problem()
    grown = _grow(sample=120)
    assert sum(c.heads for c in grown.circuits) == 5
    np.testing.assert_array_equal(assign_heads(grown, patches, z, QUICK), grown.z)  # margin 0: all argmax
    assert not _same(grown, _grow(sample=None))


def test_bad_inputs_name_the_argument() -> None:
    patches, z, features = _problem(50)
    shape = PatchShape(3, SHAPES["hclt"].edges, 2, 2)
    with pytest.raises(ValueError, match="z must"):
        progressive_growing(patches, z + 1, features, shape, LEVELS, QUICK, Growing(heads=3))
    with pytest.raises(ValueError, match="features must"):
        progressive_growing(patches, z, features[:10], shape, LEVELS, QUICK, Growing(heads=3))
    with pytest.raises(ValueError, match="patch values"):
        progressive_growing(patches + 1, z, features, shape, LEVELS, QUICK, Growing(heads=3))
