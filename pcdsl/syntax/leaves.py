"""Leaf families: their signatures, the domains they accept, and their parameters.

Parameters are stored per unit (rows), so a group of `units` leaves holds a
``(units, ...)`` array per parameter. Omitted parameters are learned.
"""

from __future__ import annotations

import numpy as np

from pcdsl.diagnostics import Note
from pcdsl.ir.graph import Domain, Variable
from pcdsl.syntax import ast
from pcdsl.syntax.signatures import Bound, Param, Signature, read_float, read_int
from pcdsl.syntax.values import Values

WEIGHT_TOLERANCE = 1e-6

FAMILIES = {
    "bernoulli": Signature("bernoulli", (Param("var", None), Param("p", None, None)),
                           "a Bernoulli leaf over a bool variable: P(var = 1) = p"),
    "categorical": Signature("categorical", (Param("var", None), Param("probs", None, None)),
                             "a categorical leaf: P(var = k) = probs[k]"),
    "gaussian": Signature("gaussian", (Param("var", None), Param("mean", read_float(), None),
                                       Param("std", read_float(0.0, strict=True), None)),
                          "a normal density over a real variable"),
    "indicator": Signature("indicator", (Param("var", None), Param("value", read_int(0))),
                           "1 where var = value, else 0"),
}

_DOMAINS = {"bernoulli": ("bool",), "categorical": ("bool", "categorical"),
            "gaussian": ("real",), "indicator": ("bool", "categorical")}


def check_domain(vals: Values, family: str, var: Variable, span: ast.Value) -> None:
    if var.domain.kind not in _DOMAINS[family]:
        accepted = " or ".join(_DOMAINS[family])
        raise vals.fail("E0305", f"a {family} leaf needs a {accepted} variable, but '{var.name}' is "
                        f"{var.domain}", span.span, Note(f"'{var.name}' is declared here", var.span),
                        help=_domain_help(var.domain))


def _domain_help(domain: Domain) -> str:
    if domain.kind == "real":
        return "use gaussian(...) for real variables"
    if domain.kind == "categorical":
        return "use categorical(...) or indicator(...) for categorical variables"
    return "use bernoulli(...), categorical(...) or indicator(...) for bool variables"


def leaf_params(vals: Values, bound: Bound, var: Variable, units: int) -> dict[str, np.ndarray] | None:
    """Read the given parameters as (units, ...) arrays, or None when they are learned."""
    family = bound.call.func.text
    if family == "bernoulli":
        return _bernoulli(vals, bound, units)
    if family == "categorical":
        return _categorical(vals, bound, var, units)
    if family == "gaussian":
        return _gaussian(vals, bound, units)
    value = bound["value"]
    assert var.domain.size is not None
    if value >= var.domain.size:
        raise vals.fail("E0309", f"indicator value {value} is outside the domain of '{var.name}' "
                        f"(0 to {var.domain.size - 1})", bound.span_of("value"))
    return {"value": np.full((units,), value, dtype=np.int64)}


def _rows(vals: Values, v: ast.Value, units: int, is_table: bool, what: str) -> list[ast.Value]:
    """One value shared by all units, or (when `is_table`) a list of one value per unit."""
    if not is_table:
        return [v] * units
    items = vals.as_list(v, what)
    if len(items) != units:
        raise vals.fail("E0304", f"{what}: {len(items)} rows given for a group of {units} units",
                        v.span, help="give one row per unit, or a single row shared by all units")
    return list(items)


def _is_list(vals: Values, v: ast.Value) -> bool:
    return isinstance(vals.deref(v), ast.ListV)


def _bernoulli(vals: Values, bound: Bound, units: int) -> dict[str, np.ndarray] | None:
    if bound["p"] is None:
        return None
    p = bound["p"]
    rows = _rows(vals, p, units, _is_list(vals, p), "argument 'p' of 'bernoulli'")
    return {"p": np.array([vals.as_prob(r, "argument 'p' of 'bernoulli'") for r in rows])}


def _categorical(vals: Values, bound: Bound, var: Variable, units: int) -> dict[str, np.ndarray] | None:
    if bound["probs"] is None:
        return None
    size = var.domain.size
    assert size is not None
    probs = bound["probs"]
    items = vals.as_list(probs, "argument 'probs' of 'categorical'")
    is_table = bool(items) and _is_list(vals, items[0])
    rows = _rows(vals, probs, units, is_table, "argument 'probs' of 'categorical'")
    table = []
    for row in rows:
        items = vals.as_list(row, "argument 'probs' of 'categorical'")
        if len(items) != size:
            raise vals.fail("E0304", f"'{var.name}' is {var.domain} and needs {size} probabilities, "
                            f"found {len(items)}", row.span, Note(f"'{var.name}' is declared here", var.span))
        probs = [vals.as_prob(x, "a categorical probability") for x in items]
        check_normalised(vals, probs, row, "probabilities")
        table.append(probs)
    return {"probs": np.array(table, dtype=np.float64)}


def _gaussian(vals: Values, bound: Bound, units: int) -> dict[str, np.ndarray] | None:
    mean, std = bound["mean"], bound["std"]
    if (mean is None) != (std is None):
        missing = "std" if std is None else "mean"
        raise vals.fail("E0403", f"'gaussian' needs '{missing}' too: give both mean and std, or neither "
                        "to learn them", bound.call.span)
    if mean is None:
        return None
    return {"mean": np.full((units,), mean), "std": np.full((units,), std)}


def check_normalised(vals: Values, probs: list[float], where: ast.Value | ast.SumDecl, what: str) -> None:
    total = sum(probs)
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise vals.fail("E0303", f"{what} add up to {total:.6g}, not 1", where.span,
                        help=f"divide each by {total:.6g}, or fix the one that is off")
