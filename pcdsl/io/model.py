"""The native model file: one safetensors file, structure in its JSON metadata.

Safe to load: no pickle, no code; only JSON text and raw tensors.

Layout (format ``pcdsl-model``, version 1):

- metadata ``pcdsl``: JSON ``{"format": "pcdsl-model", "version": 1, "circuit": NAME,
  "variables": [{"name", "domain", "size"}], "nodes": [{"name", "kind", "units",
  "children", "family", "var", "pattern", "tie", "blocks"}]}``; nodes children-first; ``tie``
  (sums and inputs) names the node whose parameters a node shares, ``blocks`` (sums, default 1)
  makes a sum block-diagonal;
- tensors ``input/<group>/<param>`` (probs, p, mean, std, value) and
  ``weights/<group>`` (units x child units / blocks), float64 (value: int64); a group is the
  node's own name, or the node it is tied to.

Files are written atomically: a crash never leaves half a model behind. Files
are checked before anything is built from them (``pcdsl.io.checks``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pcdsl.io import checks
from pcdsl.io.atomic import write_atomic
from pcdsl.io.checks import ModelFileError
from pcdsl.ir.graph import CircuitGraph, Domain, NodeKind, Variable
from pcdsl.params import Parameters, fixed_keys

FORMAT, VERSION = "pcdsl-model", 1
__all__ = ["ModelFileError", "load_model", "save_model"]


def _structure(graph: CircuitGraph) -> dict[str, Any]:
    nodes = []
    for n in graph.nodes():
        entry: dict[str, Any] = {"name": n.name, "kind": n.kind.value, "units": n.num_units,
                                 "children": list(n.children)}
        if n.kind is NodeKind.INPUT:
            entry.update(family=n.family, var=int(n.var) if n.var is not None else None)  # numpy ints are not JSON
        elif n.kind is NodeKind.PRODUCT:
            entry["pattern"] = n.pattern
        elif n.blocks != 1:
            entry["blocks"] = n.blocks
        if n.tie:
            entry["tie"] = n.tie
        if n.fixed:
            entry["fixed"] = True
        nodes.append(entry)
    variables = [{"name": v.name, "domain": v.domain.kind, "size": v.domain.size} for v in graph.variables]
    out = {"format": FORMAT, "version": VERSION, "circuit": graph.name, "variables": variables, "nodes": nodes}
    if graph.colour != "identity":
        out["colour"] = graph.colour
    return out


def save_model(path: str | Path, graph: CircuitGraph, params: Parameters) -> Path:
    from safetensors.numpy import save

    tensors = {f"weights/{g}": np.ascontiguousarray(w, dtype=np.float64) for g, w in params.weights.items()}
    for node, p in params.inputs.items():
        for key, value in p.items():
            dtype = np.int64 if key == "value" else np.float64
            tensors[f"input/{node}/{key}"] = np.ascontiguousarray(value, dtype=dtype)
    data = save(tensors, metadata={"pcdsl": json.dumps(_structure(graph), sort_keys=True)})
    path = Path(path)
    write_atomic(path, data)
    return path


def load_model(path: str | Path, renormalise: bool = False) -> tuple[CircuitGraph, Parameters]:
    """Read a model file back: the circuit graph and its parameters, every part checked first
    (:mod:`pcdsl.io.checks`; a :class:`ModelFileError` says what is wrong and where).
    `renormalise`: divide probability rows that do not add up to 1 by their sums (with a warning)
    instead of refusing them."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    raw = checks.read_bytes(path)
    meta = checks.metadata(raw, path)
    expected = checks.expected_tensors(meta, path)  # sizes capped before anything is allocated
    try:
        tensors = load(raw)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: not a pcdsl model file: {exc}") from None
    checks.check_tensors(tensors, expected, checks.indicator_sizes(meta), path, renormalise)
    graph = _graph(meta)
    for n in meta["nodes"]:
        if n.get("fixed"):
            graph.fix(n["name"])
    checks.check_structure(graph, path)
    params = _params(tensors)
    params.fixed = fixed_keys(graph)
    return graph, params


def _graph(meta: dict[str, Any]) -> CircuitGraph:
    variables = tuple(Variable(v["name"], i, Domain(v["domain"], v["size"])) for i, v in enumerate(meta["variables"]))
    graph = CircuitGraph(meta["circuit"], variables)
    graph.colour = meta.get("colour", "identity")
    for n in meta["nodes"]:
        if n["kind"] == "input":
            graph.add_input(n["name"], n["var"], n["family"], n["units"], tie=n.get("tie"))
        elif n["kind"] == "product":
            graph.add_product(n["name"], tuple(n["children"]), n["pattern"])
        else:
            graph.add_sum(n["name"], tuple(n["children"]), n["units"], tie=n.get("tie"), blocks=n.get("blocks", 1))
    return graph


def _params(tensors: dict[str, np.ndarray]) -> Parameters:
    params = Parameters()
    for key, value in tensors.items():
        kind, _, rest = key.partition("/")
        if kind == "weights":
            params.weights[rest] = value
        else:
            node, _, name = rest.rpartition("/")
            params.inputs.setdefault(node, {})[name] = value
    return params
