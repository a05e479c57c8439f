"""EM of the top level on exact soft evidence, computed once.

With the patch circuits frozen, the distilled circuit's top level sees each image only through
the K numbers log p_k(x_i) of every position i: the leaf over Z_i became a sum over the K heads
at position i. So the top level trains on a small circuit, the *evidence circuit*: the top
level as composed (the same node names, so the same parameter groups), with each position's
heads replaced by one input group of K units whose log-likelihoods are those numbers (neural
leaves of the torch backend). The numbers are computed once per image, in one pass of the patch
family per position, instead of in every batch of every epoch; each EM step then costs the top
level alone, and its flows equal the distilled circuit's flows of the top-level groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from pcdsl.distill.compose import PatchFamily, add_top, training_circuit
from pcdsl.ir.graph import CircuitGraph
from pcdsl.params import Parameters, initialise


def evidence_circuit(top: CircuitGraph, top_params: Parameters, clusters: int) -> tuple[CircuitGraph, Parameters]:
    """The top level over Z_1..Z_m with input group ``ev{i}`` (K units) in place of position
    i's heads; parameters named as in the distilled circuit (``top/...``)."""
    graph = CircuitGraph("soft_evidence", top.variables)
    evidence = [(graph.add_input(f"ev{i}", i, "categorical", clusters).name,) for i in range(len(top.variables))]
    params = initialise(graph, 0)  # the ev{i} tables: never read, their values come with each batch
    params.weights = {}
    add_top(graph, top, top_params, evidence, params)
    return graph, params


def head_values(family: PatchFamily, params: Parameters, patches: np.ndarray, dtype: str = "float32",
                batch: int = 8192) -> np.ndarray:
    """(n, K) log p_k(x) of every patch (n, D) under every head k of the family (`params`: its
    training circuit's), in one torch pass per batch."""
    import pcdsl

    graph = training_circuit(family)
    model = cast(Any, pcdsl.compile(graph, "torch", params=params, dtype=dtype))
    slots = np.concatenate([model.plan.slot_of[h] + np.arange(family.graph.node(h).num_units) for h in family.heads])
    rows = np.concatenate([patches, np.full((len(patches), 1), -1)], axis=1).astype(np.float64)  # Z missing
    out = [model.node_values(rows[lo:lo + batch], slots).cpu().numpy() for lo in range(0, len(rows), batch)]
    return np.concatenate(out) if out else np.empty((0, len(slots)), dtype=np.dtype(dtype))


class EvidenceModel:
    """The evidence circuit compiled (torch), answering what :class:`pcdsl.learn.train.Trainer`
    asks of a model on rows that are image numbers: row r's leaves are ``values[r]`` (m, K)."""

    def __init__(self, graph: CircuitGraph, params: Parameters, values: np.ndarray, dtype: str = "float64"):
        import torch

        import pcdsl

        self.model = cast(Any, pcdsl.compile(graph, "torch", params=params, dtype=dtype))
        self.plan = self.model.plan
        self.variables, self.cardinalities = ("image",), (len(values),)  # rows are image numbers
        self.values = torch.as_tensor(values.reshape(len(values), -1))
        m = len(graph.variables)
        self.slots = torch.as_tensor(np.concatenate([self.plan.slot_of[f"ev{i}"] + np.arange(values.shape[2])
                                                     for i in range(m)]))
        self.missing = np.full((1, m), -1.0)

    def set_parameters(self, params: Parameters) -> None:
        self.model.set_parameters(params)

    def _passes(self, rows: np.ndarray, flows: bool) -> tuple[Any, Any]:
        index = np.asarray(rows, dtype=np.int64).reshape(-1)
        return self.model.passes(np.repeat(self.missing, len(index), axis=0), self.slots, self.values[index], flows)

    def flows(self, rows: np.ndarray) -> Any:
        return self._passes(rows, True)[1]

    def log_prob(self, rows: np.ndarray) -> np.ndarray:
        return self._passes(rows, False)[0].double().cpu().numpy()  # type: ignore[no-any-return]


def position_values(family: PatchFamily, parts: Sequence[Parameters], patches: np.ndarray,
                    dtype: str = "float32") -> np.ndarray:
    """(n, m, K) log p_k(x_i) of images cut into patches (n, m, D); `parts`: the family's
    training-circuit parameters, one for all positions or one per position."""
    n, m, d = patches.shape
    if len(parts) == 1:
        return head_values(family, parts[0], patches.reshape(n * m, d), dtype).reshape(n, m, -1)
    return np.stack([head_values(family, parts[i], patches[:, i], dtype) for i in range(m)], axis=1)


def fit_top(graph: CircuitGraph, start: Parameters, family: PatchFamily, parts: Sequence[Parameters],
            patches: np.ndarray, valid: np.ndarray | None, fit: Any, resume: Any = None) -> Parameters:
    """EM of the evidence circuit `graph` (from :func:`evidence_circuit`) on images cut into
    patches (n, m, D), the patch family frozen at `parts`: the top level's parameters, named as in
    the distilled circuit. Resumable like :func:`pcdsl.distill.lvd.train`."""
    from pcdsl.distill import lvd

    values = [position_values(family, parts, patches, fit.dtype)]
    if valid is not None:
        values.append(position_values(family, parts, valid, fit.dtype))
    model = EvidenceModel(graph, start, np.concatenate(values), fit.dtype)
    rows = np.arange(len(patches), dtype=np.float64)[:, None]
    valid_rows = None if valid is None else len(patches) + np.arange(len(valid), dtype=np.float64)[:, None]
    return lvd.train(graph, start, rows, valid_rows, fit, resume if resume is not None else lvd.Resume(),
                     learn=set(start.weights), model=model)


def with_top(params: Parameters, top: Parameters) -> Parameters:
    """The distilled circuit's parameters with the top level's groups taken from `top`."""
    weights = {g: top.weights.get(g, w) for g, w in params.weights.items()}
    return Parameters(params.inputs, weights, params.fixed)
