"""Checks of a model file, run before anything is built from it.

A model file may come from anyone, so :func:`pcdsl.io.model.load_model` trusts nothing in it:

1. sizes first: the file (``MAX_MODEL_BYTES``) and its safetensors header are capped before they
   are read, and the structure's sizes (nodes, units, parameters) before any graph is allocated;
2. the header (:func:`expected_tensors`): every field of the right type and in range, children
   declared before their parents, leaf families that fit their variables, products whose units
   are what their pattern implies, ties naming a sum that owns a group of the same shape;
3. the tensors (:func:`check_tensors`): exactly the expected names, dtypes and shapes; every
   value finite; probabilities in [0, 1]; weights >= 0; every probability row adding up to 1
   within ``ROW_TOLERANCE`` (renormalised, with a warning, only when asked); stds > 0;
   indicator values inside their domain;
4. the structure (:func:`check_structure`): smooth and decomposable, one root, as in `.pc` files.

Each refusal is one :class:`ModelFileError` whose message says where: ``FILE: node 'x' (nodes[3]):
...`` or ``FILE: tensor 'weights/root': ...``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pcdsl.diagnostics import MessageError
from pcdsl.distill.colour import TRANSFORMS as COLOURS
from pcdsl.ir.graph import CircuitGraph
from pcdsl.numerics import MAX_MAGNITUDE, ROW_TOLERANCE
from pcdsl.syntax.elaborate import MAX_CATEGORIES, MAX_VARIABLES
from pcdsl.syntax.leaves import _DOMAINS as FAMILY_DOMAINS
from pcdsl.syntax.signatures import MAX_UNITS

MAX_MODEL_BYTES = 1 << 35  # 32 GiB
MAX_HEADER_BYTES = 1 << 27  # the safetensors JSON header
MAX_NODES = 1 << 22
MAX_PARAMETERS = MAX_MODEL_BYTES // 8  # float64 values the structure may ask for
DOMAIN_SIZES = {"bool": 2, "real": None}
PATTERNS = ("hadamard", "kronecker")


class ModelFileError(MessageError):
    """A model file that cannot be read; the message says why and where."""

    code = "E0008"


class ModelFileWarning(UserWarning):
    """A model file was changed on load (rows renormalised, when asked)."""


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, refused before reading when larger than MAX_MODEL_BYTES."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_MODEL_BYTES:
            raise ModelFileError(f"{path}: {size} bytes; a model file is at most {MAX_MODEL_BYTES}")
        return Path(path).read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read it: {exc.strerror or exc}") from None


def metadata(raw: bytes, path: str | Path) -> dict[str, Any]:
    """The pcdsl JSON object of a safetensors file's metadata, its header length checked first."""
    if len(raw) < 8:
        raise ModelFileError(f"{path}: not a pcdsl model file (too short for a safetensors header)")
    length = int.from_bytes(raw[:8], "little")
    if length > min(MAX_HEADER_BYTES, len(raw) - 8):
        raise ModelFileError(f"{path}: not a pcdsl model file (a header of {length} bytes in a file of {len(raw)})")
    try:
        header = json.loads(raw[8:8 + length])
        meta = json.loads(header["__metadata__"]["pcdsl"])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ModelFileError(f"{path}: not a pcdsl model file (no readable 'pcdsl' metadata: {exc!r})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: the 'pcdsl' metadata is not a JSON object")
    if meta.get("format") != "pcdsl-model" or meta.get("version") != 1:
        raise ModelFileError(f"{path}: unsupported format {meta.get('format')!r} version {meta.get('version')!r} "
                             "(this pcdsl reads pcdsl-model version 1)")
    if meta.get("colour", "identity") not in COLOURS:
        raise ModelFileError(f"{path}: unknown colour space {meta.get('colour')!r} (one of {', '.join(COLOURS)})")
    return meta


def _int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


class _Header:
    """Walks the header once, children first, refusing at the first problem."""

    def __init__(self, meta: dict[str, Any], path: str | Path):
        self.meta, self.path = meta, path
        self.units: dict[str, int] = {}
        self.kinds: dict[str, str] = {}
        self.shapes: dict[str, tuple[int, int]] = {}  # sum -> weight shape
        self.expected: dict[str, tuple[tuple[int, ...], str]] = {}  # tensor -> (shape, dtype)
        self.leaves: dict[str, tuple[Any, ...]] = {}  # leaf -> (family, units, domain, size)
        self.tied_leaves: set[str] = set()
        self.pending: list[tuple[str, str, str]] = []  # leaf ties, checked with the sums'
        self.total = 0

    def fail(self, where: str, message: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: {where}: {message}")

    def variables(self) -> list[dict[str, Any]]:
        variables = self.meta.get("variables")
        if not isinstance(variables, list) or not 1 <= len(variables) <= MAX_VARIABLES:
            raise self.fail("header", f"'variables' must be a list of 1 to {MAX_VARIABLES} variables")
        names: set[str] = set()
        for i, v in enumerate(variables):
            where = f"variable {i}"
            if not isinstance(v, dict) or not isinstance(v.get("name"), str) or v["name"] in names:
                raise self.fail(where, "each variable needs a distinct 'name'")
            names.add(v["name"])
            domain, size = v.get("domain"), v.get("size")
            if domain == "categorical":
                if not _int(size, 2, MAX_CATEGORIES):
                    raise self.fail(where, f"categorical 'size' must be in 2..{MAX_CATEGORIES}, not {size!r}")
            elif not isinstance(domain, str) or domain not in DOMAIN_SIZES or size != DOMAIN_SIZES[domain]:
                raise self.fail(where, f"domain {domain!r} with size {size!r} (bool: 2, real: null, categorical: n)")
        return variables

    def nodes(self, variables: list[dict[str, Any]]) -> None:
        nodes = self.meta.get("nodes")
        if not isinstance(nodes, list) or not 1 <= len(nodes) <= MAX_NODES:
            raise self.fail("header", f"'nodes' must be a list of 1 to {MAX_NODES} nodes")
        if not isinstance(self.meta.get("circuit"), str):
            raise self.fail("header", "'circuit' must be a name")
        ties: list[tuple[str, str, str]] = []
        for i, n in enumerate(nodes):
            if not isinstance(n, dict) or not isinstance(n.get("name"), str) or n["name"] in self.units:
                raise self.fail(f"nodes[{i}]", "each node needs a distinct 'name'")
            where = f"node '{n['name']}' (nodes[{i}])"
            kind, units, children = n.get("kind"), n.get("units"), n.get("children", [])
            if not isinstance(units, int) or not _int(units, 1, MAX_UNITS):
                raise self.fail(where, f"'units' must be an integer in 1..{MAX_UNITS}, not {units!r}")
            if not isinstance(children, list) or not all(isinstance(c, str) for c in children):
                raise self.fail(where, "'children' must be a list of node names")
            for c in children:
                if c not in self.units:
                    raise self.fail(where, f"child '{c}' is not declared before it (nodes come children first)")
            if not isinstance(n.get("fixed", False), bool):
                raise self.fail(where, f"'fixed' must be true or false, not {n.get('fixed')!r}")
            if kind == "input":
                self.input(n, where, variables)
            elif kind == "product":
                self.product(n, where)
            elif kind == "sum":
                self.sum(n, where, ties)
            else:
                raise self.fail(where, f"'kind' must be input, product or sum, not {kind!r}")
            self.units[n["name"]], self.kinds[n["name"]] = units, kind
            self.total += units
            if self.total > MAX_PARAMETERS:
                raise self.fail(where, f"the circuit has more than {MAX_PARAMETERS} units")
        self.check_ties(ties + self.pending)

    def input(self, n: dict[str, Any], where: str, variables: list[dict[str, Any]]) -> None:
        family, var, units = n.get("family"), n.get("var"), n["units"]
        if n.get("children"):
            raise self.fail(where, "an input node has no children")
        if not isinstance(var, int) or not _int(var, 0, len(variables) - 1):
            raise self.fail(where, f"'var' must be a variable index in 0..{len(variables) - 1}, not {var!r}")
        domain, size = variables[var]["domain"], variables[var]["size"]
        if not isinstance(family, str) or family not in FAMILY_DOMAINS or domain not in FAMILY_DOMAINS[family]:
            raise self.fail(where, f"family {family!r} does not fit variable '{variables[var]['name']}' ({domain})")
        self.leaves[n["name"]] = (family, units, domain, size)
        tie = n.get("tie")
        if tie is not None:  # a tied leaf reads its owner's tensors
            if not isinstance(tie, str):
                raise self.fail(where, f"'tie' must name a leaf, not {tie!r}")
            self.tied_leaves.add(n["name"])
            self.pending.append((n["name"], tie, where))
            return
        prefix = f"input/{n['name']}/"
        if family == "categorical":
            self.expect(prefix + "probs", (units, size), "float64", where)
        elif family == "bernoulli":
            self.expect(prefix + "p", (units,), "float64", where)
        elif family == "gaussian":
            self.expect(prefix + "mean", (units,), "float64", where)
            self.expect(prefix + "std", (units,), "float64", where)
        else:
            self.expect(prefix + "value", (units,), "int64", where)

    def product(self, n: dict[str, Any], where: str) -> None:
        children, pattern = n.get("children"), n.get("pattern")
        if not children or pattern not in PATTERNS:
            raise self.fail(where, f"a product needs children and a pattern ({' or '.join(PATTERNS)})")
        sizes = [self.units[c] for c in children]
        implied = math.prod(sizes) if pattern == "kronecker" else max(sizes)
        if n["units"] != implied:
            raise self.fail(where, f"a {pattern} product of children with {sizes} units has {implied} units, "
                            f"not {n['units']}")

    def sum(self, n: dict[str, Any], where: str, ties: list[tuple[str, str, str]]) -> None:
        children, tie = n.get("children"), n.get("tie")
        if not children or len(set(children)) != len(children):
            raise self.fail(where, "a sum needs children, each listed once")
        blocks = n.get("blocks", 1)
        sizes = [n["units"]] + [self.units[c] for c in children]
        if not isinstance(blocks, int) or not _int(blocks, 1, MAX_UNITS) or any(u % blocks for u in sizes):
            raise self.fail(where, f"'blocks' must be a positive integer dividing the units {sizes}, not {blocks!r}")
        self.shapes[n["name"]] = weight_shape(n, sum(self.units[c] for c in children))
        if tie is None:
            self.expect(f"weights/{n['name']}", self.shapes[n["name"]], "float64", where)
        elif isinstance(tie, str):
            ties.append((n["name"], tie, where))
        else:
            raise self.fail(where, f"'tie' must name a sum, not {tie!r}")

    def check_ties(self, ties: list[tuple[str, str, str]]) -> None:
        """A tie names the sum (or leaf) that owns its group's parameters: one without a tie, of
        equal shape."""
        for name, tie, where in ties:
            if self.kinds.get(name) == "input":
                if self.kinds.get(tie) != "input" or tie == name or self.leaves.get(tie) != self.leaves[name] \
                        or tie in self.tied_leaves:
                    raise self.fail(where, f"'tie' names '{tie}', which is not an untied leaf of the same family, "
                                    "units and domain")
                continue
            if self.kinds.get(tie) != "sum" or tie == name:
                raise self.fail(where, f"'tie' names '{tie}', which is not another sum of the circuit")
            if f"weights/{tie}" not in self.expected:
                raise self.fail(where, f"'tie' names '{tie}', which is itself tied: a tie names the sum that owns "
                                "the group's weights")
            if self.shapes[tie] != self.shapes[name]:
                raise self.fail(where, f"tied to '{tie}', but its weights would have shape {self.shapes[name]}, "
                                f"not {self.shapes[tie]}")

    def expect(self, tensor: str, shape: tuple[int, ...], dtype: str, where: str) -> None:
        self.expected[tensor] = (shape, dtype)
        self.total += math.prod(shape)
        if self.total > MAX_PARAMETERS:
            raise self.fail(where, f"the circuit asks for more than {MAX_PARAMETERS} parameters")


def weight_shape(node: Mapping[str, Any], child_units: int) -> tuple[int, int]:
    """The stored shape of a sum's weights, from its header entry and its children's units
    (a block-diagonal sum stores one block row per unit)."""
    return (node["units"], child_units // node.get("blocks", 1))


def expected_tensors(meta: dict[str, Any], path: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Check the header; the tensors it implies: name -> (shape, dtype)."""
    header = _Header(meta, path)
    header.nodes(header.variables())
    return header.expected


def check_tensors(tensors: dict[str, np.ndarray], expected: dict[str, tuple[tuple[int, ...], str]],
                  sizes: dict[str, int | None], path: str | Path, renormalise: bool = False) -> None:
    """Names, dtypes, shapes and values; rows renormalised in place when `renormalise` (with a warning).
    `sizes`: the domain size of each indicator tensor's variable."""
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing:
        raise ModelFileError(f"{path}: tensor '{missing[0]}' is missing")
    if extra:
        raise ModelFileError(f"{path}: tensor '{extra[0]}' belongs to no node of the structure")
    for name in sorted(expected):
        shape, dtype = expected[name]
        value = tensors[name]
        if value.dtype != np.dtype(dtype) or value.shape != shape:
            raise ModelFileError(f"{path}: tensor '{name}' is {value.dtype} {value.shape}; the structure implies "
                                 f"{dtype} {shape}")
        problem = _values(name, value, sizes.get(name), renormalise)
        if problem:
            raise ModelFileError(f"{path}: tensor '{name}': {problem}")


def _values(name: str, value: np.ndarray, size: int | None, renormalise: bool) -> str | None:
    """What is wrong with a tensor's values (None: nothing), by what it holds."""
    kind = name.rsplit("/", 1)[-1]
    if kind == "value":
        bad = np.flatnonzero((value < 0) | (value >= (size or 0)))
        return f"indicator value {value[bad[0]]} at row {bad[0]} is outside 0..{(size or 0) - 1}" if bad.size else None
    if not np.isfinite(value).all():
        at = np.argwhere(~np.isfinite(value))[0]
        return f"{value[tuple(at)]} at {tuple(int(i) for i in at)}: every value must be finite"
    if kind in ("std", "mean"):
        low = 1 / MAX_MAGNITUDE if kind == "std" else -MAX_MAGNITUDE
        bad = np.flatnonzero((value < low) | (value > MAX_MAGNITUDE))
        rule = f"in [{low:g}, {MAX_MAGNITUDE:g}]" + (" (a std must be > 0)" if kind == "std" else "")
        return f"{kind} {value[bad[0]]} at row {bad[0]}: must lie {rule}" if bad.size else None
    if kind in ("probs", "p") or name.startswith("weights/"):
        if ((value < 0) | (value > 1)).any():
            at = np.argwhere((value < 0) | (value > 1))[0]
            return f"{value[tuple(at)]} at {tuple(int(i) for i in at)}: probabilities and weights lie in [0, 1]"
    if kind == "p":
        return None
    return _rows(value, renormalise)


def _rows(value: np.ndarray, renormalise: bool) -> str | None:
    totals = value.sum(axis=1)
    off = np.flatnonzero(np.abs(totals - 1) > ROW_TOLERANCE)
    if not off.size:
        return None
    row = int(off[0])
    if not renormalise or (totals[off] <= 0).any():
        return (f"row {row} adds up to {totals[row]:.17g}, not 1 (tolerance {ROW_TOLERANCE:g}); "
                + ("an all-zero row cannot be renormalised" if totals[row] <= 0 else "load with renormalise "
                   "(`--renormalise`) to divide each row by its sum"))
    value[off] /= totals[off, None]
    warnings.warn(f"renormalised {off.size} rows (row {row} added up to {totals[row]:.17g})", ModelFileWarning,
                  stacklevel=3)
    return None


def indicator_sizes(meta: dict[str, Any]) -> dict[str, int | None]:
    """The domain size behind each indicator value tensor (header already checked)."""
    variables = meta["variables"]
    return {f"input/{n['name']}/value": variables[n["var"]]["size"]
            for n in meta["nodes"] if n["kind"] == "input" and n["family"] == "indicator"}


def check_structure(graph: CircuitGraph, path: str | Path) -> None:
    """Smooth, decomposable, one single-unit root: the first error, as one message."""
    from pcdsl.ir.validate import validate

    errors = [d for d in validate(graph) if d.is_error]
    if errors:
        first = errors[0]
        notes = "; ".join(n.message for n in first.notes[:3])
        raise ModelFileError(f"{path}: invalid structure: {first.message}" + (f" ({notes})" if notes else "")
                             + (f" [{first.code}]"))
