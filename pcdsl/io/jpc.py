"""Juice.jl `.jpc` files (ProbabilisticCircuits.jl), read and write.

A `.jpc` file is a header ``jpc COUNT`` and one line per node, children before parents, the last
line the root (``c`` lines are comments)::

    L id vtree literal                         literal: +v is "variable v = 1", -v is "= 0"
    I id vtree variable value                  indicator: "variable = value"
    C id vtree variable {log-probability}+     categorical over values 0, 1, ...
    B id vtree variable trials log-probability binomial(trials, p), values 0..trials
    G id vtree variable mean std               Gaussian
    P id vtree count {child}+                  product
    S id vtree count {child log-weight}+       sum

Ids run from 0 to COUNT - 1, variables from 1; probabilities and weights are natural logarithms.
`vtree` is a vtree node id (0 when the circuit is not structured); it is checked when a vtree is
given. Binomial leaves become categorical leaves over their trials + 1 values (so they are
written back as ``C`` lines). Reading checks everything listed in ``docs/formats.md`` and never
recurses; see :mod:`pcdsl.io.textformat` for how it stays fast.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pcdsl.diagnostics import Diagnostic, error
from pcdsl.io.atomic import write_atomic
from pcdsl.io.flat import BERNOULLI, CATEGORICAL, GAUSSIAN, INDICATOR, LEAF, PRODUCT, SUM, Flat
from pcdsl.io.leaves import REAL_SIZE, Claims, check_rows, infer_domains
from pcdsl.io.textformat import (
    MAX_SHOWN,
    Kind,
    Lines,
    Schema,
    check_children,
    check_ids,
    compress_if_gz,
    raise_all,
    read_source,
    scan,
)
from pcdsl.io.variables import MAX_VARIABLES, make_variables, metadata_lines, read_metadata
from pcdsl.io.vtree_file import VtreeFile, check_places, locate, place
from pcdsl.ir.vtree import Vtree
from pcdsl.numerics import MAX_MAGNITUDE, ROW_TOLERANCE

JPC = Schema("jpc", (
    Kind("L", "literal node", ("id", "vtree", "literal")),
    Kind("I", "indicator node", ("id", "vtree", "variable", "value")),
    Kind("C", "categorical node", ("id", "vtree", "variable"), ("log-probability",), min_repeat=1),
    Kind("B", "binomial node", ("id", "vtree", "variable", "trials", "log-probability")),
    Kind("G", "gaussian node", ("id", "vtree", "variable", "mean", "std")),
    Kind("P", "product node", ("id", "vtree", "count"), ("child",), counted=True, min_repeat=1),
    Kind("S", "sum node", ("id", "vtree", "count"), ("child", "log-weight"), counted=True, min_repeat=1),
), frozenset({"log-probability", "log-weight", "mean", "std"}))

MAX_TRIALS = 1 << 16
HEADER = """c this file was written by pcdsl (Juice.jl .jpc format)
c ids of jpc nodes start at 0
c jpc nodes appear bottom-up, children before parents
c variables start at 1; probabilities and weights are natural logarithms
c
c file syntax:
c jpc count-of-jpc-nodes
c L id-of-jpc-node id-of-vtree literal
c I id-of-jpc-node id-of-vtree variable indicator-value
c C id-of-jpc-node id-of-vtree variable {log-probability}+
c G id-of-jpc-node id-of-vtree variable gaussian-mu gaussian-sigma
c P id-of-product-jpc-node id-of-vtree number-of-children {child-id}+
c S id-of-sum-jpc-node id-of-vtree number-of-children {child-id log-probability}+
c"""


def read_jpc(path: str | Path, vtree: VtreeFile | None = None, renormalise: bool = False) -> Flat:
    """Read a .jpc (or .jpc.gz) file into a flat scalar circuit, checking it as it goes; raises
    PcdslError with every problem found. `vtree`: check each node's vtree id against it.
    `renormalise`: divide rows that do not add up to 1 by their totals instead of refusing them."""
    source = read_source(path)
    lines = scan(source, JPC)
    problems: list[Diagnostic] = []
    by_id = check_ids(lines, problems)
    raise_all(problems)
    kind, offsets, children, weights = _structure(lines, by_id, problems, renormalise)
    family, var, param_offsets, params, claims = _leaves(lines, problems, renormalise)
    raise_all(problems)
    name, given = read_metadata(source, lines.meta, problems)
    count = max([int(var.max()) + 1 if len(var) else 0, *(v + 1 for v in given)])
    domains = infer_domains(lines, claims, count, given, problems)
    raise_all(problems)
    if vtree is not None:
        check_vtree(lines, vtree, kind, offsets, children, var, problems)
        raise_all(problems)
    names = [f"n{i}" for i in lines.values[lines.offsets[:-1]].astype(np.int64).tolist()]
    return Flat(make_variables(count, domains, given), kind, offsets, children, weights, family, var, param_offsets,
                params, name or Path(path).name.split(".")[0] or "circuit", names, source, lines.numbers,
                np.full(len(lines), -1, dtype=np.int64))


def _structure(lines: Lines, by_id: np.ndarray, problems: list[Diagnostic], renormalise: bool
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Node kinds and the children (and weights) of products and sums, as CSR arrays."""
    n = len(lines)
    kind = np.full(n, LEAF, dtype=np.int8)
    degree = np.zeros(n, dtype=np.int64)
    for letter, code in (("P", PRODUCT), ("S", SUM)):
        idx = lines.of_kind(letter)
        kind[idx] = code
        degree[idx] = lines.repeats(letter)
    offsets = np.concatenate([[0], np.cumsum(degree)]).astype(np.int64)
    children = np.zeros(int(offsets[-1]), dtype=np.int64)
    weights = np.ones(int(offsets[-1]), dtype=np.float64)
    for letter in ("P", "S"):
        idx = lines.of_kind(letter)
        owners, ids = lines.items(letter, "child")
        k = lines.item_index(letter)
        tokens = JPC.kind(letter).token("child") + k * len(JPC.kind(letter).repeat)
        dest = offsets[owners] + k
        children[dest] = check_children(lines, by_id, owners, ids.astype(np.int64), tokens, problems)
        if letter == "S":
            _, logw = lines.items(letter, "log-weight")
            with np.errstate(over="ignore"):
                weights[dest] = check_rows(lines, owners, np.exp(logw), n, "weights of this sum node", problems,
                                           renormalise)
    return kind, offsets, children, weights


def _leaves(lines: Lines, problems: list[Diagnostic], renormalise: bool):  # type: ignore[no-untyped-def]
    """Family, variable and parameters of every leaf, and the domains the leaves claim."""
    n = len(lines)
    family = np.full(n, -1, dtype=np.int8)
    var = np.full(n, -1, dtype=np.int64)
    size = np.zeros(n, dtype=np.int64)
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # letter -> (lines, parameter values per line)
    claims: list[Claims] = []

    lit_lines = lines.of_kind("L")
    lit = lines.ints(lit_lines, "L", "literal")
    _bad(lines, lit_lines[lit == 0], "L", "literal", "E0709", "literal 0 names no variable: variables start at 1",
         problems)
    var[lit_lines], family[lit_lines], size[lit_lines] = np.abs(lit) - 1, INDICATOR, 1
    parts["L"] = (lit_lines, (lit > 0).astype(np.float64)[:, None])
    claims.append(Claims.of(np.abs(lit) - 1, 2, lit_lines, 3, True))

    for letter in "ICBG":
        idx = lines.of_kind(letter)
        v = lines.ints(idx, letter, "variable")
        _bad(lines, idx[(v < 1) | (v > MAX_VARIABLES)], letter, "variable", "E0709",
             f"variables run from 1 to {MAX_VARIABLES}", problems)
        var[idx] = np.clip(v - 1, 0, None)
    ind = lines.of_kind("I")
    value = lines.ints(ind, "I", "value")
    _bad(lines, ind[(value < 0) | (value >= MAX_TRIALS)], "I", "value", "E0309",
         f"an indicator's value is one of the variable's values, 0 to {MAX_TRIALS - 1}", problems)
    family[ind], size[ind] = INDICATOR, 1
    parts["I"] = (ind, value.astype(np.float64)[:, None])
    claims.append(Claims.of(var[ind], np.clip(value, 0, None) + 1, ind, 4, False))

    cat = lines.of_kind("C")
    owners, logp = lines.items("C", "log-probability")
    k = lines.repeats("C")
    family[cat], size[cat] = CATEGORICAL, k
    with np.errstate(over="ignore"):
        probs = check_rows(lines, owners, np.exp(logp), n, "probabilities of this categorical node", problems,
                           renormalise)
    claims.append(Claims.of(var[cat], k, cat, 3, True))

    binomial, rows = _binomial(lines, problems, size)
    family[binomial] = CATEGORICAL
    claims.append(Claims.of(var[binomial], size[binomial], binomial, 4, True))

    gauss = lines.of_kind("G")
    mean, std = lines.field(gauss, "G", "mean"), lines.field(gauss, "G", "std")
    _bad(lines, gauss[~(np.abs(mean) < MAX_MAGNITUDE)], "G", "mean", "E0309", "a Gaussian's mean must be finite",
         problems)
    _bad(lines, gauss[~((std > 0) & (std < MAX_MAGNITUDE))], "G", "std", "E0309",
         "a Gaussian's std must be positive and finite", problems)
    family[gauss], size[gauss] = GAUSSIAN, 2
    parts["G"] = (gauss, np.stack([mean, std], axis=1))
    claims.append(Claims.of(var[gauss], REAL_SIZE, gauss, 3, True))

    param_offsets = np.concatenate([[0], np.cumsum(size)]).astype(np.int64)
    params = np.zeros(int(param_offsets[-1]), dtype=np.float64)
    for idx, values in parts.values():  # fixed-width rows
        dest = param_offsets[idx][:, None] + np.arange(values.shape[1])[None, :]
        params[dest.ravel()] = values.ravel()
    params[param_offsets[owners] + lines.item_index("C")] = probs
    for i, row in zip(binomial.tolist(), rows, strict=True):
        params[param_offsets[i]:param_offsets[i] + len(row)] = row
    return family, var, param_offsets, params, Claims.join(claims)


def _binomial(lines: Lines, problems: list[Diagnostic], size: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Binomial leaves (their lines) and their probabilities over 0..trials."""
    idx = lines.of_kind("B")
    trials = lines.ints(idx, "B", "trials")
    logp = lines.field(idx, "B", "log-probability")
    _bad(lines, idx[(trials < 0) | (trials >= MAX_TRIALS)], "B", "trials", "E0309",
         f"a binomial's trials run from 0 to {MAX_TRIALS - 1}", problems)
    _bad(lines, idx[~(logp <= ROW_TOLERANCE)], "B", "log-probability", "E0301",
         "a log-probability is at most 0 (a probability at most 1)", problems)
    trials = np.clip(trials, 0, MAX_TRIALS - 1)
    size[idx] = trials + 1
    rows = [binomial_pmf(t, lp) for t, lp in zip(trials.tolist(), np.minimum(logp, 0.0).tolist(), strict=True)]
    return idx, rows


def binomial_pmf(trials: int, log_p: float) -> np.ndarray:
    """P(k) for k = 0..trials of binomial(trials, exp(log_p)), computed in log space."""
    k = np.arange(trials + 1, dtype=np.float64)
    log_q = math.log1p(-math.exp(log_p)) if log_p < 0 else -math.inf
    with np.errstate(invalid="ignore"):
        terms = np.where(k > 0, k * log_p, 0.0) + np.where(trials - k > 0, (trials - k) * log_q, 0.0)
    comb = np.array([math.lgamma(trials + 1) - math.lgamma(j + 1) - math.lgamma(trials - j + 1)
                     for j in range(trials + 1)])
    return np.exp(comb + terms)


def _bad(lines: Lines, where: np.ndarray, letter: str, field: str, code: str, message: str,
         problems: list[Diagnostic]) -> None:
    kind = JPC.kind(letter)
    for i in where[:MAX_SHOWN]:
        span = lines.span(int(i), kind.token(field))
        problems.append(error(code, f"{kind.name}: {message}", span))


def check_vtree(lines: Lines, vtree_file: VtreeFile, kind: np.ndarray, offsets: np.ndarray, children: np.ndarray,
                var: np.ndarray, problems: list[Diagnostic]) -> None:
    """Every node sits at the vtree node of exactly its variables: a leaf at its variable's leaf,
    a sum where its children are, a product above children that split its vtree node's variables."""
    vtree = vtree_file.vtree
    at = locate(lines, vtree_file, np.arange(len(lines)), problems)
    if problems:
        return
    leaves = np.flatnonzero(kind == LEAF)
    check_places(lines, vtree_file, at, leaves, var[leaves], np.zeros(0, dtype=np.int64), problems)
    owner = np.repeat(np.arange(len(kind)), np.diff(offsets))
    lo, hi = vtree.bounds
    is_sum = kind[owner] == SUM
    for e in np.flatnonzero(is_sum & (at[children] != at[owner]))[:MAX_SHOWN - len(problems)]:
        problems.append(_mismatch(lines, vtree_file, int(owner[e]), int(children[e]), at,
                                  "a sum's children sit at the sum's own vtree node"))
    prod = ~is_sum
    below, above = at[children], at[owner]
    outside = prod & ((lo[below] < lo[above]) | (hi[below] > hi[above]) | (below == above))
    for e in np.flatnonzero(outside)[:MAX_SHOWN - len(problems)]:
        problems.append(_mismatch(lines, vtree_file, int(owner[e]), int(children[e]), at,
                                  "a product's children sit below the product's vtree node"))
    covered = np.bincount(owner[prod], weights=(hi - lo)[at[children[prod]]], minlength=len(kind))
    products = np.flatnonzero(kind == PRODUCT)
    for i in products[covered[products] != (hi - lo)[at[products]]][:MAX_SHOWN - len(problems)]:
        problems.append(error("E0708", "the children of this product node do not split the variables of its vtree "
                              "node", lines.span(int(i), 2), vtree_file.note(int(at[i]), "its vtree id names")))


def _mismatch(lines: Lines, vtree_file: VtreeFile, node: int, child: int, at: np.ndarray, rule: str) -> Diagnostic:
    return error("E0708", f"child {lines.values[lines.offsets[child]]:.0f} sits at "
                 f"{vtree_file.describe(int(at[child]))}, "
                 f"which does not fit this node's {vtree_file.describe(int(at[node]))}", lines.span(node, 2),
                 vtree_file.note(int(at[child]), "the child's vtree node"), help=rule)


def jpc_text(flat: Flat, vtree: Vtree | None = None) -> str:
    """A flat circuit as the text of a .jpc file (vtree ids from `vtree`, else 0)."""
    vt = vtree.ids[place(flat, vtree)].tolist() if vtree is not None else [0] * len(flat)
    out = [HEADER, *metadata_lines(flat.name, flat.variables), f"jpc {len(flat)}"]
    kinds, families, variables = flat.kind.tolist(), flat.family.tolist(), flat.var.tolist()
    offsets, children = flat.offsets.tolist(), flat.children.tolist()
    with np.errstate(divide="ignore", invalid="ignore"):  # log 0 = -inf; Gaussian params are not logged
        log_weights = np.log(flat.weights).tolist()
        log_params = np.log(flat.params).tolist()
    for i in range(len(flat)):
        a, b = offsets[i], offsets[i + 1]
        if kinds[i] == PRODUCT:
            out.append(f"P {i} {vt[i]} {b - a} " + " ".join(map(str, children[a:b])))
        elif kinds[i] == SUM:
            pairs = zip(map(str, children[a:b]), map(repr, log_weights[a:b]), strict=True)
            out.append(f"S {i} {vt[i]} {b - a} " + " ".join(x for pair in pairs for x in pair))
        else:
            out.append(_leaf_line(flat, i, vt[i], families[i], variables[i] + 1, log_params))
    return "\n".join(out) + "\n"


def _leaf_line(flat: Flat, i: int, vt: int, family: int, v: int, log_params: list[float]) -> str:
    a, b = int(flat.param_offsets[i]), int(flat.param_offsets[i + 1])
    p = flat.params[a:b].tolist()
    if family == INDICATOR:
        value = int(p[0])
        if flat.variables[v - 1].domain.size == 2 and value in (0, 1):
            return f"L {i} {vt} {v if value else -v}"
        return f"I {i} {vt} {v} {value}"
    if family == BERNOULLI:
        return f"C {i} {vt} {v} {math.log1p(-p[0]) if p[0] < 1 else -math.inf!r} {log_params[a]!r}"
    if family == CATEGORICAL:
        return f"C {i} {vt} {v} " + " ".join(map(repr, log_params[a:b]))
    return f"G {i} {vt} {v} {p[0]!r} {p[1]!r}"


def write_jpc(path: str | Path, flat: Flat, vtree: Vtree | None = None) -> Path:
    """Write a flat circuit as a .jpc (or .jpc.gz) file, atomically."""
    path = Path(path)
    write_atomic(path, compress_if_gz(path, jpc_text(flat, vtree).encode()))
    return path
