"""`.vtree` files (the SDD package's format), read and write.

A vtree file is a header ``vtree COUNT`` and one line per node, children before parents::

    L id variable          a leaf: its variable, from 1
    I id left right        an inner node: the ids of its children

Node ids run from 0 to COUNT - 1; the last line is the root. Reading checks ids (range,
duplicates, children defined first), that the lines form one binary tree (each node the child of
at most one node, only the root without a parent) and that no variable is in two leaves. Writers
number nodes in order (left subtree, node, right subtree), as the SDD package does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcdsl.diagnostics import Diagnostic, Note, error
from pcdsl.io.atomic import write_atomic
from pcdsl.io.flat import LEAF, PRODUCT, Flat, FormatError
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
from pcdsl.ir.vtree import Vtree

VTREE = Schema("vtree", (Kind("L", "vtree leaf", ("id", "variable")),
                         Kind("I", "inner vtree node", ("id", "left", "right"))), frozenset())

HEADER = """c ids of vtree nodes start at 0
c ids of variables start at 1
c vtree nodes appear bottom-up, children before parents
c
c file syntax:
c vtree number-of-nodes-in-vtree
c L id-of-leaf-vtree-node id-of-variable
c I id-of-internal-vtree-node id-of-left-child id-of-right-child
c
"""


@dataclass
class VtreeFile:
    """A vtree read from a file, with its lines (for diagnostics that point into it)."""

    vtree: Vtree
    lines: Lines
    by_id: np.ndarray  # the node (line index) of each file id

    def node(self, vtree_id: int) -> int:
        """The node of a file id, or -1."""
        return int(self.by_id[vtree_id]) if 0 <= vtree_id < len(self.by_id) else -1

    def nodes(self, vtree_ids: np.ndarray) -> np.ndarray:
        inside = (vtree_ids >= 0) & (vtree_ids < len(self.by_id))
        out = np.full(len(vtree_ids), -1, dtype=np.int64)
        out[inside] = self.by_id[vtree_ids[inside]]
        return out

    def note(self, node: int, what: str) -> Note:
        return Note(f"{what}: {self.describe(node)}", self.lines.span(node))

    def describe(self, node: int) -> str:
        if self.vtree.is_leaf(node):
            return f"vtree leaf {self.vtree.ids[node]} (variable {self.vtree.var[node] + 1})"
        shown = self.vtree.variables(node)[:8] + 1
        more = ", ..." if self.vtree.size(node) > 8 else ""
        return f"vtree node {self.vtree.ids[node]} (variables {', '.join(map(str, shown))}{more})"


def read_vtree(path: str | Path) -> VtreeFile:
    """Read and check a .vtree file (or .vtree.gz); raises PcdslError with every problem."""
    lines = scan(read_source(path), VTREE)
    problems: list[Diagnostic] = []
    by_id = check_ids(lines, problems, "vtree node")
    if len(lines) == 0:
        problems.append(error("E0711", "the vtree has no nodes", lines.header_span(),
                              help="a vtree has one leaf per variable"))
    raise_all(problems)
    inner = lines.of_kind("I")
    left = np.full(len(lines), -1, dtype=np.int64)
    right = np.full(len(lines), -1, dtype=np.int64)
    for name, side in (("left", left), ("right", right)):
        ids = lines.ints(inner, "I", name)
        side[inner] = check_children(lines, by_id, inner, ids, np.full(len(inner), VTREE.kind("I").token(name)),
                                     problems, "vtree node")
    raise_all(problems)
    var = np.full(len(lines), -1, dtype=np.int64)
    leaves = lines.of_kind("L")
    var[leaves] = lines.ints(leaves, "L", "variable") - 1
    _check_tree(lines, left, right, var, problems)
    raise_all(problems)
    return VtreeFile(Vtree(left, right, var, lines.values[lines.offsets[:-1]].astype(np.int64)), lines, by_id)


def _check_tree(lines: Lines, left: np.ndarray, right: np.ndarray, var: np.ndarray, problems: list[Diagnostic]) -> None:
    leaves = lines.of_kind("L")
    for i in leaves[var[leaves] < 0][:MAX_SHOWN]:
        problems.append(error("E0709", f"variable {var[i] + 1} is not a variable: variables start at 1",
                              lines.span(int(i), 2)))
    seen: dict[int, int] = {}
    for i in leaves[var[leaves] >= 0].tolist():
        first = seen.setdefault(int(var[i]), i)
        if first != i and len(problems) < MAX_SHOWN:
            problems.append(error("E0711", f"variable {var[i] + 1} is in two leaves", lines.span(i, 2),
                                  Note("its first leaf", lines.span(first, 2)),
                                  help="a vtree has exactly one leaf per variable"))
    inner = np.flatnonzero(left >= 0)
    parent = np.full(len(lines), -1, dtype=np.int64)
    for side, token in ((left, 2), (right, 3)):
        for i in inner.tolist():
            child = int(side[i])
            if parent[child] >= 0 and len(problems) < MAX_SHOWN:
                problems.append(error("E0711", f"vtree node {lines.values[lines.offsets[child]]:.0f} is a child of "
                                      "two nodes", lines.span(i, token),
                                      Note("it is a child here too", lines.span(int(parent[child])))
                                      , help="a vtree is a tree: every node but the root has one parent"))
            parent[child] = i
    for i in np.flatnonzero(parent[:-1] < 0)[:MAX_SHOWN - len(problems)]:
        problems.append(error("E0711", f"vtree node {lines.values[lines.offsets[i]]:.0f} has no parent and is not "
                              "the root", lines.span(int(i), 1),
                              Note("the root is the last line", lines.span(len(lines) - 1)),
                              help="a vtree is one tree: every node but the last is a child of a later one"))


def locate(lines: Lines, vtree_file: VtreeFile, rows: np.ndarray, problems: list[Diagnostic]) -> np.ndarray:
    """The vtree node named by each line's vtree id (its second field; -1 for other lines), the
    ids of `rows` checked to name nodes of the vtree."""
    at = np.full(len(lines), -1, dtype=np.int64)
    at[rows] = vtree_file.nodes(lines.values[lines.offsets[rows] + 1].astype(np.int64))
    for i in rows[at[rows] < 0][:MAX_SHOWN]:
        problems.append(error("E0708", f"vtree id {lines.values[lines.offsets[i] + 1]:.0f} is not a node of "
                              f"{vtree_file.lines.source.name}", lines.span(int(i), 2)))
    return at


def check_places(lines: Lines, vtree_file: VtreeFile, at: np.ndarray, leaves: np.ndarray, var: np.ndarray,
                 inner: np.ndarray, problems: list[Diagnostic]) -> None:
    """Leaves (lines `leaves`, of variables `var`) sit at their variable's vtree leaf; the lines
    `inner` (decision nodes) sit at inner vtree nodes."""
    vtree = vtree_file.vtree
    for j in np.flatnonzero(vtree.var[at[leaves]] != var)[:MAX_SHOWN]:
        i = int(leaves[j])
        what = lines.schema.kind(chr(lines.letters[i])).name
        problems.append(error("E0708", f"a {what} of variable {var[j] + 1} must sit at that variable's vtree leaf",
                              lines.span(i, 2), vtree_file.note(int(at[i]), "its vtree id names"),
                              help="the vtree id of a leaf is the id of its variable's leaf in the vtree"))
    for i in inner[vtree.var[at[inner]] >= 0][:MAX_SHOWN - len(problems)]:
        problems.append(error("E0708", "a decision node must sit at an inner vtree node", lines.span(int(i), 2),
                              vtree_file.note(int(at[i]), "its vtree id names a leaf")))


def vtree_text(vtree: Vtree) -> str:
    """A vtree as the text of a .vtree file."""
    out = [HEADER + f"vtree {len(vtree)}"]
    ids = vtree.ids
    for i in range(len(vtree)):
        if vtree.is_leaf(i):
            out.append(f"L {ids[i]} {vtree.var[i] + 1}")
        else:
            out.append(f"I {ids[i]} {ids[vtree.left[i]]} {ids[vtree.right[i]]}")
    return "\n".join(out) + "\n"


def write_vtree(path: str | Path, vtree: Vtree) -> Path:
    """Write a .vtree (or .vtree.gz) file atomically."""
    path = Path(path)
    write_atomic(path, compress_if_gz(path, vtree_text(vtree).encode()))
    return path


def place(flat: Flat, vtree: Vtree) -> np.ndarray:
    """The vtree node of every node of a flat circuit: the node whose variables are exactly the
    circuit node's. Raises FormatError when the circuit does not respect the vtree."""
    where = np.full(len(flat), -1, dtype=np.int64)
    leaf_of = vtree.leaf_of
    for i in range(len(flat)):
        if flat.kind[i] == LEAF:
            v = int(flat.var[i])
            if v not in leaf_of:
                raise FormatError(f"node '{flat.node_name(i)}' is a leaf of variable {v + 1}, which the vtree lacks")
            where[i] = leaf_of[v]
            continue
        kids = where[flat.node_children(i)]
        node = int(kids[0])
        for k in kids[1:].tolist():
            node = _common(vtree, node, k)
        size = sum(vtree.size(int(k)) for k in kids) if flat.kind[i] == PRODUCT else vtree.size(node)
        if vtree.size(node) != size or (flat.kind[i] != PRODUCT and (kids != node).any()):
            raise FormatError(f"node '{flat.node_name(i)}' does not respect the vtree: its variables are not "
                              "those of one vtree node")
        where[i] = node
    return where


def _common(vtree: Vtree, a: int, b: int) -> int:
    """The lowest common ancestor of two vtree nodes."""
    parent = vtree.parent
    while not vtree.is_under(b, a):
        a = int(parent[a])
    return a
