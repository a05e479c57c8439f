"""Checks the formats share about leaves: which domain each variable has, and probability rows.

Leaves *claim* domains: a literal says its variable is Boolean, a categorical leaf of K
log-probabilities that it has K values, a Gaussian that it is real, an indicator of value k that
it has more than k values. :func:`infer_domains` settles each variable's domain from its claims
and reports the ones that contradict each other, at the line of the later claim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pcdsl.diagnostics import Diagnostic, Note, error
from pcdsl.io.textformat import MAX_SHOWN, Lines, token_span
from pcdsl.ir.graph import BOOL, REAL, Domain
from pcdsl.numerics import ROW_TOLERANCE

REAL_SIZE = -1  # the size a Gaussian leaf claims


@dataclass
class Claims:
    """Domain claims: `var` (0-based), `size` (values; REAL_SIZE for real), `line` (index into
    Lines) and `token` (the field that makes the claim). `exact` claims fix the size; the others
    (indicators) say it is at least `size`."""

    var: np.ndarray
    size: np.ndarray
    line: np.ndarray
    token: np.ndarray
    exact: np.ndarray

    @staticmethod
    def join(parts: list[Claims]) -> Claims:
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return Claims(empty, empty, empty, empty, np.zeros(0, dtype=bool))
        fields = ("var", "size", "line", "token", "exact")
        return Claims(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))

    @staticmethod
    def of(var: np.ndarray, size: np.ndarray | int, line: np.ndarray, token: int, exact: bool) -> Claims:
        n = len(var)
        return Claims(var.astype(np.int64), np.broadcast_to(np.asarray(size, dtype=np.int64), (n,)).copy(),
                      line.astype(np.int64), np.full(n, token, dtype=np.int64), np.full(n, exact, dtype=bool))


def infer_domains(lines: Lines, claims: Claims, count: int, given: dict[int, tuple[Domain, str, int]],
                  problems: list[Diagnostic]) -> dict[int, Domain]:
    """Each variable's domain (variables 0..count-1 that some leaf uses); conflicts are problems."""
    size = np.full(count, -2, dtype=np.int64)  # -2: no exact claim yet
    first = np.full(count, -1, dtype=np.int64)  # the claim that fixed it
    exact = np.flatnonzero(claims.exact)
    order = exact[np.lexsort((claims.line[exact], claims.var[exact]))]
    is_first = np.ones(len(order), dtype=bool)
    is_first[1:] = claims.var[order[1:]] != claims.var[order[:-1]]
    size[claims.var[order[is_first]]] = claims.size[order[is_first]]
    first[claims.var[order[is_first]]] = order[is_first]
    clash = order[claims.size[order] != size[claims.var[order]]]
    for j in clash[:MAX_SHOWN]:
        f = int(first[claims.var[j]])
        problems.append(error("E0709", f"leaves disagree on variable {claims.var[j] + 1}: it "
                              f"{_says(int(claims.size[j]))} here, but {_says(int(size[claims.var[j]]))} on an "
                              "earlier line",
                              lines.span(int(claims.line[j]), int(claims.token[j])),
                              Note("the earlier leaf", lines.span(int(claims.line[f]), int(claims.token[f]))),
                              help="every leaf of a variable must agree on its number of values"))
    least = np.flatnonzero(~claims.exact)
    over = least[(size[claims.var[least]] >= -1) & ((size[claims.var[least]] == REAL_SIZE)
                                                    | (claims.size[least] > size[claims.var[least]]))]
    for j in over[:MAX_SHOWN]:
        f = int(first[claims.var[j]])
        problems.append(error("E0709", f"indicator value {claims.size[j] - 1} does not fit variable "
                              f"{claims.var[j] + 1}, which {_says(int(size[claims.var[j]]))}",
                              lines.span(int(claims.line[j]), int(claims.token[j])),
                              Note("the leaf that fixes its values", lines.span(int(claims.line[f]),
                                                                                int(claims.token[f])))))
    open_ = least[size[claims.var[least]] == -2]
    np.maximum.at(size, claims.var[open_], np.maximum(claims.size[open_], 2))  # at least Boolean
    out = {}
    for v in np.flatnonzero(size != -2).tolist():
        out[v] = REAL if size[v] == REAL_SIZE else BOOL if size[v] == 2 else Domain("categorical", int(size[v]))
    _check_given(lines, out, given, problems)
    return out


def _says(size: int) -> str:
    return "is real" if size == REAL_SIZE else f"has {size} values"


def _check_given(lines: Lines, found: dict[int, Domain], given: dict[int, tuple[Domain, str, int]],
                 problems: list[Diagnostic]) -> None:
    """Domains the file's pcdsl comments give agree with its leaves, and are used."""
    for v, (domain, _, number) in given.items():
        if v in found and found[v].size != domain.size:
            problems.append(error("E0709", f"the comment says variable {v + 1} is {domain}, but its leaves make it "
                                  f"{found[v]}", token_span(lines.source, number, 3)))
        else:
            found[v] = domain  # the comment tells bool from categorical(2)


def check_rows(lines: Lines, owners: np.ndarray, values: np.ndarray, n: int, what: str, problems: list[Diagnostic],
               renormalise: bool) -> np.ndarray:
    """Probabilities grouped by owner line (owners sorted) add up to 1 within ROW_TOLERANCE;
    returns them (divided by their totals when `renormalise`)."""
    totals = np.bincount(owners, weights=values, minlength=n)
    owned = np.zeros(n, dtype=bool)
    owned[owners] = True
    bad_rows = np.flatnonzero(~(np.abs(totals - 1.0) <= ROW_TOLERANCE) & owned)
    if renormalise:
        fine = np.isfinite(totals) & (totals > 0)
        bad_rows = bad_rows[~fine[bad_rows]]  # rows that cannot be renormalised stay errors
        values = values / np.where(fine, totals, 1.0)[owners]
    for i in bad_rows[:MAX_SHOWN]:
        problems.append(error("E0303", f"the {what} add up to {totals[i]:.6g}, not 1 (tolerance {ROW_TOLERANCE:g})",
                              lines.span(int(i)), help="they are natural logarithms of probabilities that add up "
                              "to 1; read with renormalise=True (--renormalise) to divide them by their total"))
    return values
