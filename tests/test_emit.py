"""`pcdsl compile`: the emitted torch module runs without pcdsl and matches the in-memory backend."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import pcdsl
from pcdsl import reference
from pcdsl.cli import main
from pcdsl.params import initialise
from pcdsl.plan import compile_plan, dump_plan

from conftest import ATOL, EXAMPLES

pytest.importorskip("torch")
pytest.importorskip("safetensors")

SEED = 3
CASES = [("tiny.pc", None), ("groups.pc", None), ("gaussians.pc", None), ("hclt_nltcs.pc", "nltcs_hclt"),
         ("quad_tree.pc", None)]

# Runs in a fresh interpreter in which any import of pcdsl fails. For each folder given, it makes
# that folder the working directory, imports the emitted module from it and scores x.npy.
_CHILD = textwrap.dedent("""
    import importlib
    import os
    import sys

    class BlockPcdsl:
        def find_spec(self, name, path=None, target=None):
            if name == "pcdsl" or name.startswith("pcdsl."):
                raise ImportError("pcdsl is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockPcdsl())
    try:
        import pcdsl  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker let pcdsl through")
    import numpy as np
    import torch

    for folder in sys.argv[1:]:
        os.chdir(folder)
        sys.path.insert(0, os.getcwd())
        sys.modules.pop("circuit", None)
        importlib.invalidate_caches()
        circuit = importlib.import_module("circuit")
        model = circuit.load(dtype="float64")
        x = np.load("x.npy")
        np.save("log_prob.npy", model.log_prob(torch.from_numpy(x)).numpy())
        np.save("map.npy", model.map(x)[0])
        np.save("flows.npy", [model.flows(x)["log_likelihood"]])
        with open("variables.txt", "w") as f:
            f.write("\\n".join(model.variables))
        sys.path.pop(0)
    assert not any(m == "pcdsl" or m.startswith("pcdsl.") for m in sys.modules)
""")


def _compile(file: str, circuit: str | None, out: Path) -> None:
    argv = ["compile", str(EXAMPLES / file), "-o", str(out), "--seed", str(SEED)]
    assert main([*argv, "--circuit", circuit] if circuit else argv) == 0


def _data(graph: pcdsl.CircuitGraph, rows: int = 64) -> np.ndarray:
    """Random values, about a fifth missing (-1 discrete, NaN real), plus an all-missing row."""
    rng = np.random.default_rng(0)
    columns = []
    for v in graph.variables:
        size = v.domain.size if v.domain.is_discrete else None
        values = rng.integers(0, size, rows).astype(np.float64) if size else rng.standard_normal(rows)
        values[rng.random(rows) < 0.2] = -1.0 if size else np.nan
        columns.append(np.append(values, -1.0 if size else np.nan))
    return np.stack(columns, axis=1)


@pytest.fixture(scope="module")
def emitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every case emitted into its own folder and scored by one pcdsl-free child interpreter
    (one, because importing torch dominates the cost)."""
    root = tmp_path_factory.mktemp("emitted")
    for file, circuit in CASES:
        _compile(file, circuit, root / file)
        np.save(root / file / "x.npy", _data(pcdsl.load(EXAMPLES / file, circuit)))
    folders = [str(root / file) for file, _ in CASES]
    proc = subprocess.run([sys.executable, "-c", _CHILD, *folders], cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.mark.parametrize(("file", "circuit"), CASES, ids=[f for f, _ in CASES])
def test_emitted_package_matches_torch_backend_without_pcdsl(file: str, circuit: str | None, emitted: Path) -> None:
    """Scored in a child interpreter where pcdsl cannot be imported (see `emitted`)."""
    folder = emitted / file
    files = sorted(p.name for p in (folder / "circuit").iterdir() if p.name != "__pycache__")
    assert files == ["__init__.py", "arrays.safetensors", "layers.py", "layout.py", "numerics.py", "runtime.py",
                     "sparse.py"]
    for path in (folder / "circuit").glob("*.py"):
        source = path.read_text()
        assert "import pcdsl" not in source and "from pcdsl" not in source, path.name
        assert str(emitted) not in source and str(EXAMPLES) not in source  # no absolute paths
    graph = pcdsl.load(EXAMPLES / file, circuit)
    assert (folder / "variables.txt").read_text().splitlines() == [v.name for v in graph.variables]
    x, got = np.load(folder / "x.npy"), np.load(folder / "log_prob.npy")
    params = initialise(graph, SEED)
    np.testing.assert_allclose(got, reference.log_prob(graph, params, x), rtol=0, atol=ATOL)  # the semantics
    model = pcdsl.compile(graph, params=params, dtype="float64")
    np.testing.assert_allclose(got, model.log_prob(x), rtol=0, atol=ATOL)  # type: ignore[attr-defined]
    assert abs(got[-1]) < ATOL  # marginalising everything gives log 1
    np.testing.assert_array_equal(np.load(folder / "map.npy"), model.map(x)[0])  # type: ignore[attr-defined]
    expected = model.flows(x).log_likelihood  # type: ignore[attr-defined]
    assert abs(float(np.load(folder / "flows.npy")[0]) - expected) < 1e-9 * max(1.0, abs(expected))


def test_emission_is_deterministic(tmp_path: Path) -> None:
    _compile("hclt_nltcs.pc", "nltcs_hclt", tmp_path / "a")
    _compile("hclt_nltcs.pc", "nltcs_hclt", tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "a" / "circuit").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b" / "circuit").iterdir())
    for name in names:
        assert (tmp_path / "a" / "circuit" / name).read_bytes() == (tmp_path / "b" / "circuit" / name).read_bytes()
    assert not [p for p in (tmp_path / "a" / "circuit").iterdir() if p.name.startswith(".")]  # no temp files left


def test_emitted_torch_package_runs_the_backends_own_code(tmp_path: Path) -> None:
    """The package's modules are the in-process backend's, byte for byte: emitted code is the fast code."""
    from pcdsl.backends.torch import emit, layers, runtime, sparse

    from pcdsl import layout, numerics

    _compile("groups.pc", None, tmp_path)
    package = tmp_path / "circuit"
    for module in (runtime, layers, sparse, layout, numerics):
        path = Path(module.__file__ or "")
        assert (package / path.name).read_bytes() == path.read_bytes(), path.name
    assert set(emit.SOURCES) == {p.name for p in package.glob("*.py")} - {"__init__.py"}


def test_emitted_package_refuses_a_file_that_is_not_a_circuit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.numpy import save_file

    _compile("tiny.pc", None, tmp_path)
    save_file({"w": np.zeros(3)}, str(tmp_path / "circuit" / "arrays.safetensors"))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.split(".")[0] == "circuit"]:  # none left over: ours, fresh
        del sys.modules[name]
    package = importlib.import_module("circuit")
    for name in [m for m in sys.modules if m.split(".")[0] == "circuit"]:
        del sys.modules[name]
    with pytest.raises(ValueError, match=r"arrays.safetensors: not a circuit written by pcdsl compile"):
        package.load()
    with pytest.raises(ValueError, match="dtype must be one of float32, float64"):
        package.load(dtype="float16")


def test_dump_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", str(EXAMPLES / "tiny.pc"), "--dump-plan"]) == 0
    out = capsys.readouterr().out
    graph = pcdsl.load(EXAMPLES / "tiny.pc")
    assert out == dump_plan(compile_plan(graph, initialise(graph, 0)))
    assert out.startswith("plan tiny: 10 slots, 3 layers, root slot 9\n")
    assert "  layer 0: input categorical units=5 slots [2, 7)" in out
    assert "  layer 2: sum fold=1 units=1 inputs=2 edges=2 slots [9, 10) nodes [root] (1)" in out


def test_unknown_backend_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", str(EXAMPLES / "tiny.pc"), "--backend", "jax"]) == 2
    assert "unknown backend 'jax' (known: numba, torch)" in capsys.readouterr().err


def test_backend_without_emission_is_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import pcdsl.backends

    monkeypatch.setitem(pcdsl.backends._REGISTRY, "other", "pcdsl.backends.numba")
    assert main(["compile", str(EXAMPLES / "tiny.pc"), "--backend", "other", "-o", str(tmp_path / "out")]) == 2
    assert "backend 'other' has no code emission" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_input_exit_1_with_diagnostics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = EXAMPLES.parent / "tests" / "golden" / "bad" / "not_smooth.pc"
    assert main(["compile", str(bad), "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "error[E0203]" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_unknown_circuit_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", str(EXAMPLES / "tiny.pc"), "--circuit", "tinny"]) == 2
    assert "tinny" in capsys.readouterr().err


# The numba package: imported in a child interpreter where pcdsl and torch are blocked.
_NUMBA_CHILD = textwrap.dedent("""
    import importlib
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("pcdsl", "torch"):
                raise ImportError(name + " is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np

    folder, x = sys.argv[1], np.load(sys.argv[2])
    sys.path.insert(0, folder)
    circuit = importlib.import_module("circuit")
    model = circuit.load(dtype="float64")
    np.save(sys.argv[3], model.log_prob(x))
    completed, _ = model.map(x)
    np.save(sys.argv[4], completed)
    assert not any(m.split(".")[0] in ("pcdsl", "torch") for m in sys.modules)
""")


@pytest.mark.parametrize(("file", "circuit"), [CASES[2], CASES[3]], ids=["gaussians.pc", "hclt_nltcs.pc"])
def test_emitted_numba_package_runs_without_pcdsl_or_torch(file: str, circuit: str | None, tmp_path: Path) -> None:
    pytest.importorskip("numba")
    argv = ["compile", str(EXAMPLES / file), "--backend", "numba", "-o", str(tmp_path), "--seed", str(SEED)]
    assert main([*argv, "--circuit", circuit] if circuit else argv) == 0
    files = sorted(p.name for p in (tmp_path / "circuit").iterdir())
    assert files == ["__init__.py", "arrays.npz", "kernels.py", "live.py", "runtime.py", "scaled.py"]
    for name in ("__init__.py", "kernels.py", "runtime.py"):
        source = (tmp_path / "circuit" / name).read_text()
        assert not any(f"{verb} {module}" in source for verb in ("import", "from") for module in ("pcdsl", "torch"))
    graph = pcdsl.load(EXAMPLES / file, circuit)
    x = _data(graph)
    np.save(tmp_path / "x.npy", x)
    outputs = [str(tmp_path / "lp.npy"), str(tmp_path / "map.npy")]
    proc = subprocess.run([sys.executable, "-c", _NUMBA_CHILD, str(tmp_path), str(tmp_path / "x.npy"), *outputs],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    params = initialise(graph, SEED)
    np.testing.assert_allclose(np.load(outputs[0]), reference.log_prob(graph, params, x), rtol=0, atol=ATOL)
    model = pcdsl.compile(graph, "numba", params=params, dtype="float64")
    np.testing.assert_array_equal(np.load(outputs[1]), model.map(x)[0])  # type: ignore[attr-defined]
