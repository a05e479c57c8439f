"""A circuit with its parameters written back as `.pc` source text (for circuits small enough
to read).

The `.pc` language gives explicit weights only to one-unit sums, so the circuit is written
scalar: one `leaf`, `prod` or `sum` per unit, every parameter written out (shortest repr, so
`pcdsl check` reads back the same float64 values). Node names are kept where they are `.pc`
names, else made up (``n12``); variables keep their names when they are names or one array with
one domain, else become ``v0, v1, ...`` (with a comment giving the old names). Ties and `fixed`
marks are not kept: each unit gets its own copy of its parameters.
"""

from __future__ import annotations

import re
from pathlib import Path

from pcdsl.io.atomic import write_atomic
from pcdsl.io.flat import BERNOULLI, CATEGORICAL, GAUSSIAN, INDICATOR, LEAF, PRODUCT, Flat, FormatError, merge_children
from pcdsl.ir.graph import Variable

MAX_NODES = 100_000  # beyond this a .pc file is no longer something to read; use .jpc or a model file
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ARRAY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\[(\d+(?:, \d+)*)\]$")
KEYWORDS = {"import", "const", "data", "circuit", "var", "leaf", "prod", "sum", "outer", "structure", "with",
            "recipe", "true", "false"}


def pc_text(flat: Flat) -> str:
    """The `.pc` text of a flat circuit (module doc)."""
    if len(flat) > MAX_NODES:
        raise FormatError(f"the circuit has {len(flat)} scalar nodes; .pc text is written for at most {MAX_NODES} "
                          "(write a .jpc or a .safetensors model instead)")
    header, refs = _variables(flat.variables)
    names = _node_names(flat)
    out = [f"# written by pcdsl: {len(flat)} nodes, parameters included", f"circuit {_identifier(flat.name)} {{",
           *header]
    alias: dict[int, str] = {}
    for i in range(len(flat)):
        kids = [alias.get(c, names[c]) for c in flat.node_children(i).tolist()]
        if flat.kind[i] == LEAF:
            out.append(f"  leaf {names[i]} = {_leaf(flat, i, refs[int(flat.var[i])])}")
        elif flat.kind[i] == PRODUCT:
            if len(kids) == 1:  # `prod` needs two factors; a one-factor product is its factor
                alias[i] = kids[0]
                continue
            out.append(f"  prod {names[i]} = {' * '.join(kids)}")
        else:
            children, weights = merge_children(flat.node_children(i).tolist(), flat.node_weights(i))
            terms = [f"{w!r} {alias.get(c, names[c])}" for c, w in zip(children, weights.tolist(), strict=True)]
            out.append(f"  sum {names[i]} = {' + '.join(terms)}")
    out.append("}")
    return "\n".join(out) + "\n"


def write_pc(path: str | Path, flat: Flat) -> Path:
    """Write a flat circuit as `.pc` source, atomically."""
    path = Path(path)
    write_atomic(path, pc_text(flat).encode())
    return path


def _identifier(name: str) -> str:
    clean = re.sub(r"\W", "_", name)
    return clean if _NAME.match(clean) and clean not in KEYWORDS else f"c_{clean}"


def _node_names(flat: Flat) -> list[str]:
    taken: set[str] = set()
    out = []
    for i in range(len(flat)):
        name = re.sub(r"\W+", "_", flat.node_name(i)).strip("_")  # s[3] -> s_3, n4.0 -> n4_0
        if not _NAME.match(name) or name in KEYWORDS:
            name = f"n{i}"
        while name in taken:
            name += "_"
        taken.add(name)
        out.append(name)
    return out


def _variables(variables: tuple[Variable, ...]) -> tuple[list[str], list[str]]:
    """The `var` declarations and how each variable is referred to."""
    names = [v.name for v in variables]
    if all(_NAME.match(n) and n not in KEYWORDS for n in names) and len(set(names)) == len(names):
        return [f"  var {n} : {v.domain}" for n, v in zip(names, variables, strict=True)], names
    arrays = {m.group(1) for m in map(_ARRAY.match, names) if m} if all(_ARRAY.match(n) for n in names) else set()
    if len(arrays) == 1 and len({v.domain for v in variables}) == 1:
        base = arrays.pop()
        shape = _complete_shape(names, base)
        if shape is not None:
            return [f"  var {base}[{', '.join(map(str, shape))}] : {variables[0].domain}"], names
    lines = [f"  # variable v{v.index} was '{v.name}'" for v in variables if v.name != f"v{v.index}"]
    lines += [f"  var v{v.index} : {v.domain}" for v in variables]
    return lines, [f"v{v.index}" for v in variables]


def _complete_shape(names: list[str], base: str) -> tuple[int, ...] | None:
    """The shape of an array whose elements are `names`, in row-major order; None otherwise."""
    import itertools

    positions = [tuple(int(p) for p in m.group(2).split(", ")) for m in map(_ARRAY.match, names) if m]
    if len({len(p) for p in positions}) != 1:
        return None
    shape = tuple(max(p[d] for p in positions) + 1 for d in range(len(positions[0])))
    expected = list(itertools.product(*[range(n) for n in shape]))
    return shape if positions == expected else None


def _leaf(flat: Flat, i: int, ref: str) -> str:
    p = flat.leaf_params(i).tolist()
    family = int(flat.family[i])
    if family == INDICATOR:
        return f"indicator({ref}, {int(p[0])})"
    if family == BERNOULLI:
        return f"bernoulli({ref}, p = {p[0]!r})"
    if family == CATEGORICAL:
        return f"categorical({ref}, [{', '.join(map(repr, p))}])"
    assert family == GAUSSIAN
    return f"gaussian({ref}, mean = {p[0]!r}, std = {p[1]!r})"
