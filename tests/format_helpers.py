"""Independent tools for the format tests, written from the formats' documentation only
(docs/formats.md and the formats' own file headers), sharing no code with pcdsl.io:

- `DocumentedReader`: a strict line-based reader (field order, single spaces, 0-based ids in
  line order, 1-based variables, natural-log weights that normalise) plus an evaluator of what it
  read, so files pcdsl writes are checked against the format, not against pcdsl's own reader;
- random PSDD-shaped circuits and random vtrees;
- an SDD compiler from truth tables (canonical decomposition on a vtree) and a brute-force SDD
  evaluator, for model counts.
"""

from __future__ import annotations

import itertools
import math
import re

import numpy as np

from pcdsl.ir.graph import BOOL, CircuitGraph, Variable
from pcdsl.params import Parameters, initialise

_INT = re.compile(r"^-?\d+$")
_REAL = re.compile(r"^-?(\d+\.?\d*([eE][-+]?\d+)?|inf)$")

# field kinds per line letter: i = id (0-based, the line's position), n = non-negative integer,
# v = variable (from 1), l = literal (+-variable), c = count of the repeated group,
# r = real, p = log-probability (<= 0); the repeat group follows the fixed fields
FORMS = {
    "jpc": {"L": ("inl", ""), "I": ("invn", ""), "C": ("inv", "p"), "G": ("invrr", ""),
            "P": ("inc", "n"), "S": ("inc", "np")},
    "psdd": {"L": ("inl", ""), "T": ("invp", ""), "D": ("inc", "nnp")},
    "vtree": {"L": ("iv", ""), "I": ("inn", "")},
}


class DocumentedReader:
    """Parses a file of one of the formats strictly as documented; raises AssertionError with the
    line on any deviation."""

    def __init__(self, text: str, magic: str) -> None:
        self.nodes: list[tuple[str, list[str]]] = []
        lines = [line for line in text.split("\n") if line and not line.startswith("c")]
        header = lines[0].split(" ")
        assert header == [magic, header[1]] and _INT.match(header[1]), lines[0]
        self.count = int(header[1])
        seen: set[int] = set()
        for number, line in enumerate(lines[1:]):
            assert line == " ".join(line.split()) and "  " not in line, f"not single-spaced: {line!r}"
            letter, *fields = line.split(" ")
            fixed, repeat = FORMS[magic][letter]
            assert len(fields) >= len(fixed), line
            # circuits number nodes in line order; vtrees in order (left, node, right), children first
            self._check(fields, fixed, repeat, number if magic != "vtree" else int(fields[0]), line)
            if magic == "vtree":
                assert 0 <= int(fields[0]) < self.count and int(fields[0]) not in seen, line
                assert letter == "L" or {int(fields[1]), int(fields[2])} <= seen, f"children first: {line}"
            seen.add(int(fields[0]))
            self.nodes.append((letter, fields))
        assert len(self.nodes) == self.count, "header count"

    @staticmethod
    def _check(fields: list[str], fixed: str, repeat: str, number: int, line: str) -> None:
        assert int(fields[0]) == number, f"ids are 0-based, in line order: {line}"
        groups = (len(fields) - len(fixed)) / max(1, len(repeat))
        if "c" in fixed:
            assert groups == int(fields[fixed.index("c")]) >= 1, f"count: {line}"
        elif repeat:
            assert groups == int(groups) and groups >= 1, line
        else:
            assert groups == 0, line
        kinds = fixed + repeat * int(groups)
        for kind, text in zip(kinds, fields, strict=True):
            if kind in "invlc":
                assert _INT.match(text), f"integer field {text!r}: {line}"
                value = int(text)
                assert kind != "v" or value >= 1, f"variables start at 1: {line}"
                assert kind != "l" or value != 0, f"literal 0: {line}"
                assert kind not in "nc" or value >= 0, line
            else:
                assert _REAL.match(text), f"real field {text!r}: {line}"
                assert kind != "p" or float(text) <= 1e-12, f"a log-probability above 0: {line}"


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top if top == -math.inf else top + math.log(sum(math.exp(v - top) for v in values))


def jpc_log_likelihood(reader: DocumentedReader, x: np.ndarray) -> np.ndarray:
    """log p(x) of a .jpc file's circuit, row by row (-1 / NaN: missing, marginalised)."""
    out = []
    for row in x:
        values: list[float] = []
        for letter, fields in reader.nodes:
            f = fields
            if letter in "LICG":
                var = abs(int(f[2])) - 1
                value = row[var]
                missing = value == -1 or value != value
                if letter == "L":
                    values.append(0.0 if missing or value == (int(f[2]) > 0) else -math.inf)
                elif letter == "I":
                    values.append(0.0 if missing or value == int(f[3]) else -math.inf)
                elif letter == "C":
                    logs = [float(t) for t in f[3:]]
                    assert abs(_logsumexp(logs)) < 1e-9, "categorical log-probabilities normalise"
                    values.append(0.0 if missing else logs[int(value)])
                else:
                    mean, std = float(f[3]), float(f[4])
                    values.append(0.0 if missing else -0.5 * ((value - mean) / std) ** 2 - math.log(std)
                                  - 0.5 * math.log(2 * math.pi))
            elif letter == "P":
                values.append(sum(values[int(c)] for c in f[3:]))
            else:
                pairs = [(int(f[j]), float(f[j + 1])) for j in range(3, len(f), 2)]
                assert abs(_logsumexp([w for _, w in pairs])) < 1e-9, "sum log-weights normalise"
                values.append(_logsumexp([values[c] + w for c, w in pairs]))
        out.append(values[-1])
    return np.array(out)


def psdd_log_likelihood(reader: DocumentedReader, x: np.ndarray) -> np.ndarray:
    """log p(x) of a .psdd file's circuit, row by row (-1: missing)."""
    out = []
    for row in x:
        values: list[float] = []
        for letter, f in reader.nodes:
            if letter == "L":
                lit = int(f[2])
                value = row[abs(lit) - 1]
                values.append(0.0 if value == -1 or value == (lit > 0) else -math.inf)
            elif letter == "T":
                value, logp = row[int(f[2]) - 1], float(f[3])
                values.append(0.0 if value == -1 else logp if value == 1 else math.log1p(-math.exp(logp)))
            else:
                triples = [(int(f[j]), int(f[j + 1]), float(f[j + 2])) for j in range(3, len(f), 3)]
                assert abs(_logsumexp([w for _, _, w in triples])) < 1e-9, "decision weights normalise"
                values.append(_logsumexp([values[p] + values[s] + w for p, s, w in triples]))
        out.append(values[-1])
    return np.array(out)


def check_normalised_psdd(psdd: DocumentedReader, vtree: DocumentedReader) -> None:
    """The PSDD is normalised for the vtree: leaves at their variable's leaf, primes at the left
    child and subs at the right child of their decision node's vtree node."""
    leaf_var = {int(f[0]): int(f[1]) for letter, f in vtree.nodes if letter == "L"}
    children = {int(f[0]): (int(f[1]), int(f[2])) for letter, f in vtree.nodes if letter == "I"}
    at = {}
    for letter, f in psdd.nodes:
        node, vt = int(f[0]), int(f[1])
        at[node] = vt
        if letter == "L":
            assert leaf_var[vt] == abs(int(f[2]))
        elif letter == "T":
            assert leaf_var[vt] == int(f[2])
        else:
            for j in range(3, len(f), 3):
                assert (at[int(f[j])], at[int(f[j + 1])]) == children[vt]


# ---- random circuits --------------------------------------------------------------------------
def random_vtree_order(rng: np.random.Generator, variables: list[int]) -> list[tuple[int, int, int]]:
    """A random binary tree over `variables` as (left, right, var) triples, children first."""
    nodes: list[tuple[int, int, int]] = []

    def build(vs: list[int]) -> int:
        if len(vs) == 1:
            nodes.append((-1, -1, vs[0]))
            return len(nodes) - 1
        cut = int(rng.integers(1, len(vs)))
        a, b = build(vs[:cut]), build(vs[cut:])
        nodes.append((a, b, -1))
        return len(nodes) - 1

    build(list(rng.permutation(variables).tolist()))
    return nodes


def random_psdd(seed: int, num_vars: int = 5, width: int = 3) -> tuple[CircuitGraph, Parameters]:
    """A random circuit of PSDD shape over Boolean variables: literal and Bernoulli leaves, and at
    each inner node of a random vtree a few sums over (left node x right node) products."""
    rng = np.random.default_rng(seed)
    tree = random_vtree_order(rng, list(range(num_vars)))
    spec: list[tuple] = []  # (name, kind, payload), children first
    pools: list[list[int]] = []
    for i, (left, right, var) in enumerate(tree):
        pool = []
        if var >= 0:
            for v in (0, 1):
                spec.append((f"l{len(spec)}", "indicator", (var, v)))
                pool.append(len(spec) - 1)
            for _ in range(2):
                spec.append((f"t{len(spec)}", "bernoulli", (var, float(rng.uniform(0.05, 0.95)))))
                pool.append(len(spec) - 1)
        else:
            for _ in range(width if i + 1 < len(tree) else 1):
                products = []
                for _ in range(int(rng.integers(1, 4))):
                    pair = (int(rng.choice(pools[left])), int(rng.choice(pools[right])))
                    spec.append((f"p{len(spec)}", "product", pair))
                    products.append(len(spec) - 1)
                spec.append((f"d{len(spec)}", "sum", (products, rng.dirichlet(np.ones(len(products))))))
                pool.append(len(spec) - 1)
        pools.append(pool)
    used = {len(spec) - 1}
    for j in range(len(spec) - 1, -1, -1):  # keep what the root reaches
        name, kind, payload = spec[j]
        if j in used and kind == "product":
            used.update(payload)
        elif j in used and kind == "sum":
            used.update(payload[0])
    graph = CircuitGraph(f"psdd{seed}", tuple(Variable(f"b{i}", i, BOOL) for i in range(num_vars)))
    for j in sorted(used):
        name, kind, payload = spec[j]
        if kind == "indicator":
            graph.add_input(name, payload[0], "indicator", 1, {"value": np.array([payload[1]])})
        elif kind == "bernoulli":
            graph.add_input(name, payload[0], "bernoulli", 1, {"p": np.array([payload[1]])})
        elif kind == "product":
            graph.add_product(name, (spec[payload[0]][0], spec[payload[1]][0]))
        else:
            graph.add_sum(name, tuple(spec[c][0] for c in payload[0]), 1, payload[1][None, :])
    return graph, initialise(graph, seed)


def vtree_file_text(nodes: list[tuple[int, int, int]]) -> str:
    """A vtree's file text: node i has id i (children first), variables from 1."""
    lines = [f"vtree {len(nodes)}"]
    for i, (left, right, var) in enumerate(nodes):
        lines.append(f"L {i} {var + 1}" if var >= 0 else f"I {i} {left} {right}")
    return "\n".join(lines) + "\n"


# ---- SDDs --------------------------------------------------------------------------------------
class SddCompiler:
    """Compiles truth tables over n variables into SDD lines on a vtree, canonically (compressed
    and trimmed): group the left variables' assignments by the function they leave on the right."""

    def __init__(self, n: int, tree: list[tuple[int, int, int]]) -> None:
        self.n, self.tree = n, tree
        self.assignments = np.array(list(itertools.product([0, 1], repeat=n)), dtype=np.int64)
        self.lines: list[str] = []
        self.memo: dict[tuple[int, bytes], int] = {}
        self.vars: list[list[int]] = []
        for left, right, var in tree:  # children first
            self.vars.append([var] if var >= 0 else self.vars[left] + self.vars[right])

    def _emit(self, line: str) -> int:
        self.lines.append(line.format(id=len(self.lines)))
        return len(self.lines) - 1

    def compile(self, node: int, table: np.ndarray) -> int:
        key = (node, table.tobytes())
        if key in self.memo:
            return self.memo[key]
        self.memo[key] = self._compile(node, table)
        return self.memo[key]

    def _compile(self, node: int, table: np.ndarray) -> int:
        if not table.any():
            return self.compile_constant("F")
        if table.all():
            return self.compile_constant("T")
        left, right, var = self.tree[node]
        if var >= 0:
            positive = bool(table[self.assignments[:, var] == 1].all())
            return self._emit(f"L {{id}} {node} {var + 1 if positive else -(var + 1)}")
        left_vars = self.vars[left]
        groups: dict[bytes, list[tuple[int, ...]]] = {}
        subs: dict[bytes, np.ndarray] = {}
        for a in itertools.product([0, 1], repeat=len(left_vars)):
            # the sub-function: f with the left variables fixed to a, as a table over all variables
            sub = np.array([table[self._index(r, left_vars, a)] for r in self.assignments], dtype=bool)
            groups.setdefault(sub.tobytes(), []).append(a)
            subs[sub.tobytes()] = sub
        if len(groups) == 1:  # the function ignores the left variables
            return self.compile(right, next(iter(subs.values())))
        elements = []
        for sub_key, members in groups.items():
            prime = np.array([tuple(r[left_vars]) in members for r in self.assignments], dtype=bool)
            elements.append((prime, subs[sub_key]))
        constant = [p for p, sub in elements if sub.all()]
        if len(elements) == 2 and constant and not any(sub.any() for _, sub in elements if not sub.all()):
            return self.compile(left, constant[0])  # trimmed: (p, true), (not p, false) is p itself
        pairs = [(self.compile(left, p), self.compile(right, sub)) for p, sub in elements]
        body = " ".join(f"{p} {sub}" for p, sub in pairs)
        return self._emit(f"D {{id}} {node} {len(pairs)} {body}")

    def _index(self, row: np.ndarray, left_vars: list[int], a: tuple[int, ...]) -> int:
        r = row.copy()
        r[left_vars] = a
        return int(sum(int(b) << (self.n - 1 - i) for i, b in enumerate(r)))

    def compile_constant(self, letter: str) -> int:
        key = (-1, letter.encode())
        if key not in self.memo:
            self.memo[key] = self._emit(f"{letter} {{id}}")
        return self.memo[key]

    def text(self, root: int) -> str:
        assert root == len(self.lines) - 1, "the root is the last line"
        return f"sdd {len(self.lines)}\n" + "\n".join(self.lines) + "\n"


def sdd_truth(text: str, assignment: tuple[int, ...]) -> bool:
    """Evaluate an .sdd file's root on one assignment (variables from 1), by its documented meaning."""
    values: dict[int, bool] = {}
    last = -1
    for line in text.split("\n"):
        if not line or line.startswith(("c", "sdd")):
            continue
        letter, *f = line.split(" ")
        node = int(f[0])
        if letter in "FT":
            values[node] = letter == "T"
        elif letter == "L":
            lit = int(f[2])
            values[node] = assignment[abs(lit) - 1] == (lit > 0)
        else:
            values[node] = any(values[int(f[j])] and values[int(f[j + 1])] for j in range(3, len(f), 2))
        last = node
    return values[last]
