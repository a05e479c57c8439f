"""Fuzzing model files and data files: whatever the bytes, loading ends in the file or in the
project's own error (ModelFileError, DataError) with a one-line message naming the file, never in
another exception; what loads evaluates without NaN.

A few hundred cases run by default; ``pytest -m slow`` runs more than 10,000 of each kind.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import pcdsl
from pcdsl.data import DataError, check_values, load_matrix, load_values
from pcdsl.io.model import ModelFileError, load_model, save_model
from pcdsl.ir.graph import BOOL, REAL, CircuitGraph, Domain, Variable
from pcdsl.params import initialise

from conftest import EXAMPLES

FAST, SLOW = 100, 3500  # per default test (5 of them); the two slow tests run 3 x SLOW each


def _settings(examples: int):  # type: ignore[no-untyped-def]
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


MIXED = """
circuit m { var a : bool  var c : categorical(3)  var h : real
  leaf a0 = bernoulli(a, p = 0.2)  leaf a1 = bernoulli(a, p = 0.9)
  leaf c0 = categorical(c, [0.1, 0.3, 0.6])  leaf c1 = indicator(c, 2) with fixed = true
  leaf h0 = gaussian(h, mean = 0, std = 1)  leaf h1 = gaussian(h, mean = 3, std = 0.5)
  prod p0 = a0 * c0 * h0  prod p1 = a1 * c1 * h1
  sum root = 0.3 p0 + 0.7 p1 }"""


@functools.cache
def _folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="pcdsl-fuzz-"))


@functools.cache
def model_bases() -> tuple[bytes, ...]:
    """Valid model files: every leaf family, products of both patterns, a tie, a fixed leaf."""
    graphs = [pcdsl.check_text(MIXED).circuit("m"), pcdsl.load(EXAMPLES / "groups.pc"),
              pcdsl.load(EXAMPLES / "gaussians.pc")]
    return tuple(save_model(_folder() / f"base{i}.safetensors", g, initialise(g, i)).read_bytes()
                 for i, g in enumerate(graphs))


@st.composite
def byte_mutants(draw: st.DrawFn, bases: tuple[bytes, ...]) -> bytes:
    data = bytearray(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            data = bytearray(b"\x00")
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "repeat"]))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, *b'9-,.\n"[]{}?e']))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 32))]
        elif op == "truncate":
            del data[at:]
        else:
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
    return bytes(data)


def _parts(raw: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from safetensors.numpy import load

    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    return json.loads(header["__metadata__"]["pcdsl"]), dict(load(raw))


def _save(meta: Any, tensors: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    return save(tensors, metadata={"pcdsl": json.dumps(meta)})  # type: ignore[no-any-return]


JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.integers(-3, 40)
                    | st.floats() | st.text(max_size=6) | st.sampled_from(["root", "p0", "a0", "sum", "real"]),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=6)
NODE_FIELDS = ["name", "kind", "units", "children", "family", "var", "pattern", "tie", "fixed", "extra"]


@st.composite
def header_mutants(draw: st.DrawFn) -> bytes:
    meta, tensors = _parts(draw(st.sampled_from(model_bases())))
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(["node", "node", "variable", "top", "drop", "order"]))
        nodes = [n for n in meta.get("nodes", []) if isinstance(n, dict)] if isinstance(meta.get("nodes"), list) else []
        variables = meta.get("variables") if isinstance(meta.get("variables"), list) else []
        variables = [v for v in variables if isinstance(v, dict)]
        if target == "node" and nodes:
            node = draw(st.sampled_from(nodes))
            node[draw(st.sampled_from(NODE_FIELDS))] = draw(JSON)
        elif target == "variable" and variables:
            draw(st.sampled_from(variables))[draw(st.sampled_from(["name", "domain", "size"]))] = draw(JSON)
        elif target == "top":
            meta[draw(st.sampled_from(["format", "version", "circuit", "variables", "nodes"]))] = draw(JSON)
        elif target == "drop" and nodes and any(nodes):
            node = draw(st.sampled_from([n for n in nodes if n]))
            node.pop(draw(st.sampled_from(sorted(node))))
        elif target == "order" and nodes:
            nodes = meta["nodes"]
            i, j = draw(st.integers(0, len(nodes) - 1)), draw(st.integers(0, len(nodes) - 1))
            nodes.insert(j, nodes.pop(i))
    return _save(meta, tensors)


@st.composite
def tensor_mutants(draw: st.DrawFn) -> bytes:
    meta, tensors = _parts(draw(st.sampled_from(model_bases())))
    name = draw(st.sampled_from([*sorted(tensors), "weights/nowhere", "input/a0/q"]))
    old = tensors.get(name, np.zeros(1))
    shape = draw(st.sampled_from([old.shape, old.shape[::-1], (*old.shape, 1), old.shape[:-1], (0,)]))
    dtype = draw(st.sampled_from([old.dtype, np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.int64)]))
    if draw(st.booleans()) and dtype == old.dtype and shape == old.shape:  # right layout, bad values
        elements = st.sampled_from([0.0, -0.0, 1.0, 0.5, -1e-9, 1 + 1e-9, np.nan, np.inf, -np.inf, 1e-320, 7.0])
        value = old.copy()
        for index in draw(st.lists(st.integers(0, max(0, old.size - 1)), max_size=3)):
            if old.size:
                value.reshape(-1)[index] = draw(elements) if old.dtype.kind == "f" else draw(st.integers(-3, 5))
    else:
        floats = st.floats(width=dtype.itemsize * 8) if dtype.kind == "f" else None
        value = draw(hnp.arrays(dtype, shape, elements=floats))
    tensors[name] = value
    if draw(st.booleans()) and name in tensors and len(tensors) > 1 and draw(st.booleans()):
        tensors.pop(draw(st.sampled_from(sorted(tensors))))
    return _save(meta, tensors)


def _evaluates_without_nan(graph: CircuitGraph, params: Any) -> None:
    model = pcdsl.compile(graph, "torch", params=params, dtype="float64")
    rng = np.random.default_rng(0)
    columns = [rng.integers(-1, v.domain.size, 6) if v.domain.is_discrete else rng.normal(0, 3, 6)
               for v in graph.variables]
    x = np.stack(columns, axis=1).astype(np.float64)
    assert not np.isnan(np.asarray(model.log_prob(x))).any()
    flows = model.flows(x)
    assert not any(np.isnan(np.asarray(f)).any() for f in flows.weights.values())
    assert not any(np.isnan(np.asarray(v)).any() for s in flows.inputs.values() for v in s.values())


def check_model_contract(raw: bytes) -> None:
    path = _folder() / "mutant.safetensors"
    path.write_bytes(raw)
    try:
        graph, params = load_model(path)
    except ModelFileError as exc:
        message = str(exc)
        assert message.startswith(str(path)) and "\n" not in message, message
        return
    _evaluates_without_nan(graph, params)


@_settings(FAST)
@given(byte_mutants(model_bases()))
def test_mutated_model_bytes_are_read_or_refused(raw: bytes) -> None:
    check_model_contract(raw)


@_settings(FAST)
@given(header_mutants())
def test_mutated_model_headers_are_read_or_refused(raw: bytes) -> None:
    check_model_contract(raw)


@_settings(FAST)
@given(tensor_mutants())
def test_mutated_model_tensors_are_read_or_refused(raw: bytes) -> None:
    check_model_contract(raw)


@pytest.mark.slow
@_settings(3 * SLOW)
@given(st.one_of(byte_mutants(model_bases()), header_mutants(), tensor_mutants()))
def test_model_files_many_cases(raw: bytes) -> None:
    check_model_contract(raw)


# ---- data files ----------------------------------------------------------------------------------

VARIABLES = (Variable("a", 0, BOOL), Variable("c", 1, Domain("categorical", 3)), Variable("h", 2, REAL))
PIXELS = tuple(Variable(f"x{i}", i, Domain("categorical", 256)) for i in range(4))


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _npz(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, data=array)
    return buf.getvalue()


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


@functools.cache
def data_bases() -> tuple[tuple[str, bytes], ...]:
    """(file name, bytes) of small valid data files in every format."""
    rows = np.array([[0, 2, 0.5], [1, 0, -1.25], [1, 1, 3.0], [0, 2, 1e3]])
    text = "\n".join(f"{int(a)},{int(c)},{float(h)!r}" for a, c, h in rows) + "\n1,?,\n"
    pixels = np.arange(5 * 2 * 2, dtype=np.uint8).reshape(5, 2, 2) * 12
    return (("rows.data", text.encode()), ("rows.csv", text.encode()), ("rows.npy", _npy(rows)),
            ("ints.npy", _npy(np.round(rows).astype(np.int64))), ("rows.npz", _npz(rows)),
            ("images-idx3-ubyte", _idx(pixels)), ("images-idx3-ubyte.gz", gzip.compress(_idx(pixels))))


@st.composite
def data_mutants(draw: st.DrawFn) -> tuple[str, bytes]:
    name, raw = draw(st.sampled_from(data_bases()))
    return name, draw(byte_mutants((raw,)))


@st.composite
def npy_header_mutants(draw: st.DrawFn) -> tuple[str, bytes]:
    raw = _npy(np.array([[0, 2, 0.5], [1, 0, -1.25]]))
    header_end = raw.index(b"\n") + 1
    header = raw[:header_end].decode("latin1")
    swaps = {"(2, 3)": draw(st.sampled_from(["(99999999999, 3)", "(2,)", "(3, 2)", "()", "(2, 3, 1)", "(-1, 3)"])),
             "'<f8'": draw(st.sampled_from(["'<c16'", "'|O'", "'<U3'", "'>f8'", "'<i8'", "'|b1'", "'V8'"])),
             "False": draw(st.sampled_from(["True", "False", "1"]))}
    for old, new in swaps.items():
        if draw(st.booleans()):
            header = header.replace(old, new)
    name = draw(st.sampled_from(["m.npy", "m.npz"]))
    body = header.encode("latin1") + raw[header_end:]
    if name == "m.npz":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as archive:
            archive.writestr("data.npy", body)
        body = buf.getvalue()
    return name, body


@st.composite
def idx_mutants(draw: st.DrawFn) -> tuple[str, bytes]:
    dims = draw(st.lists(st.integers(0, 6), min_size=0, max_size=4))
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0x0A, 0xFF]))
    head = bytes([0, 0, code, draw(st.sampled_from([len(dims), len(dims) + 1, 0, 255]))])
    body = draw(st.binary(max_size=200))
    raw = head + b"".join(d.to_bytes(4, "big") for d in dims) + body
    return draw(st.sampled_from(["t.idx", "t-ubyte", "t-idx1-ubyte.gz"])), gzip.compress(raw) if draw(
        st.booleans()) else raw


@functools.cache
def _models() -> dict[int, Any]:
    out = {}
    for variables in (VARIABLES, PIXELS):
        graph = CircuitGraph("data", variables)
        from pcdsl.structures.fully_factorized import fully_factorized

        fully_factorized(graph, np.arange(len(variables)), prefix="ff", units=2)
        out[len(variables)] = (variables, pcdsl.compile(graph, "torch", seed=0, dtype="float64"))
    return out


def check_data_contract(name: str, raw: bytes) -> None:
    path = _folder() / name
    path.write_bytes(raw)
    for loader in (load_values, load_matrix):
        try:
            values = loader(path)
        except DataError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc), str(exc)
            continue
        assert values.ndim == 2
        values = values.astype(np.float64)
        if values.shape[1] not in _models():
            continue
        variables, model = _models()[values.shape[1]]
        try:
            check_values(values, variables, path)
        except DataError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc), str(exc)
            continue
        assert not np.isnan(np.asarray(model.log_prob(values))).any()


@_settings(FAST)
@given(data_mutants())
def test_mutated_data_files_are_read_or_refused(case: tuple[str, bytes]) -> None:
    check_data_contract(*case)


def test_an_npy_header_numpy_cannot_tokenise_is_refused() -> None:
    """A case hypothesis found: numpy's header parser raises tokenize.TokenError, not ValueError."""
    header = b"{'descr': '<f8', 'f4, 3), }" + b" " * 58 + b"\n"
    check_data_contract("rows.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(80))


def test_npz_files_that_are_not_zip_archives_are_refused() -> None:
    """Cases hypothesis found: a byte cut off the front makes zipfile seek before the file's start
    (OSError); a byte put in front makes numpy take the file for a pickle (ValueError)."""
    buffer = io.BytesIO()
    np.savez(buffer, data=np.arange(12.0).reshape(4, 3))
    for raw in (buffer.getvalue()[1:], b"\0" + buffer.getvalue()):
        check_data_contract("rows.npz", raw)
        with pytest.raises(DataError, match=r"not a valid \.npz file"):
            load_matrix(_folder() / "rows.npz")


@_settings(FAST)
@given(st.one_of(npy_header_mutants(), idx_mutants()))
def test_forged_array_headers_are_read_or_refused(case: tuple[str, bytes]) -> None:
    check_data_contract(*case)


def test_every_base_file_loads() -> None:
    for name, raw in data_bases():
        path = _folder() / name
        path.write_bytes(raw)
        values = load_values(path)
        check_values(values, _models()[values.shape[1]][0], path)
    for raw in model_bases():
        (_folder() / "base.safetensors").write_bytes(raw)
        load_model(_folder() / "base.safetensors")


@pytest.mark.slow
@_settings(3 * SLOW)
@given(st.one_of(data_mutants(), npy_header_mutants(), idx_mutants()))
def test_data_files_many_cases(case: tuple[str, bytes]) -> None:
    check_data_contract(*case)
