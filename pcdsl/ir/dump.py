"""A stable text form of a circuit graph, for golden tests and debugging.

One line per variable, then one line per node group in insertion order
(children first); no memory addresses, floats rounded to 6 significant digits.
"""

from __future__ import annotations

import numpy as np

from pcdsl.ir.graph import CircuitGraph, Node, NodeKind


def _num(a: np.ndarray) -> str:
    flat = np.asarray(a).reshape(-1)
    return "[" + ", ".join(f"{x:.6g}" for x in flat) + "]"


def _payload(node: Node) -> str:
    if node.kind is NodeKind.INPUT:
        params = "learned" if node.params is None else " ".join(
            f"{k}={_num(v)}" for k, v in sorted(node.params.items()))
        return f"{node.family}(v{node.var}) {params}"
    if node.kind is NodeKind.PRODUCT:
        return f"{node.pattern}({', '.join(node.children)})"
    weights = "learned" if node.weights is None else f"weights={_num(node.weights)}"
    tie = f" tie={node.tie}" if node.tie else ""
    return f"sum({', '.join(node.children)}) {weights}{tie}"


def dump(graph: CircuitGraph) -> str:
    lines = [f"circuit {graph.name}"]
    lines += [f"  var v{v.index} {v.name} : {v.domain}" for v in graph.variables]
    for node in graph.nodes():
        scope = ",".join(str(i) for i in node.scope)
        lines.append(f"  {node.kind.value} {node.name} units={node.num_units} scope={{{scope}}} "
                     f"{_payload(node)}")
    return "\n".join(lines) + "\n"
