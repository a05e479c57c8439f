"""A circuit module's parameters as pcdsl :class:`~pcdsl.params.Parameters`, and EM on them.

The module keeps logits (see :mod:`.module`); these functions turn them into normalised
probability rows and back, so a module's parameters save as a native model file, compile into
any backend, and take EM updates from :func:`pcdsl.learn.em.em_update`, the same update
``pcdsl train`` makes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pcdsl.params import Parameters

if TYPE_CHECKING:
    from .module import CircuitModule

TINY = 1e-300  # a non-zero probability below this is stored as log of it (exp underflows anyway)


def module_parameters(module: CircuitModule) -> Parameters:
    """The module's current parameters, normalised, float64 numpy arrays by group."""
    from .module import key

    layout = module.layout
    params = Parameters(fixed=module.plan.fixed)
    with torch.no_grad():
        for columns, groups in layout.sums.items():
            parts = [module.weights[key(g)] for g in groups]
            for g, block in _split(module._normalised(parts, f"_sum_zeros_{columns}"), groups, parts):
                params.weights[g] = block
        for size, groups in layout.categories.items():
            parts = [module.logits[key(g)] for g in groups]
            for g, block in _split(module._normalised(parts, f"_categorical_zeros_{size}"), groups, parts):
                params.inputs[g] = {"p": block[:, 1].copy()} if g in layout.bernoulli else {"probs": block}
        for g, values in layout.indicators.items():
            params.inputs[g] = {"value": values.copy()}
        for g in layout.gaussians:
            params.inputs[g] = {"mean": _numpy(module.means[key(g)]), "std": _numpy(module.log_stds[key(g)].exp())}
    return params


def _split(log_rows: torch.Tensor, groups: list[str], parts: list[torch.Tensor]) -> list[tuple[str, np.ndarray]]:
    """Normalised rows of several groups, cut back into each group's block of probabilities."""
    probs = _numpy(log_rows.exp())
    bounds = np.cumsum([0] + [len(p) for p in parts])
    return [(g, probs[lo:hi]) for g, lo, hi in zip(groups, bounds[:-1], bounds[1:], strict=True)]


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy().copy()


def load_module_parameters(module: CircuitModule, params: Parameters, keep: frozenset[str] = frozenset()) -> None:
    """Set the module's logits from normalised parameters, except the groups in `keep` (zeros
    the module holds as structure stay zeros; a zero elsewhere becomes the smallest weight
    that is not one)."""
    from .module import key

    layout = module.layout
    with torch.no_grad():
        for groups in layout.sums.values():
            for g in groups:
                if g not in keep:
                    _set(module.weights[key(g)], params.weights[g])
        for groups in layout.categories.values():
            for g in groups:
                p = params.inputs[g]
                if g not in keep:
                    _set(module.logits[key(g)], np.asarray(p["probs"]) if "probs" in p
                         else np.stack([1 - p["p"], p["p"]], axis=1))
        for g in layout.gaussians:
            if g in keep:
                continue
            _set(module.means[key(g)], params.inputs[g]["mean"], log=False)
            _set(module.log_stds[key(g)], np.log(params.inputs[g]["std"]), log=False)


def _set(target: torch.Tensor, values: Any, log: bool = True) -> None:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != tuple(target.shape):
        raise ValueError(f"parameters of shape {array.shape} for a parameter of shape {tuple(target.shape)}")
    if log:
        array = np.log(np.maximum(array, TINY))
    target.copy_(torch.as_tensor(array))


def em_step(module: CircuitModule, x: Any, values: torch.Tensor | None, step: float, pseudocount: float,
            **options: Any) -> float:
    """One EM update of the module's parameters from a batch; the batch's mean log-likelihood."""
    from pcdsl.learn.em import em_update

    model = module.synced()
    x = module.evidence(x, values)
    log_p, flows = model.passes(x, module.leaf_slots, values)
    assert flows is not None
    log_likelihood = float(log_p.double().sum())
    params = module.to_parameters()
    params.fixed = params.fixed | _frozen(module)
    # kept groups are not written back: log(softmax(theta)) need not be theta to the last bit
    load_module_parameters(module, em_update(params, flows, step, pseudocount, **options), params.fixed)
    return log_likelihood / max(1, len(x))


def _frozen(module: CircuitModule) -> frozenset[str]:
    """The groups whose parameters do not require gradients: EM keeps them too."""
    from .module import group_name

    out: set[str] = set()
    for container in (module.weights, module.logits, module.means):
        out.update(group_name(k) for k, p in container.items() if not p.requires_grad)
    return frozenset(out)
