"""The numba backend: a LayeredPlan flattened to arrays and run by numba kernels on the CPU.

``flatten`` turns the plan into the arrays of ``runtime.ARRAYS``; ``runtime.Circuit``
answers the queries with the kernels of ``kernels.py`` (compiled once for every
circuit and cached on disk); :class:`NumbaModel` adds what pcdsl needs on top:
parameters in and flows out per node group, as the torch backend gives them.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from pcdsl.backends import PlanModel, add_weight_flows, api, split_input_flows

from pcdsl.plan import InputLayer, LayeredPlan, ProductLayer, SumLayer
from pcdsl.reference import Flows

from . import kernels
from .runtime import BUFFER_VALUES, TILE, Circuit

UNSUPPORTED: dict[str, str] = {}  # every construct of pcdsl.backends.CONSTRUCTS is lowered


def lower(plan: LayeredPlan, device: str = "cpu", dtype: str = "float32", tile: int = TILE,
          buffer_values: int = BUFFER_VALUES) -> NumbaModel:
    """`buffer_values`: the most values (slots x samples) a log_prob or flows buffer holds; larger
    batches run in pieces (see ``runtime.BUFFER_VALUES``)."""
    if str(device) != "cpu":
        raise ValueError(f"the numba backend runs on the CPU only (device 'cpu'), not {str(device)!r}; "
                         "use the torch backend for GPUs")
    return NumbaModel(plan, str(dtype).removeprefix("torch."), tile, buffer_values)


def flatten(plan: LayeredPlan) -> dict[str, np.ndarray]:
    """The plan as the flat arrays the kernels read (see ``runtime.ARRAYS``)."""
    cat: list[np.ndarray] = []
    gauss: list[np.ndarray] = []
    ops: list[list[int]] = []
    pindex: list[np.ndarray] = []
    sindex: list[np.ndarray] = []
    sptr: list[np.ndarray] = []
    scol: list[np.ndarray] = []
    lp_size = p_size = s_size = w_size = folds = r_size = e_size = 0
    for layer in plan.layers:
        if isinstance(layer, InputLayer):
            slots = np.arange(layer.start, layer.stop)
            if layer.family == "gaussian":
                gauss.append(np.stack([slots, layer.var], axis=1))
                continue
            table = layer.params["log_probs"]
            width = table.shape[1]
            sizes = np.array(plan.cardinalities, dtype=object)[layer.var].astype(np.int64)
            # tied leaves read the same rows of lp: their units share an offset
            cat.append(np.stack([slots, layer.var, lp_size + width * layer.rows, sizes], axis=1))
            lp_size += table.size
        elif isinstance(layer, ProductLayer):
            units, fan_in = layer.index.shape
            ops.append([kernels.PRODUCT, layer.start, units, fan_in, 0, p_size, 0, 0, 0])
            pindex.append(layer.index.reshape(-1))
            p_size += layer.index.size
        else:
            f, m, c = layer.shape
            kind = kernels.SUM if layer.sparse is None else kernels.SPARSE
            ops.append([kind, layer.start, f, m, c, s_size, w_size, folds, r_size])
            sindex.append(layer.index.reshape(-1))
            if layer.sparse is not None:
                sptr.append(layer.sparse.indptr + e_size)  # offsets into scol: every sparse layer's edges
                scol.append(layer.sparse.cols)
                r_size, e_size = r_size + len(layer.sparse.indptr), e_size + layer.sparse.edges
            s_size, w_size, folds = s_size + layer.index.size, w_size + _weight_count(layer), folds + f
    return {
        "cat": _concat(cat, np.int64, (0, 4)), "gauss": _concat(gauss, np.int64, (0, 2)),
        "ops": np.array(ops, dtype=np.int64).reshape(-1, kernels.OPS_COLUMNS),
        "pindex": _concat(pindex, np.int64, (0,)), "sindex": _concat(sindex, np.int64, (0,)),
        "sptr": _concat(sptr, np.int64, (0,)), "scol": _concat(scol, np.int64, (0,)),
        **parameter_arrays(plan),
    }


def parameter_arrays(plan: LayeredPlan) -> dict[str, np.ndarray]:
    """The plan's parameters as the flat arrays ``lp``, ``gmean``, ``gstd`` and ``weights``, in the
    order ``flatten`` lays out its index arrays (what an EM step replaces)."""
    lp: list[np.ndarray] = []
    gmean: list[np.ndarray] = []
    gstd: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    for layer in plan.layers:
        if isinstance(layer, InputLayer):
            if layer.family == "gaussian":  # unit by unit (few units: a copy per tied leaf costs little)
                gmean.append(layer.params["mean"][layer.rows])
                gstd.append(layer.params["std"][layer.rows])
            else:
                lp.append(layer.params["log_probs"].reshape(-1))
        elif isinstance(layer, SumLayer):
            weights.append(layer_weights(layer))
    return {"lp": _concat(lp, np.float64, (0,)), "gmean": _concat(gmean, np.float64, (0,)),
            "gstd": _concat(gstd, np.float64, (0,)), "weights": _concat(weights, np.float64, (0,))}


def layer_weights(layer: SumLayer) -> np.ndarray:
    """A sum layer's weights as the kernels read them: the (F, M, C) block flattened, or the kept
    edges of a sparse layer in CSR order."""
    flat = layer.weights.reshape(-1)
    return flat if layer.sparse is None else flat[layer.sparse.flat(layer.shape[2])]


def _weight_count(layer: SumLayer) -> int:
    return layer.weights.size if layer.sparse is None else layer.sparse.edges


def _dense_flows(layer: SumLayer, values: np.ndarray) -> np.ndarray:
    """A sum layer's weight flows as the kernels wrote them, as its (F, M, C) block."""
    if layer.sparse is None:
        return values.reshape(layer.shape)
    out = np.zeros(layer.weights.size)
    out[layer.sparse.flat(layer.shape[2])] = values
    return out.reshape(layer.shape)


def _concat(parts: list[np.ndarray], dtype: type, empty: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty, dtype=dtype)


class NumbaModel(PlanModel):
    """A compiled circuit on the numba kernels, with the query API of the torch backend.
    Data: (batch, variables) arrays; -1 or NaN marks a missing value. Results: numpy arrays."""

    def __init__(self, plan: LayeredPlan, dtype: str = "float32", tile: int = TILE, buffer_values: int = BUFFER_VALUES):
        self.plan = plan
        self.circuit = Circuit(flatten(plan), plan.variables, plan.cardinalities, plan.root, plan.num_slots,
                               dtype=dtype, tile=tile, buffer_values=buffer_values)
        self._sparse = _patterns(plan)

    def _load(self, layers: list[int] | None) -> None:
        if _patterns(self.plan) != self._sparse:  # new zeros (or revived edges) moved the sparse edges
            old = self.circuit
            self.__dict__.pop("offsets", None)
            self.circuit = Circuit(flatten(self.plan), self.plan.variables, self.plan.cardinalities, self.plan.root,
                                   self.plan.num_slots, dtype=old.dtype.name, tile=old.tile,
                                   buffer_values=old.buffer_values)
            self._sparse = _patterns(self.plan)
            return
        if layers is None:
            self.circuit.set_arrays(parameter_arrays(self.plan))
            return
        parts: dict[str, list[tuple[int, np.ndarray]]] = {"lp": [], "gmean": [], "gstd": [], "weights": []}
        for i in layers:
            layer, start = self.plan.layers[i], self.offsets[i]
            if isinstance(layer, SumLayer):
                parts["weights"].append((start, layer_weights(layer)))
            elif isinstance(layer, InputLayer) and layer.family == "gaussian":
                parts["gmean"].append((start, layer.params["mean"][layer.rows]))
                parts["gstd"].append((start, layer.params["std"][layer.rows]))
            elif isinstance(layer, InputLayer):
                parts["lp"].append((start, layer.params["log_probs"].reshape(-1)))
        self.circuit.set_slices(parts)

    @functools.cached_property
    def offsets(self) -> dict[int, int]:
        """Where each layer's parameters start in the flat array that holds them (see ``flatten``)."""
        out: dict[int, int] = {}
        at = {"lp": 0, "gauss": 0, "weights": 0}
        for i, layer in enumerate(self.plan.layers):
            if isinstance(layer, SumLayer):
                kind, size = "weights", _weight_count(layer)
            elif isinstance(layer, InputLayer):
                kind = "gauss" if layer.family == "gaussian" else "lp"
                size = len(layer.var) if kind == "gauss" else layer.params["log_probs"].size
            else:
                continue
            out[i] = at[kind]
            at[kind] += size
        return out

    @api.log_prob
    def log_prob(self, x: Any) -> np.ndarray:
        """log p(x) per row; missing entries are marginalised."""
        return self.circuit.log_prob(_numpy(x))

    @api.conditional
    def conditional(self, x: Any, query: Any) -> np.ndarray:
        """log p(x_Q | x_E); NaN where p(x_E) = 0."""
        return self.circuit.conditional(_numpy(x), query)

    @api.map_state
    def map(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """(completion, its log p) by max-product and backtracking (exact MPE when deterministic)."""
        return self.circuit.map(_numpy(x))

    @api.sample
    def sample(self, n: int, evidence: Any = None, seed: int = 0) -> np.ndarray:
        """n ancestral samples; with evidence, from p(missing | observed)."""
        return self.circuit.sample(n, None if evidence is None else _numpy(evidence), seed)

    @api.flows
    def flows(self, x: Any) -> Flows:
        """Expected sufficient statistics of every parameter, summed over the batch."""
        raw = self.circuit.flows(_numpy(x))
        result = Flows(log_likelihood=raw["log_likelihood"])
        w_at = lp_at = g_at = 0
        for layer in self.plan.layers:
            if isinstance(layer, SumLayer):
                size = _weight_count(layer)
                block = _dense_flows(layer, raw["weights"][w_at:w_at + size])
                w_at += size
                add_weight_flows(layer, block, result, self.weight_rows)
            elif isinstance(layer, InputLayer) and layer.family == "categorical":
                rows, width = layer.params["log_probs"].shape
                counts = raw["counts"][lp_at:lp_at + rows * width].reshape(rows, width)
                lp_at += rows * width
                split_input_flows(layer, {"counts": counts}, self.plan, result)
            elif isinstance(layer, InputLayer):
                stats = raw["gaussian"][g_at:g_at + len(layer.var)]
                g_at += len(layer.var)
                rows = len(layer.params["mean"])  # tied leaves' statistics add up in their rows
                per_row = {key: np.bincount(layer.rows, weights=stats[:, i], minlength=rows)
                           for i, key in enumerate(("n", "dx", "dxx"))}
                split_input_flows(layer, per_row, self.plan, result)
        return result


def _patterns(plan: LayeredPlan) -> list[tuple[bytes, bytes] | None]:
    """Each layer's sparse edges, comparable: the structure of the flat arrays."""
    return [(layer.sparse.indptr.tobytes(), layer.sparse.cols.tobytes())
            if isinstance(layer, SumLayer) and layer.sparse is not None else None for layer in plan.layers]


def _numpy(x: Any) -> Any:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x
