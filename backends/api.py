"""The query API every backend shares, around each backend's own implementation.

Each decorator checks a query's arguments with :mod:`pcdsl.arguments` (so every backend refuses
the same bad call with the same error), answers empty batches and zero sample counts with empty
results of the right type, and types the results: numpy in, numpy out; torch in, torch out (on
the input's device); completions and samples of circuits whose variables are all discrete are
integers (int64; -1 where the evidence has probability zero and no completion exists).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from pcdsl import arguments
from pcdsl.arguments import is_tensor
from pcdsl.reference import Flows

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _evidence(model: Any, x: Any, name: str = "x") -> Any:
    return arguments.evidence(x, model.plan.variables, model.plan.cardinalities, name)


def _missing_row(model: Any, like: Any) -> Any:
    """One row with every value missing (what an empty batch is answered with, then cut to 0 rows)."""
    row = np.full((1, model.plan.num_vars), np.nan)
    if is_tensor(like):
        import torch

        return torch.as_tensor(row, device=like.device)
    return row


def _typed(result: Any, like: Any) -> Any:
    """`result` as a tensor on `like`'s device when `like` is a tensor, else as a numpy array."""
    if is_tensor(like):
        import torch

        return torch.as_tensor(result, device=like.device) if not is_tensor(result) else result
    return result.detach().cpu().numpy() if is_tensor(result) else np.asarray(result)


def _values(model: Any, result: Any, like: Any) -> Any:
    """Completions or samples: typed like `like`, and int64 when every variable is discrete."""
    out = _typed(result, like)
    if any(c is None for c in model.plan.cardinalities):
        return out
    if is_tensor(out):
        import torch

        return torch.nan_to_num(out, nan=-1.0).to(torch.int64)
    return np.nan_to_num(out, nan=-1.0).astype(np.int64)


def _row_bytes(model: Any) -> float:
    """Memory per row of a top-down pass (MAP, sampling): value and active buffers over every slot,
    the random draws of every sum fold and variable, the evidence and its copies."""
    dtype = getattr(model, "dtype", None) or getattr(getattr(model, "circuit", None), "dtype", "float64")
    itemsize = np.dtype(str(dtype).removeprefix("torch.")).itemsize
    folds = sum(layer.shape[0] for layer in model.plan.layers if hasattr(layer, "weights"))
    return model.plan.num_slots * (2 * itemsize + 1) + 8 * folds + 32 * model.plan.num_vars


def _device(model: Any) -> str:
    return str(getattr(model, "device", "cpu"))


def log_prob(method: _Method) -> _Method:
    @functools.wraps(method)
    def run(self: Any, x: Any) -> Any:
        rows = _evidence(self, x)
        if len(rows) == 0:
            return _typed(method(self, _missing_row(self, rows)), x)[:0]
        return _typed(method(self, rows), x)
    return run  # type: ignore[return-value]


def conditional(method: _Method) -> _Method:
    @functools.wraps(method)
    def run(self: Any, x: Any, query: Any) -> Any:
        rows, columns = _evidence(self, x), arguments.query(query, self.plan.variables)
        if len(rows) == 0:
            return _typed(method(self, _missing_row(self, rows), columns), x)[:0]
        return _typed(method(self, rows, columns), x)
    return run  # type: ignore[return-value]


def map_state(method: _Method) -> _Method:
    @functools.wraps(method)
    def run(self: Any, x: Any) -> tuple[Any, Any]:
        rows = _evidence(self, x)
        if len(rows) == 0:
            completed, lp = method(self, _missing_row(self, rows))
            return _values(self, completed, x)[:0], _typed(lp, x)[:0]
        arguments.fits(len(rows) * _row_bytes(self), f"map of {len(rows)} rows", _device(self))
        completed, lp = method(self, rows)
        return _values(self, completed, x), _typed(lp, x)
    return run  # type: ignore[return-value]


def sample(method: _Method) -> _Method:
    @functools.wraps(method)
    def run(self: Any, n: Any, evidence: Any = None, seed: Any = 0) -> Any:
        rows = None if evidence is None else _evidence(self, evidence, "evidence")
        n = arguments.sample_rows(n, rows)
        seed = arguments.seed(seed)
        if n == 0:
            one = None if rows is None else (rows[:1] if len(rows) else _missing_row(self, rows))
            return _values(self, method(self, 1, one, seed), evidence)[:0]
        arguments.fits(n * _row_bytes(self), f"sampling {n} rows", _device(self))
        return _values(self, method(self, n, rows, seed), evidence)
    return run  # type: ignore[return-value]


def flows(method: _Method) -> _Method:
    @functools.wraps(method)
    def run(self: Any, x: Any) -> Flows:
        rows = _evidence(self, x)
        if len(rows) == 0:  # no rows, no flow: zeros shaped like one row's flows
            return _scaled(method(self, _missing_row(self, rows)), 0.0, x)
        return _scaled(method(self, rows), 1.0, x)
    return run  # type: ignore[return-value]


def _scaled(result: Flows, factor: float, like: Any) -> Flows:
    """Flows with every statistic times `factor`, typed like `like`."""
    tensor = is_tensor(like)
    arrays = itertools.chain(result.weights.values(), result.node.values(),
                             (v for stats in result.inputs.values() for v in stats.values()))
    if factor == 1.0 and not tensor and all(type(v) is np.ndarray for v in arrays):
        return result  # already what the caller gets

    def one(value: Any) -> Any:
        return _typed(value * factor if factor != 1.0 else value, like)

    weights = {group: one(f) for group, f in result.weights.items()}
    inputs = {node: {key: one(v) for key, v in stats.items()} for node, stats in result.inputs.items()}
    node = {name: one(f) for name, f in result.node.items()}
    return Flows(weights, inputs, node, result.log_likelihood * factor)
