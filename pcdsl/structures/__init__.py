"""Structure templates: generators that add a whole vectorised circuit to a CircuitGraph.

Every generator takes ``(graph, variables, *, prefix, span, **options)``: ``variables`` is
an int array of indices into ``graph.variables`` that carries its shape (an image is
(H, W)). It adds nodes named ``{prefix}/...`` (deterministic: the same call always adds the
same names in the same order), every one carrying ``span``, and returns the name of the
root, always ``{prefix}/root``: a single node of one unit. Input groups are categorical
over discrete variables and gaussian over real ones; parameters and sum weights are left
``None`` (learned later). Impossible requests raise ValueError.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np

from pcdsl.diagnostics import NO_SPAN, Span
from pcdsl.ir.graph import CircuitGraph
from pcdsl.structures.chow_liu import chow_liu_edges, mutual_information, spanning_trees
from pcdsl.structures.fully_factorized import fully_factorized
from pcdsl.structures.hclt import hclt
from pcdsl.structures.image import poon_domingos, quad_tree
from pcdsl.structures.rat import rat

__all__ = [
    "TEMPLATES",
    "chow_liu_edges",
    "fully_factorized",
    "generate",
    "hclt",
    "mutual_information",
    "poon_domingos",
    "quad_tree",
    "rat",
    "spanning_trees",
]

TEMPLATES: dict[str, Callable[..., str]] = {
    "fully_factorized": fully_factorized,
    "hclt": hclt,
    "poon_domingos": poon_domingos,
    "quad_tree": quad_tree,
    "rat": rat,
}


def generate(template: str, graph: CircuitGraph, variables: np.ndarray, *, prefix: str,
             span: Span = NO_SPAN, data: np.ndarray | None = None, **options: object) -> str:
    """Add the nodes of ``template`` over ``variables`` to ``graph``; returns the root's name.

    ``data`` (n_samples, len(graph.variables), -1 = missing) is for templates learned from
    data (hclt); ``options`` are the template's own keyword options.
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown structure template '{template}'; known: {', '.join(sorted(TEMPLATES))}")
    generator = TEMPLATES[template]
    accepted = _options(generator)
    if data is not None:
        if "data" not in accepted:
            raise ValueError(f"'{template}' does not learn from data")
        options["data"] = data
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"unknown option(s) of '{template}': {', '.join(unknown)}; "
                         f"accepted: {', '.join(sorted(accepted))}")
    return generator(graph, np.asarray(variables), prefix=prefix, span=span, **options)


def _options(generator: Callable[..., str]) -> set[str]:
    """The template options a generator accepts: its keyword-only parameters."""
    params = inspect.signature(generator).parameters.values()
    return {p.name for p in params if p.kind is p.KEYWORD_ONLY} - {"prefix", "span"}
