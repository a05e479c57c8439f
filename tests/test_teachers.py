"""Teachers (pcdsl.distill.teachers) on tiny synthetic images: shapes, determinism, files, likelihoods,
locality; the user-module interface."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from pcdsl.distill.teachers import TeacherError, load_teacher, make_teacher, save_teacher  # noqa: E402
from pcdsl.distill.teachers.layers import logistic_mixture_loglik  # noqa: E402

SMALL_VQ = {"epochs": 1, "hidden": 16, "dim": 8, "codes": 8, "batch": 32, "prior_dim": 16, "prior_epochs": 1}
SMALL_MAE = {"epochs": 1, "dim": 16, "batch": 32}
EXAMPLE = "teacher_module_example"


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny models: one thread is faster, and two spin against each other on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def striped(n: int = 64, size: int = 8, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Images whose 4x4 patches are one of four stripe patterns, plus a little noise."""
    rng = np.random.default_rng(seed)
    templates = np.stack([np.tile(np.array(row, dtype=np.int64)[:, None], (1, 4)) for row in
                          ([0, 255, 0, 255], [255, 0, 255, 0], [0, 0, 255, 255], [200, 200, 200, 200])])
    grid = size // 4
    which = rng.integers(0, 4, (n, grid, grid, channels))
    img = templates[which].transpose(0, 1, 4, 2, 5, 3).reshape(n, size, size, channels)
    return np.clip(img + rng.integers(-3, 4, img.shape), 0, 255).astype(np.uint8)


def fitted(kind: str, images: np.ndarray, options: dict | None = None, **kw: object) -> object:
    opts = {"vqvae": SMALL_VQ, "mae": SMALL_MAE}.get(kind, {}) | (options or {})
    t = make_teacher(kind, opts, images.shape[1:], (4, 4), **kw)  # type: ignore[arg-type]
    t.fit(images, images[:8], progress=False, log=lambda _: None)
    return t


@pytest.mark.parametrize("kind, d", [("vqvae", 8), ("mae", 16), ("pixels", 16)])
def test_feature_shapes(kind: str, d: int) -> None:
    images = striped(16, size=8)[:, :, :8]
    wide = np.concatenate([images, images[:, :, :4]], axis=2)  # 8 x 12: a 2 x 3 grid
    t = fitted(kind, wide)
    f = t.features(wide, batch=5)
    assert f.shape == (16, 6, d) and f.dtype == np.float32


def test_pixel_features_are_the_patches_in_row_major_order() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 8, 12, 3)).astype(np.uint8)
    f = make_teacher("pixels", {}, (8, 12, 3), (4, 4)).features(images)
    for n, r, c in itertools.product(range(3), range(2), range(3)):
        patch = images[n, 4 * r:4 * r + 4, 4 * c:4 * c + 4].transpose(2, 0, 1).reshape(-1)
        np.testing.assert_array_equal(f[n, 3 * r + c], patch.astype(np.float32))


@pytest.mark.parametrize("kind", ["vqvae", "mae"])
def test_training_is_deterministic_and_seeded(kind: str) -> None:
    images = striped()
    a, b = fitted(kind, images), fitted(kind, images)
    np.testing.assert_array_equal(a.features(images), b.features(images))
    c = fitted(kind, images, {"seed": 1})
    assert not np.allclose(a.features(images), c.features(images))


def test_fit_leaves_torch_global_state_alone() -> None:
    torch.manual_seed(123)
    before, threads = torch.get_rng_state(), torch.get_num_threads()
    fitted("vqvae", striped(16))
    assert torch.equal(torch.get_rng_state(), before) and torch.get_num_threads() == threads


@pytest.mark.parametrize("kind", ["vqvae", "mae", "pixels"])
def test_state_round_trip_through_safetensors(kind: str, tmp_path: Path) -> None:
    images = striped(32)
    t = fitted(kind, images)
    path = save_teacher(tmp_path / "teacher.safetensors", t)
    opts = {"vqvae": SMALL_VQ, "mae": SMALL_MAE}.get(kind, {})
    back = load_teacher(path, kind, opts, (8, 8, 1), (4, 4))
    np.testing.assert_array_equal(back.features(images), t.features(images))
    assert back.bpd(images) == t.bpd(images)
    assert not list(tmp_path.glob(".*"))  # the atomic write left no temporary file behind


def test_loading_with_other_settings_or_a_bad_file_is_refused(tmp_path: Path) -> None:
    t = fitted("vqvae", striped(16))
    path = save_teacher(tmp_path / "t.safetensors", t)
    with pytest.raises(TeacherError, match=r"other settings \(options.codes: file 8, asked 16"):
        load_teacher(path, "vqvae", {**SMALL_VQ, "codes": 16}, (8, 8, 1), (4, 4))
    with pytest.raises(TeacherError, match="levels"):
        load_teacher(path, "vqvae", SMALL_VQ, (8, 8, 1), (4, 4), levels=16)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a file")
    with pytest.raises(TeacherError, match="not a pcdsl teacher file"):
        load_teacher(junk, "vqvae", SMALL_VQ, (8, 8, 1), (4, 4))


def test_untrained_teacher_refuses_features() -> None:
    with pytest.raises(TeacherError, match="not trained"):
        make_teacher("mae", {}, (8, 8, 1), (4, 4)).features(striped(2))


# -- likelihoods -------------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [2, 5, 256])
def test_discretised_logistic_mixture_sums_to_one_over_the_levels(levels: int) -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(3, 3, 4, generator=gen)  # 3 values, each (logits, means, log scales) x 4 components
    base[0, 2] = -6.0  # sharp components: the underflow branch must still normalise
    x = torch.arange(levels).view(levels, 1).expand(levels, 3)
    logp = logistic_mixture_loglik(x, base.expand(levels, 3, 3, 4), torch.full((3,), levels))
    total = torch.logsumexp(logp.double(), dim=0).exp()
    np.testing.assert_allclose(total.numpy(), 1.0, atol=1e-5)


def test_discretised_logistic_equals_cdf_differences() -> None:
    gen = torch.Generator().manual_seed(1)
    params = torch.randn(50, 6, 3, 2, generator=gen).double()
    x = torch.randint(0, 10, (50, 6), generator=gen)
    logits, means, log_scales = params.unbind(-2)
    s = log_scales.clamp(min=-7.0).exp()
    xf = (x.double() / 9 * 2 - 1).unsqueeze(-1)
    cdf_hi = torch.where((x == 9).unsqueeze(-1), 1.0, torch.sigmoid((xf + 1 / 9 - means) / s))
    cdf_lo = torch.where((x == 0).unsqueeze(-1), 0.0, torch.sigmoid((xf - 1 / 9 - means) / s))
    expected = ((cdf_hi - cdf_lo) * logits.softmax(-1)).sum(-1).log()
    got = logistic_mixture_loglik(x, params, torch.full((6,), 10))
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-10, atol=1e-12)


def test_vqvae_prior_is_a_distribution_over_code_grids() -> None:
    t = fitted("vqvae", striped(16), {"codes": 3})
    grids = torch.tensor(list(itertools.product(range(3), repeat=4)))
    with torch.no_grad():
        total = t.prior.loglik(grids).double().exp().sum()
    assert abs(float(total) - 1.0) < 1e-5


def test_vqvae_bpd_is_low_on_constant_images_and_plausible_on_stripes() -> None:
    constant = np.full((32, 8, 8, 1), 77, dtype=np.uint8)
    assert fitted("vqvae", constant, {"epochs": 40, "batch": 8, "lr": 3e-2, "prior_epochs": 3}).bpd(constant) < 0.75
    stripes = striped(64)
    bpd = fitted("vqvae", stripes, {"epochs": 20, "batch": 8, "lr": 1e-2}).bpd(striped(32, seed=9))
    assert 1.5 < bpd < 4.0  # the noise alone costs about 2.4 bits a pixel; uniform would be 8
    assert make_teacher("mae", {}, (8, 8, 1), (4, 4)).bpd(stripes) is None


def test_vqvae_bpd_adds_prior_and_reconstruction() -> None:
    images = striped(16)
    t = fitted("vqvae", images)
    rec, prior = t._loglik_parts(images)
    assert float(prior.max()) < 0 and float(rec.max()) < 0
    expected = -float((rec + prior).double().mean()) / (64 * math.log(2))
    assert t.bpd(images) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("decoder, spreads", [("independent", False), ("neighbourhood", True)])
def test_independent_decoder_reads_only_its_own_code(decoder: str, spreads: bool) -> None:
    images = np.tile(striped(4), (1, 2, 2, 1))  # 16 x 16: a 4 x 4 grid of patches
    t = fitted("vqvae", images, {"patch_decoder": decoder})
    codes = t.codes(images[:1])
    changed = codes.clone()
    changed[0, 5] = (codes[0, 5] + 1) % 8
    with torch.no_grad():
        a, b = (t.net.decode(t.net.codebook[c], t.geo) for c in (codes, changed))
    differs = (a != b).flatten(2).any(-1)[0]
    assert bool(differs[5]) and bool(differs[[0, 1, 2, 4, 6, 8, 9, 10]].any()) == spreads
    assert not differs[[3, 7, 11, 12, 13, 14, 15]].any()


def test_colour_images_with_per_channel_levels() -> None:
    rng = np.random.default_rng(2)
    images = np.stack([rng.integers(0, 256, (16, 8, 8)), rng.integers(0, 511, (16, 8, 8)),
                       rng.integers(0, 511, (16, 8, 8))], axis=-1).astype(np.int16)
    t = fitted("vqvae", images, levels=(256, 511, 511))
    assert t.features(images).shape == (16, 4, 8) and math.isfinite(t.bpd(images))
    with pytest.raises(TeacherError, match=r"channel 1 has values 0 \.\. 510, outside 0 \.\. 255"):
        make_teacher("pixels", {}, (8, 8, 3), (4, 4)).features(images)


# -- MAE locality -----------------------------------------------------------------------------------


def test_mae_feature_sees_only_the_3x3_neighbourhood() -> None:
    images = np.tile(striped(32), (1, 2, 2, 1))  # 16 x 16: a 4 x 4 grid
    t = fitted("mae", images)
    base = t.features(images[:1])[0]
    rng = np.random.default_rng(3)
    for j in range(16):
        other = images[:1].copy()
        rj, cj = divmod(j, 4)
        other[0, 4 * rj:4 * rj + 4, 4 * cj:4 * cj + 4] = rng.integers(0, 256, (4, 4, 1))
        f = t.features(other)[0]
        for i in range(16):
            ri, ci = divmod(i, 4)
            near = abs(ri - rj) <= 1 and abs(ci - cj) <= 1
            assert (not np.array_equal(f[i], base[i])) == near, (i, j)


# -- options and inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, options, message", [
    ("vae", {}, "unknown teacher 'vae'; the teachers are vqvae, mae, pixels, module"),
    ("vqvae", {"code": 3}, "teacher 'vqvae' has no option 'code'"),
    ("vqvae", {"codes": 2.5}, "option 'codes' must be a int"),
    ("vqvae", {"codes": True}, "option 'codes' must be a int"),
    ("vqvae", {"patch_decoder": "global"}, "patch_decoder must be independent or neighbourhood"),
    ("mae", {"mask": 1.0}, "mask must be a fraction"),
    ("pixels", {"dim": 3}, "takes no options"),
    ("module", {}, "give the factory"),
    ("module", {"factory": "nocolon"}, "must look like 'package.module:function'"),
    ("module", {"factory": "no_such_pkg_xyz:f"}, "cannot import 'no_such_pkg_xyz'"),
    ("module", {"factory": f"{EXAMPLE}:missing"}, "has no function 'missing'"),
    ("module", {"factory": f"{EXAMPLE}:not_a_module"}, "returned str, not a torch.nn.Module"),
    ("module", {"factory": f"{EXAMPLE}:make_encoder", "weights": "/nonexistent.safetensors"}, "does not exist"),
])
def test_bad_teacher_settings_are_named(kind: str, options: dict, message: str) -> None:
    with pytest.raises(TeacherError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_teacher(kind, options, (8, 8, 1), (4, 4))


def test_bad_geometry_and_images_are_named() -> None:
    with pytest.raises(TeacherError, match="4x4 patches do not tile 8x10 images"):
        make_teacher("pixels", {}, (8, 10, 1), (4, 4))
    with pytest.raises(TeacherError, match="one per channel"):
        make_teacher("pixels", {}, (8, 8, 3), (4, 4), levels=(256, 256))
    t = make_teacher("pixels", {}, (8, 8, 1), (4, 4), levels=16)
    with pytest.raises(TeacherError, match=r"shape \(N, 8, 8, 1\), got \(2, 8, 4, 1\)"):
        t.features(np.zeros((2, 8, 4, 1), np.uint8))
    with pytest.raises(TeacherError, match=r"values 0 \.\. 16, outside 0 \.\. 15"):
        t.features(np.full((2, 8, 8, 1), 16, np.uint8) * np.arange(2).reshape(2, 1, 1, 1).astype(np.uint8))
    with pytest.raises(TeacherError, match="integer pixel values"):
        t.features(np.zeros((2, 8, 8, 1), np.float32))


# -- the module teacher ----------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", ["make_encoder", "make_tokens_encoder"])
def test_module_teacher_loads_weights_and_returns_patch_features(factory: str, tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from teacher_module_example import PatchEncoder

    torch.manual_seed(5)
    reference = PatchEncoder()
    weights = tmp_path / "encoder.safetensors"
    save_file(reference.state_dict(), str(weights))
    options = {"factory": f"{EXAMPLE}:{factory}", "weights": str(weights)}
    t = fitted("module", images := striped(8), options)
    f = t.features(images, batch=3)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images / 255.0).float().permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
    np.testing.assert_allclose(f, expected.numpy(), rtol=1e-6, atol=1e-6)
    back = load_teacher(save_teacher(tmp_path / "t.safetensors", t), "module", options, (8, 8, 1), (4, 4))
    np.testing.assert_array_equal(back.features(images), f)


def test_module_teacher_with_a_wrong_output_shape_says_what_it_needs() -> None:
    t = make_teacher("module", {"factory": f"{EXAMPLE}:make_wrong_shape"}, (8, 8, 1), (4, 4))
    with pytest.raises(TeacherError, match=r"must return a tensor \(N, 4, d\) or \(N, d, 2, 2\); got \(2, 32\)"):
        t.features(striped(2))


def test_module_weights_that_do_not_fit_are_named(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"
    save_file({"conv.weight": torch.zeros(3, 3)}, str(weights))
    with pytest.raises(TeacherError, match="do not fit"):
        make_teacher("module", {"factory": f"{EXAMPLE}:make_encoder", "weights": str(weights)}, (8, 8, 1), (4, 4))


# -- latents: k-means and assignments --------------------------------------------------------------


def blobs(n: int = 600, k: int = 4, d: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (k, d))
    labels = rng.integers(0, k, n)
    return (centres[labels] + rng.normal(0, 0.3, (n, d))).astype(np.float32), centres


def test_kmeans_is_deterministic_given_the_seed_and_finds_separated_clusters() -> None:
    from pcdsl.distill.latents import kmeans

    x, centres = blobs()
    a, b = kmeans(x, 4, seed=0), kmeans(x, 4, seed=0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 3) and a.dtype == np.float32
    nearest = np.sqrt(((a[:, None] - centres[None]) ** 2).sum(-1)).min(axis=0)
    assert (nearest < 0.2).all()  # every true centre has a centroid on it
    sub = kmeans(x, 4, seed=3, sample=100)  # a seeded subsample still finds them
    np.testing.assert_array_equal(sub, kmeans(x, 4, seed=3, sample=100))
    assert (np.sqrt(((sub[:, None] - centres[None]) ** 2).sum(-1)).min(axis=0) < 0.3).all()


def test_kmeans_from_given_centroids_takes_lloyd_steps_from_them() -> None:
    from pcdsl.distill.latents import assign, kmeans

    x, _ = blobs(n=200, k=3, seed=4)
    start = x[:3].astype(np.float64) + 0.01
    one = kmeans(x, 3, seed=0, init=start, iterations=1)
    labels = assign(x, start)
    means = np.stack([x[labels == j].mean(axis=0) for j in range(3)])
    np.testing.assert_allclose(one, means, rtol=1e-5, atol=1e-5)  # one Lloyd step: the means


def test_assign_matches_brute_force_in_chunks() -> None:
    from pcdsl.distill.latents import assign

    rng = np.random.default_rng(5)
    x = rng.normal(size=(1003, 7)).astype(np.float32)
    c = rng.normal(size=(13, 7)).astype(np.float32)
    brute = ((x[:, None].astype(np.float64) - c[None]) ** 2).sum(-1).argmin(axis=1)
    got = assign(x, c, batch=100)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, brute)
    np.testing.assert_array_equal(assign(x, np.concatenate([c, c])), brute)  # ties: the lower index


def test_split_cluster_gives_centroids_and_labels() -> None:
    from pcdsl.distill.latents import split_cluster

    x, _ = blobs(n=300, k=2, seed=6)
    centroids, labels = split_cluster(x, 2, seed=0)
    assert centroids.shape == (2, 3) and labels.shape == (300,) and set(labels.tolist()) == {0, 1}
    for j in range(2):
        np.testing.assert_allclose(centroids[j], x[labels == j].mean(axis=0), rtol=1e-4, atol=1e-4)
    mean, zeros = split_cluster(x, 1, seed=0)
    np.testing.assert_allclose(mean[0], x.mean(axis=0), rtol=1e-5)
    assert not zeros.any()


@pytest.mark.parametrize("call, message", [
    (lambda k, x: k(x[:5], 6, seed=0), "6 clusters but only 5 feature vectors"),
    (lambda k, x: k(np.zeros((10, 2), np.float32), 3, seed=0), "only 1 distinct feature vectors for 3 clusters"),
    (lambda k, x: k(x, 2, seed=0, init=np.zeros((3, 3))), r"init must have shape \(2, 3\)"),
    (lambda k, x: k(x[:, 0], 2, seed=0), "2-d array"),
    (lambda k, x: k(np.full((4, 2), np.nan), 2, seed=0), "NaN"),
])
def test_kmeans_errors_are_clear(call: object, message: str) -> None:
    from pcdsl.distill.latents import LatentError, kmeans

    x, _ = blobs(n=50)
    with pytest.raises(LatentError, match=message):
        call(kmeans, x)  # type: ignore[operator]
