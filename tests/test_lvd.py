"""Latent variable distillation on enumerable toy data: counting, composition, soft-evidence EM."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from pcdsl import reference
from pcdsl.distill.compose import (
    PatchShape,
    block_family,
    compose,
    decompose,
    top_parameter_groups,
    training_circuit,
)
from pcdsl.distill.counting import cluster_counts, counting_init
from pcdsl.distill.lvd import Fit, fit_distilled, fit_latents, fit_patches, latent_circuit, patch_rows, patch_shape
from pcdsl.ir.graph import Domain, Variable
from pcdsl.ir.validate import validate
from pcdsl.learn.em import em_update
from pcdsl.learn.train import Stage
from pcdsl.params import Parameters

from conftest import ATOL

LEVELS, K, M, D = 2, 2, 2, 2  # binary pixels, 2 clusters, 2 patches of 2 pixels: 16 images in all
WORLDS = np.array(list(itertools.product(range(LEVELS), repeat=M * D)), dtype=np.float64)
QUICK = Fit((Stage("full_em", epochs=3, pseudocount=0.1),), dtype="float64", progress=False)


def _toy(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, M * D) and cluster assignments (n, M): a patch's cluster is its first pixel."""
    rng = np.random.default_rng(seed)
    images = (rng.random((300, M * D)) < np.array([0.2, 0.7, 0.6, 0.3])).astype(np.int64)
    return images, images.reshape(-1, M, D)[:, :, 0]


def _fitted(seed: int, shared: bool = True):  # type: ignore[no-untyped-def]
    images, z = _toy(seed)
    patches = images.reshape(-1, M, D)
    shape = patch_shape(patches.reshape(-1, D), [LEVELS] * D, hidden=2, clusters=K)
    _, patch = fit_patches(shape, [LEVELS] * D, patch_rows(patches, z), None, 0.1, QUICK)
    top = latent_circuit(M, K, z, hidden=2)
    top_params = fit_latents(top, z, None, QUICK)
    variables = tuple(Variable(f"x[{i}]", i, Domain("categorical", LEVELS)) for i in range(M * D))
    positions = [list(range(i * D, (i + 1) * D)) for i in range(M)]
    # unshared: every position gets parameters of its own (a mix-up of positions would show)
    patches = [patch] if shared else [patch, _perturbed(patch, seed)]
    graph, params = compose(top, top_params, block_family(shape, [LEVELS] * D), patches,
                            variables, positions, shared, "toy")
    return SimpleNamespace(images=images, z=z, shape=shape, patches=patches, top=top, top_params=top_params,
                           graph=graph, params=params)


def _perturbed(params: Parameters, seed: int) -> Parameters:
    rng = np.random.default_rng(seed + 100)
    out = Parameters({k: dict(v) for k, v in params.inputs.items()}, dict(params.weights))
    for group, w in params.weights.items():
        noisy = w * rng.uniform(0.5, 1.5, w.shape)
        out.weights[group] = noisy / noisy.sum(axis=1, keepdims=True)
    return out


def test_cluster_counts_equal_brute_force() -> None:
    rng = np.random.default_rng(0)
    patches, z = rng.integers(0, 5, (200, 3)), rng.integers(0, 4, 200)
    counts = cluster_counts(patches, z, 4, 5)
    brute = np.zeros((4, 3, 5))
    for row, k in zip(patches, z, strict=True):
        for j, v in enumerate(row):
            brute[k, j, v] += 1
    np.testing.assert_array_equal(counts, brute)


def test_counting_init_is_the_smoothed_counts() -> None:
    images, z = _toy(1)
    patches = images.reshape(-1, M, D).reshape(-1, D)
    shape = PatchShape(D, ((0, 1),), 3, K)
    graph = training_circuit(block_family(shape, [LEVELS] * D))
    params = counting_init(graph, shape, patches, z.reshape(-1), [LEVELS] * D, pseudocount=0.5, perturbation=0.0)
    counts = cluster_counts(patches, z.reshape(-1), K, LEVELS)
    for j in range(D):
        table = params.inputs[f"patch/j{j}.in"]["probs"]  # (K * hidden, levels)
        for k in range(K):
            expected = (counts[k, j] + 0.5 / LEVELS) / (counts[k, j].sum() + 0.5)
            np.testing.assert_allclose(table[k * 3:(k + 1) * 3], np.tile(expected, (3, 1)), atol=1e-12)


@pytest.mark.parametrize("shared", [True, False])
def test_distilled_circuit_is_the_composition(shared: bool) -> None:
    """p(x) = sum_z p_top(z) prod_i p_{z_i}(x_i), by enumeration of every image and latent state."""
    f = _fitted(2, shared)
    assert validate(f.graph) == []
    train_graph = training_circuit(block_family(f.shape, [LEVELS] * D))
    expected = np.zeros(len(WORLDS))
    for states in itertools.product(range(K), repeat=M):
        p_top = np.exp(reference.log_prob(f.top, f.top_params, np.array([states], dtype=np.float64)))[0]
        term = np.full(len(WORLDS), p_top)
        for i, k in enumerate(states):
            rows = np.concatenate([WORLDS[:, i * D:(i + 1) * D], np.full((len(WORLDS), 1), k)], axis=1)
            prior = rows.copy()
            prior[:, :D] = -1
            part = f.patches[0 if shared else i]
            term *= np.exp(reference.log_prob(train_graph, part, rows) - reference.log_prob(train_graph, part, prior))
        expected += term
    got = np.exp(reference.log_prob(f.graph, f.params, WORLDS))
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert abs(got.sum() - 1) < 1e-9
    # and the parts read back from the distilled circuit are the parts it was made of
    top_params, parts = decompose(f.graph, f.params, f.top, block_family(f.shape, [LEVELS] * D), 1 if shared else M)
    for group, w in f.top_params.weights.items():
        np.testing.assert_array_equal(top_params.weights[group], w)
    for part, patch in zip(parts, f.patches, strict=True):
        for group, w in patch.weights.items():
            if group != "root":
                np.testing.assert_array_equal(part.weights[group], w)


def test_soft_evidence_flows_are_posterior_weighted_latent_flows() -> None:
    """The top level's expected counts on the distilled circuit equal sum_z p(z | x) times the
    latent circuit's counts with z observed: soft-evidence EM is EM with exact posteriors."""
    f = _fitted(3)
    x = WORLDS[[1, 6, 9, 14]]
    flows = reference.flows(f.graph, f.params, x)
    train_graph = training_circuit(block_family(f.shape, [LEVELS] * D))
    expected: dict[str, np.ndarray] = {}
    for image in x:
        joint = {}
        for states in itertools.product(range(K), repeat=M):
            lp = reference.log_prob(f.top, f.top_params, np.array([states], dtype=np.float64))[0]
            for i, k in enumerate(states):
                row = np.concatenate([image[i * D:(i + 1) * D], [k]])[None]
                prior = row.copy()
                prior[:, :D] = -1
                lp += (reference.log_prob(train_graph, f.patches[0], row)
                       - reference.log_prob(train_graph, f.patches[0], prior))[0]
            joint[states] = np.exp(lp)
        total = sum(joint.values())
        for states, p in joint.items():
            latent = reference.flows(f.top, f.top_params, np.array([states], dtype=np.float64))
            for group, value in latent.weights.items():
                expected[f"top/{group}"] = expected.get(f"top/{group}", 0) + p / total * value
            for leaf, stats in latent.inputs.items():
                expected[f"top/{leaf}"] = expected.get(f"top/{leaf}", 0) + p / total * stats["counts"]
    assert set(expected) == top_parameter_groups(f.graph)
    for group, value in expected.items():
        np.testing.assert_allclose(flows.weights[group], value, atol=ATOL)


def test_soft_evidence_em_trains_only_the_top_level_and_never_lowers_the_likelihood() -> None:
    f = _fitted(4)
    before = reference.log_prob(f.graph, f.params, f.images.astype(np.float64)).mean()
    fit = Fit((Stage("full_em", epochs=4, pseudocount=0.0),), dtype="float64", progress=False)
    learn = top_parameter_groups(f.graph)
    trained = fit_distilled(f.graph, f.params, f.images.astype(np.float64), None, fit, learn)
    after = reference.log_prob(f.graph, trained, f.images.astype(np.float64)).mean()
    assert after >= before - 1e-9
    for group, w in f.params.weights.items():
        if group not in learn:
            np.testing.assert_array_equal(trained.weights[group], w)
    for group, p in f.params.inputs.items():
        np.testing.assert_array_equal(trained.inputs[group]["probs"], p["probs"])
    # the same as one full-batch EM step computed by hand from the distilled circuit's flows
    one = Fit((Stage("full_em", epochs=1, pseudocount=0.0),), dtype="float64", progress=False)
    stepped = fit_distilled(f.graph, f.params, f.images.astype(np.float64), None, one, learn)
    flows = reference.flows(f.graph, f.params, f.images.astype(np.float64))
    flows.weights = {g: f for g, f in flows.weights.items() if g in learn}
    flows.inputs = {}
    by_hand = em_update(f.params, flows, 1.0, 0.0)
    for group in learn:
        np.testing.assert_allclose(stepped.weights[group], by_hand.weights[group], atol=1e-9)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("kind", ["em", "full_em"])
def test_soft_evidence_computed_once_trains_like_the_distilled_circuit(shared: bool, kind: str) -> None:
    """EM of the evidence circuit (the top level fed log p_k(x_i), computed once) takes the same
    steps as EM of the distilled circuit with only the top level learning: same batches, same
    flows, the same parameters after every epoch."""
    from pcdsl.distill import soft

    f = _fitted(5, shared)
    images = f.images.astype(np.float64)
    family = block_family(f.shape, [LEVELS] * D)
    fit = Fit((Stage(kind, epochs=3, batch_size=5, step=(0.5, 0.1), pseudocount=0.1),), dtype="float64",
              progress=False)
    learn = top_parameter_groups(f.graph)
    whole = fit_distilled(f.graph, f.params, images, images[:6], fit, learn)
    evidence, start = soft.evidence_circuit(f.top, f.top_params, K)
    assert set(start.weights) == learn
    cut = f.images.reshape(-1, M, D)
    trained = soft.fit_top(evidence, start, family, f.patches, cut, cut[:6], fit)
    combined = soft.with_top(f.params, trained)
    for group, w in whole.weights.items():
        np.testing.assert_allclose(combined.weights[group], w, atol=1e-9, err_msg=group)
    # the values the evidence circuit reads are the patch circuits' heads, position by position
    values = soft.position_values(family, f.patches, cut, "float64")
    train = training_circuit(family)
    for i in range(M):
        rows = np.array([[*cut[0, i], k] for k in range(K)], dtype=np.float64)
        prior = rows.copy()
        prior[:, :-1] = -1
        part = f.patches[i if not shared else 0]
        expected = reference.log_prob(train, part, rows) - reference.log_prob(train, part, prior)
        np.testing.assert_allclose(values[0, i], expected, atol=1e-6)


def test_the_package_imports_its_backends_by_their_installed_name() -> None:
    """`backends` is importable only from a checkout's root; installed, it is `pcdsl.backends`
    (a distillation run from another folder failed on `from backends.torch import ...`)."""
    import re
    from pathlib import Path

    import pcdsl

    root = Path(pcdsl.__file__).parent
    bare = re.compile(r"^\s*(from|import) backends\b", re.M)
    assert [str(p.relative_to(root)) for p in root.rglob("*.py") if bare.search(p.read_text())] == []
