"""Latents: k-means on patch features and hard assignments to the nearest centroid.

k-means is scikit-learn's Lloyd algorithm (one seeded run, k-means++ or given starting centroids),
fitted on a seeded subsample when there are many features; the assignment of every feature is
then exact (float64 distances, chunked so memory stays bounded), ties going to the lower index.
"""

from __future__ import annotations

import warnings

import numpy as np


class LatentError(ValueError):
    """k-means was asked for something the features cannot give (too few points, bad shapes)."""


def _check_features(features: np.ndarray, what: str = "features") -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] < 1:
        raise LatentError(f"{what} must be a 2-d array (points, dimensions), got shape {features.shape}")
    if features.dtype.kind not in "fiu":
        raise LatentError(f"{what} must be numeric, got dtype {features.dtype}")
    if not np.isfinite(features).all():
        raise LatentError(f"{what} contain NaN or infinite values")
    return features


def kmeans(features: np.ndarray, clusters: int, seed: int, iterations: int = 50, init: np.ndarray | None = None,
           sample: int | None = 200_000) -> np.ndarray:
    """Centroids (clusters, d) float32 of k-means on `features` (n, d).

    `seed` fixes the subsample and the k-means++ start, so equal inputs give equal centroids. When
    n > `sample`, k-means runs on `sample` rows drawn without replacement (None: all rows). `init`
    (clusters, d) starts Lloyd's iterations from given centroids instead (progressive growing
    re-runs k-means from the old centroids). Raises :class:`LatentError` when there are fewer
    points, or fewer distinct points, than clusters."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    features = _check_features(features)
    n, d = features.shape
    if clusters < 1:
        raise LatentError(f"kmeans: clusters must be at least 1, got {clusters}")
    if clusters > n:
        raise LatentError(f"kmeans: {clusters} clusters but only {n} feature vectors; ask for at most {n} clusters "
                          "or give more data")
    if iterations < 1:
        raise LatentError(f"kmeans: iterations must be at least 1, got {iterations}")
    start: np.ndarray | str = "k-means++"
    if init is not None:
        start = np.asarray(init, dtype=np.float64)
        if start.shape != (clusters, d):
            raise LatentError(f"kmeans: init must have shape ({clusters}, {d}), got {start.shape}")
    rng = np.random.default_rng(seed)
    if sample is not None and n > max(sample, clusters):
        features = features[np.sort(rng.choice(n, size=max(sample, clusters), replace=False))]
    data = np.ascontiguousarray(features, dtype=np.float64)
    model = KMeans(n_clusters=clusters, init=start, n_init=1, max_iter=iterations, tol=0.0,
                   random_state=int(rng.integers(2**31 - 1)), algorithm="lloyd")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(data)
    if any(issubclass(w.category, ConvergenceWarning) and "distinct" in str(w.message) for w in caught):
        distinct = len(np.unique(data, axis=0))
        raise LatentError(f"kmeans: only {distinct} distinct feature vectors for {clusters} clusters; "
                          "ask for fewer clusters")
    return np.asarray(model.cluster_centers_, dtype=np.float32)


def assign(features: np.ndarray, centroids: np.ndarray, batch: int = 65536) -> np.ndarray:
    """Index (n,) int64 of the nearest centroid (Euclidean) of every row of `features`, computed in
    float64 `batch` rows at a time; ties go to the lowest index."""
    features = _check_features(features)
    centroids = _check_features(centroids, "centroids")
    if features.shape[1] != centroids.shape[1]:
        raise LatentError(f"assign: features have {features.shape[1]} dimensions, centroids "
                          f"{centroids.shape[1]}")
    if batch < 1:
        raise LatentError(f"assign: batch must be at least 1, got {batch}")
    c = centroids.astype(np.float64)
    c_sq = (c * c).sum(axis=1)
    out = np.empty(len(features), dtype=np.int64)
    for s in range(0, len(features), batch):
        x = features[s:s + batch].astype(np.float64)
        # |x - c|^2 without the |x|^2 term, which is the same for every centroid
        out[s:s + batch] = (c_sq[None, :] - 2.0 * (x @ c.T)).argmin(axis=1)
    return out


def split_cluster(features_of_cluster: np.ndarray, parts: int, seed: int,
                  init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split one cluster's features into `parts` sub-clusters: (centroids (parts, d) float32,
    labels (n,) int64). With one part, the centroid is the mean. For progressive growing."""
    features = _check_features(features_of_cluster, "features of the cluster")
    if parts == 1 and init is None:
        return features.mean(axis=0, dtype=np.float64)[None].astype(np.float32), np.zeros(len(features), np.int64)
    centroids = kmeans(features, parts, seed, init=init, sample=None)
    return centroids, assign(features, centroids)
