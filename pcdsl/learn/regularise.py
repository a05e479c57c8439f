"""The two regularisers of Liu & Van den Broeck, "Tractable Regularization of Probabilistic
Circuits" (NeurIPS 2021): data softening and entropy regularisation, both inside EM.

**Data softening** (``soften = beta``) treats each observed value v of a categorical or Bernoulli
variable as soft evidence: the value is right with probability 1 - beta, and beta is spread evenly
over the other values. The softened likelihood of a row is
``sum_x' prod_i k(x_i | x'_i) p(x')`` with ``k(v | u) = K[v, u]``. It needs no new backend code:
evaluating the circuit with leaf parameters ``theta' = K theta`` gives exactly that likelihood,
and the flows it returns count the observed values v (``F'_v``); the expected counts of the true
values are ``F_u = theta_u sum_v F'_v K[v, u] / theta'_v`` (EM over the true value as a hidden
variable, so full-batch EM still never lowers the softened training likelihood).

**Entropy regularisation** (``entropy = tau``) adds ``tau N H(X, Z)`` to the log-likelihood of
the N rows the flows came from, where H(X, Z) is the entropy of the circuit with the choice at
every sum unit as a hidden variable (the paper's deterministic view of a non-deterministic
circuit). That entropy is ``sum_n r_n H(theta_n)`` over sum units and leaf units, r_n the
probability that the circuit's sampling process reaches unit n: the flows of one row with every
value missing. With r held at its value before the step (as EM holds its posteriors), each
parameter row maximises ``sum_c G_c log theta_c + lam H(theta)`` with ``G = F + a/|ch|`` and
``lam = tau N r_n``; :func:`entropy_normalise` solves it. tau = 0 is plain EM, exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pcdsl.params import Parameters
from pcdsl.reference import Flows

NEWTON_STEPS = 60  # both Newton iterations converge monotonically; this only bounds a runaway
TOLERANCE = 1e-12


def _np(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def normalise(counts: np.ndarray, pseudocount: float) -> np.ndarray:
    """Plain EM's M step per row: ``(counts + a/k) / (sum counts + a)``; uniform where nothing arrives."""
    k = counts.shape[-1]
    total = counts.sum(axis=-1, keepdims=True) + pseudocount
    out = (counts + pseudocount / k) / np.where(total > 0, total, 1.0)
    return np.where(total > 0, out, 1.0 / k)


# --- data softening ---------------------------------------------------------------------------

def soften_table(probs: np.ndarray, beta: float) -> np.ndarray:
    """``K theta`` for each row of a (units, k) table: what a leaf looks like under soft evidence."""
    k = probs.shape[-1]
    spread = beta / (k - 1) if k > 1 else 0.0
    return (1.0 - beta - spread) * probs + spread * probs.sum(axis=-1, keepdims=True)


def softened(params: Parameters, beta: float) -> Parameters:
    """The parameters that evaluate the softened likelihood (categorical and Bernoulli leaves)."""
    out = Parameters({k: dict(v) for k, v in params.inputs.items()}, params.weights)
    for node, p in params.inputs.items():
        if "probs" in p:
            out.inputs[node]["probs"] = soften_table(p["probs"], beta)
        elif "p" in p:
            out.inputs[node]["p"] = soften_table(np.stack([1 - p["p"], p["p"]], axis=1), beta)[:, 1]
    return out


def unsoften_counts(counts: np.ndarray, probs: np.ndarray, beta: float) -> np.ndarray:
    """Expected counts of the true values from counts of the observed ones (both (units, k))."""
    soft = soften_table(probs, beta)
    ratio = np.divide(counts, soft, out=np.zeros_like(counts), where=soft > 0)  # F'_v / theta'_v
    back = soften_table(ratio, beta)  # sum_v K[v, u] F'_v / theta'_v: K is symmetric
    return probs * back


def unsoften(flows: Flows, params: Parameters, beta: float) -> Flows:
    """Flows of the softened circuit with leaf counts turned into counts of the true values."""
    out = Flows(flows.weights, dict(flows.inputs), flows.node, flows.log_likelihood)
    for node, stats in flows.inputs.items():
        p = params.inputs.get(node, {})
        if "counts" not in stats or not ("probs" in p or "p" in p):
            continue
        probs = p["probs"] if "probs" in p else np.stack([1 - p["p"], p["p"]], axis=1)
        out.inputs[node] = {**stats, "counts": unsoften_counts(_np(stats["counts"]).astype(np.float64),
                                                              probs, beta)}
    return out


# --- entropy regularisation ---------------------------------------------------------------------

def reach(model: Any, num_vars: int) -> Flows:
    """Flows of one row with every value missing: the probability of reaching each unit and edge."""
    return model.flows(np.full((1, num_vars), np.nan))


def entropy_weights(reached: Flows, tau: float, samples: int) -> dict[str, np.ndarray]:
    """``tau N r_n`` for every parameter row, keyed by weight group or leaf name."""
    out = {group: tau * samples * _np(f).astype(np.float64).sum(axis=1) for group, f in reached.weights.items()}
    for node, stats in reached.inputs.items():
        if "counts" in stats:
            out[node] = tau * samples * _np(stats["counts"]).astype(np.float64).sum(axis=1)
    return out


def entropy_normalise(counts: np.ndarray, pseudocount: float, lam: np.ndarray) -> np.ndarray:
    """Per row, the theta on the simplex that maximises ``sum_c G_c log theta_c + lam H(theta)``,
    ``G = counts + pseudocount / k``. ``lam = 0`` rows get plain EM's ``G / sum G``.

    The stationary condition is ``G_c / theta_c - lam log theta_c = nu`` for one nu per row. For a
    given nu each ``u_c = log theta_c`` solves a convex decreasing equation (Newton from the left
    converges monotonically); ``S(nu) = sum_c theta_c(nu)`` is convex and decreasing, and Newton from
    ``nu = max G`` (where S >= 1) climbs monotonically to ``S = 1``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    plain = normalise(counts, pseudocount)
    lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), counts.shape[:-1])
    rows = (lam > 0) & (counts.sum(axis=-1) + pseudocount > 0)  # a row nothing reaches stays uniform
    if not rows.any():
        return plain
    g = counts[rows] + pseudocount / counts.shape[-1]
    out = plain.copy()
    out[rows] = _solve(g, lam[rows][:, None])
    return out


def _solve(g: np.ndarray, lam: np.ndarray) -> np.ndarray:
    nu = g.max(axis=1, keepdims=True)  # S(max G) >= 1: every theta_c <= 1 there
    u = _inner(g, lam, nu)
    for _ in range(NEWTON_STEPS):
        theta = np.exp(u)
        with np.errstate(divide="ignore"):
            ratio = np.exp(np.log(g) - u)  # g e^-u, 0 where g = 0
        slope = -(theta / (ratio + lam)).sum(axis=1, keepdims=True)  # dS/dnu < 0
        step = np.maximum((1.0 - theta.sum(axis=1, keepdims=True)) / slope, 0.0)
        nu = nu + step
        u = _inner(g, lam, nu)
        if np.all(step <= TOLERANCE * nu):
            break
    theta = np.exp(u)
    return theta / theta.sum(axis=1, keepdims=True)


def _inner(g: np.ndarray, lam: np.ndarray, nu: np.ndarray) -> np.ndarray:
    """u with ``g e^-u - lam u = nu`` elementwise, by Newton from a point left of the root."""
    with np.errstate(divide="ignore"):
        log_g = np.log(g)  # -inf where g = 0: that term vanishes instead of 0 * inf
    u = np.maximum(log_g - np.log(nu), -nu / lam)  # at both, g e^-u - lam u - nu >= 0
    for _ in range(NEWTON_STEPS):
        ratio = np.exp(log_g - u)  # g e^-u
        step = (ratio - lam * u - nu) / (ratio + lam)
        u = u + step
        if np.all(np.abs(step) <= TOLERANCE * np.maximum(np.abs(u), 1.0)):
            break
    return u
