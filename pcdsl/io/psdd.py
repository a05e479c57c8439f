"""`.psdd` files (probabilistic sentential decision diagrams) with their `.vtree`, read and write.

A `.psdd` file is a header ``psdd COUNT`` and one line per node, children before parents, the
last line the root::

    L id vtree literal                                     literal: +v "v = 1", -v "v = 0"
    T id vtree variable log-probability                    true node: v = 1 with that probability
    D id vtree count {prime sub log-weight}+               decision node: a sum of (prime x sub)

(some tools write a true node as ``T id vtree variable log(1 - p) log(p)``; both read.) Ids run
from 0, variables from 1, probabilities are natural logarithms. Every variable is Boolean.

With its vtree, a PSDD is checked to be *normalised* for it, as PSDDs are: a literal or true
node sits at its variable's leaf, and a decision node at an inner vtree node ``v`` with every
prime at ``v``'s left child and every sub at its right child. That makes the circuit smooth,
decomposable and structured by the vtree, which becomes the circuit's vtree in pcdsl. Without a
vtree the structure is still validated (smooth and decomposable) when the circuit graph is made.

Writing accepts any pcdsl circuit over two-valued variables whose products split a vtree's nodes
in two (a vtree is derived from the circuit when none is given); sums of sums are multiplied
out into one decision node. Determinism (primes that exclude each other) is what makes a PSDD a
PSDD; it is the writer's input's property, not checked here.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pcdsl.diagnostics import Diagnostic, error
from pcdsl.io.atomic import write_atomic
from pcdsl.io.flat import BERNOULLI, CATEGORICAL, INDICATOR, LEAF, PRODUCT, SUM, Flat, FormatError, scopes
from pcdsl.io.leaves import check_rows
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
    token_span,
)
from pcdsl.io.variables import MAX_VARIABLES, make_variables, metadata_lines, read_metadata
from pcdsl.io.vtree_file import VtreeFile, check_places, locate, place, write_vtree
from pcdsl.ir.graph import BOOL
from pcdsl.ir.scope import Scope
from pcdsl.ir.vtree import Vtree, vtree_of_scopes
from pcdsl.numerics import ROW_TOLERANCE

PSDD = Schema("psdd", (
    Kind("L", "literal node", ("id", "vtree", "literal")),
    Kind("T", "true node", ("id", "vtree", "variable"), ("log-probability",), min_repeat=1, max_repeat=2),
    Kind("D", "decision node", ("id", "vtree", "count"), ("prime", "sub", "log-weight"), counted=True, min_repeat=1),
), frozenset({"log-probability", "log-weight"}))

HEADER = """c this file was written by pcdsl
c ids of psdd nodes start at 0
c psdd nodes appear bottom-up, children before parents
c variables start at 1; probabilities are natural logarithms
c
c file syntax:
c psdd count-of-sdd-nodes
c L id-of-literal-sdd-node id-of-vtree literal
c T id-of-trueNode-sdd-node id-of-vtree variable log(litProb)
c D id-of-decomposition-sdd-node id-of-vtree number-of-elements {id-of-prime id-of-sub log(elementProb)}*
c"""


def read_psdd(path: str | Path, vtree: VtreeFile | None = None, renormalise: bool = False) -> Flat:
    """Read a .psdd (or .psdd.gz) file into a flat scalar circuit: a decision node becomes a sum
    over one product per element. `vtree`: check that the PSDD is normalised for it. Raises
    PcdslError with every problem found."""
    source = read_source(path)
    lines = scan(source, PSDD)
    problems: list[Diagnostic] = []
    by_id = check_ids(lines, problems)
    raise_all(problems)
    var, theta = _leaves(lines, problems, renormalise)
    owners, k = lines.items("D", "prime")[0], lines.item_index("D")
    width = len(PSDD.kind("D").repeat)
    parts = {}
    for name in ("prime", "sub"):
        ids = lines.items("D", name)[1].astype(np.int64)
        tokens = PSDD.kind("D").token(name) + k * width
        parts[name] = check_children(lines, by_id, owners, ids, tokens, problems)
    with np.errstate(over="ignore"):
        weights = check_rows(lines, owners, np.exp(lines.items("D", "log-weight")[1]), len(lines),
                             "weights of this decision node", problems, renormalise)
    raise_all(problems)
    if vtree is not None:
        _check_vtree(lines, vtree, var, owners, k, parts["prime"], parts["sub"], problems)
        raise_all(problems)
    title, given = read_metadata(source, lines.meta, problems)
    count = max([int(var.max()) + 1 if len(var) else 0, *(v + 1 for v in given),
                 *([int(vtree.vtree.var.max()) + 1] if vtree is not None else [])])
    for v, (domain, _, number) in given.items():
        if domain.size != 2:
            problems.append(error("E0709", f"the comment says variable {v + 1} is {domain}, but PSDD variables are "
                                  "Boolean", token_span(source, number, 3)))
    raise_all(problems)
    flat = _layout(lines, var, theta, owners, k, parts["prime"], parts["sub"], weights)
    flat.variables = make_variables(count, dict.fromkeys(range(count), BOOL), given)
    flat.name = title or Path(path).name.split(".")[0] or "psdd"
    return flat


def _leaves(lines: Lines, problems: list[Diagnostic], renormalise: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each line's variable (-1 for decision nodes) and P(variable = 1) of its leaf."""
    var = np.full(len(lines), -1, dtype=np.int64)
    theta = np.zeros(len(lines))
    lit_lines = lines.of_kind("L")
    lit = lines.ints(lit_lines, "L", "literal")
    var[lit_lines], theta[lit_lines] = np.abs(lit) - 1, lit > 0
    tru = lines.of_kind("T")
    var[tru] = lines.ints(tru, "T", "variable") - 1
    leafy = np.concatenate([lit_lines, tru])
    for i in leafy[(var[leafy] < 0) | (var[leafy] >= MAX_VARIABLES)][:MAX_SHOWN]:
        problems.append(error("E0709", f"variables run from 1 to {MAX_VARIABLES}", lines.span(int(i), 3)))
    owners, logs = lines.items("T", "log-probability")
    twice = lines.repeats("T") == 2
    with np.errstate(over="ignore"):
        probs = np.exp(logs)
    single = tru[~twice]
    theta[single] = probs[np.isin(owners, single)]
    for i in single[~(theta[single] <= 1 + ROW_TOLERANCE)][:MAX_SHOWN]:
        problems.append(error("E0301", f"true node: the probability {theta[i]:.6g} is above 1", lines.span(int(i), 4),
                              help="the last field is the natural logarithm of P(variable = 1)"))
    theta[single] = np.minimum(theta[single], 1.0)
    pairs = np.isin(owners, tru[twice])
    rows = check_rows(lines, owners[pairs], probs[pairs], len(lines), "two probabilities of this true node",
                      problems, renormalise)
    theta[tru[twice]] = rows[1::2]
    return var, theta


def _check_vtree(lines: Lines, vtree_file: VtreeFile, var: np.ndarray, owners: np.ndarray, k: np.ndarray,
                 primes: np.ndarray, subs: np.ndarray, problems: list[Diagnostic]) -> None:
    """The PSDD is normalised for the vtree (module doc)."""
    vtree = vtree_file.vtree
    at = locate(lines, vtree_file, np.arange(len(lines)), problems)
    if problems:
        return
    leaves = np.flatnonzero(var >= 0)
    check_places(lines, vtree_file, at, leaves, var[leaves], lines.of_kind("D"), problems)
    if problems:
        return
    width = len(PSDD.kind("D").repeat)
    for name, children, side in (("prime", primes, vtree.left), ("sub", subs, vtree.right)):
        expected = side[at[owners]]
        for e in np.flatnonzero(at[children] != expected)[:MAX_SHOWN - len(problems)]:
            token = PSDD.kind("D").token(name) + int(k[e]) * width
            where = "left" if name == "prime" else "right"
            problems.append(error("E0708", f"{name} {lines.values[lines.offsets[children[e]]]:.0f} sits at "
                                  f"{vtree_file.describe(int(at[children[e]]))}, not at the {where} child of this "
                                  f"decision node's {vtree_file.describe(int(at[owners[e]]))}",
                                  lines.span(int(owners[e]), token),
                                  vtree_file.note(int(expected[e]), f"the {where} child"),
                                  help=f"a PSDD is normalised for its vtree: each {name} of a decision node at vtree "
                                       f"node v sits at v's {where} child"))


def _layout(lines: Lines, var: np.ndarray, theta: np.ndarray, owners: np.ndarray, k: np.ndarray, primes: np.ndarray,
            subs: np.ndarray, weights: np.ndarray) -> Flat:
    """Flat arrays: each decision line's element products, then its sum."""
    n = len(lines)
    elements = np.zeros(n, dtype=np.int64)
    dec = lines.of_kind("D")
    elements[dec] = lines.repeats("D")
    position = np.cumsum(1 + elements) - 1  # each line's own node comes after its elements
    total = int(position[-1]) + 1 if n else 0
    element_pos = position[owners] - elements[owners] + k
    kind = np.full(total, PRODUCT, dtype=np.int8)
    kind[position] = np.where(lines.letters == ord("D"), SUM, LEAF)
    degree = np.zeros(total, dtype=np.int64)
    degree[element_pos] = 2
    degree[position[dec]] = elements[dec]
    offsets = np.concatenate([[0], np.cumsum(degree)]).astype(np.int64)
    children = np.zeros(int(offsets[-1]), dtype=np.int64)
    edge_weights = np.ones(int(offsets[-1]))
    children[offsets[element_pos]] = position[primes]
    children[offsets[element_pos] + 1] = position[subs]
    children[offsets[position[owners]] + k] = element_pos
    edge_weights[offsets[position[owners]] + k] = weights
    leaf = var >= 0
    family = np.full(total, -1, dtype=np.int8)
    family[position[leaf]] = np.where(lines.letters[leaf] == ord("L"), INDICATOR, BERNOULLI)
    node_var = np.full(total, -1, dtype=np.int64)
    node_var[position[leaf]] = var[leaf]
    sizes = np.zeros(total, dtype=np.int64)
    sizes[position[leaf]] = 1
    ids = lines.values[lines.offsets[:-1]].astype(np.int64)
    names = [""] * total
    for i, p in zip(ids.tolist(), position.tolist(), strict=True):
        names[p] = f"n{i}"
    for o, j, p in zip(ids[owners].tolist(), k.tolist(), element_pos.tolist(), strict=True):
        names[p] = f"n{o}.{j}"
    numbers = np.zeros(total, dtype=np.int64)
    numbers[position] = lines.numbers
    numbers[element_pos] = lines.numbers[owners]
    tokens = np.full(total, -1, dtype=np.int64)
    tokens[element_pos] = PSDD.kind("D").token("prime") + k * len(PSDD.kind("D").repeat)
    return Flat((), kind, offsets, children, edge_weights, family, node_var,
                np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), theta[leaf].astype(np.float64),
                names=names, source=lines.source, lines=numbers, tokens=tokens)


# ---- writing -----------------------------------------------------------------------------------------
def derive_vtree(flat: Flat) -> Vtree:
    """The vtree a structured-decomposable circuit respects (FormatError when there is none)."""
    masks = scopes(flat)
    family: set[Scope] = set()
    for i in np.flatnonzero(flat.kind == PRODUCT).tolist():
        family.add(masks[i])
        family.update(masks[c] for c in flat.node_children(i).tolist())
    tree = vtree_of_scopes(family, masks[-1])
    if tree is None:
        raise FormatError("the circuit is not structured-decomposable: no vtree fits every product")
    return tree


def psdd_text(flat: Flat, vtree: Vtree) -> str:
    """A flat circuit over two-valued variables as the text of a .psdd file normalised for `vtree`."""
    for v in set(flat.var[flat.kind == LEAF].tolist()):
        if flat.variables[v].domain.size != 2:
            raise FormatError(f"variable '{flat.variables[v].name}' is {flat.variables[v].domain}; PSDD variables "
                              "are Boolean")
    where = place(flat, vtree)
    theta: dict[int, float] = {}
    elements: dict[int, list[tuple[int, int, float]]] = {}
    for i in range(len(flat)):
        if vtree.is_leaf(int(where[i])):
            theta[i] = _theta(flat, i, theta)
        else:
            elements[i] = _elements(flat, vtree, where, i, elements)
    meta = "\n".join(metadata_lines(flat.name, flat.variables))
    return HEADER + "\n" + meta + "\n" + _emit(flat, vtree, where, theta, elements)


def _theta(flat: Flat, i: int, theta: dict[int, float]) -> float:
    """P(variable = 1) of a node over one variable."""
    kids, weights = flat.node_children(i).tolist(), flat.node_weights(i).tolist()
    if flat.kind[i] == SUM:
        return float(sum(w * theta[c] for c, w in zip(kids, weights, strict=True)))
    if flat.kind[i] == PRODUCT:
        return theta[kids[0]]
    p = flat.leaf_params(i)
    if flat.family[i] == INDICATOR:
        return float(p[0] == 1)
    if flat.family[i] in (BERNOULLI, CATEGORICAL):
        return float(p[-1])
    raise FormatError(f"leaf '{flat.node_name(i)}' is Gaussian; PSDD leaves are literals and true nodes")


def _elements(flat: Flat, vtree: Vtree, where: np.ndarray, i: int,
              elements: dict[int, list[tuple[int, int, float]]]) -> list[tuple[int, int, float]]:
    """(prime, sub, weight) of a node over an inner vtree node: a product is one element, a sum
    the weighted union of its children's elements."""
    kids = flat.node_children(i).tolist()
    if flat.kind[i] == PRODUCT:
        if len(kids) == 1:
            return elements[kids[0]]
        u = int(where[i])
        left, right = int(vtree.left[u]), int(vtree.right[u])
        if len(kids) != 2 or {int(where[k]) for k in kids} != {left, right}:
            raise FormatError(f"product '{flat.node_name(i)}' has {len(kids)} children; a PSDD element is a pair "
                              "(prime, sub) that splits a vtree node in two")
        prime, sub = (kids[0], kids[1]) if where[kids[0]] == left else (kids[1], kids[0])
        return [(prime, sub, 1.0)]
    total: dict[tuple[int, int], float] = {}
    for c, w in zip(kids, flat.node_weights(i).tolist(), strict=True):
        for p, s, x in elements[c]:
            total[(p, s)] = total.get((p, s), 0.0) + w * x
    return [(p, s, x) for (p, s), x in total.items()]


def _emit(flat: Flat, vtree: Vtree, where: np.ndarray, theta: dict[int, float],
          elements: dict[int, list[tuple[int, int, float]]]) -> str:
    """The node lines of the nodes the root needs, children first."""
    needed = np.zeros(len(flat), dtype=bool)
    needed[-1] = True
    for i in range(len(flat) - 1, -1, -1):
        if needed[i] and i in elements:
            for p, s, w in elements[i]:
                if w > 0:
                    needed[p] = needed[s] = True
    ids: dict[int, int] = {}
    shared: dict[tuple[int, float], int] = {}  # (literal or variable, probability) -> id: no duplicate leaves
    out: list[str] = []
    vt = vtree.ids
    for i in np.flatnonzero(needed).tolist():
        u = int(where[i])
        if i in theta:
            v, t = int(vtree.var[u]) + 1, theta[i]
            key = (v if t == 1 else -v, 1.0) if t in (0.0, 1.0) else (v, t)
            if key not in shared:
                shared[key] = len(out)
                out.append(f"L {len(out)} {vt[u]} {key[0]}" if t in (0.0, 1.0)
                           else f"T {len(out)} {vt[u]} {v} {math.log(t)!r}")
            ids[i] = shared[key]
        else:
            kept = [(p, s, w) for p, s, w in elements[i] if w > 0]
            body = " ".join(f"{ids[p]} {ids[s]} {math.log(w)!r}" for p, s, w in kept)
            ids[i] = len(out)
            out.append(f"D {len(out)} {vt[u]} {len(kept)} {body}")
    return f"psdd {len(out)}\n" + "\n".join(out) + "\n"


def vtree_path(path: Path) -> Path:
    """The .vtree file that goes with a .psdd, .sdd or .jpc file: same folder, same stem."""
    name = path.name.removesuffix(".gz")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return path.with_name(stem + ".vtree")


def write_psdd(path: str | Path, flat: Flat, vtree: Vtree | None = None) -> list[Path]:
    """Write a .psdd (or .psdd.gz) file and its .vtree beside it, atomically; the vtree is derived
    from the circuit when none is given. Raises FormatError for circuits a PSDD cannot hold."""
    path = Path(path)
    tree = vtree if vtree is not None else derive_vtree(flat)
    write_atomic(path, compress_if_gz(path, psdd_text(flat, tree).encode()))
    return [path, write_vtree(vtree_path(path), tree)]
