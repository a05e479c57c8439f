"""Packaging: the grammar ships as package data, and the front end needs neither torch nor numba."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import EXAMPLES, ROOT


def _run(code: str, cwd: Path, env_path: str | None = None) -> subprocess.CompletedProcess[str]:
    import os

    env = dict(os.environ)
    if env_path is not None:
        env["PYTHONPATH"] = env_path
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_installed_wheel_parses_an_example(tmp_path: Path) -> None:
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    wheel = next(wheels.glob("pcdsl-*.whl"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    assert (target / "pcdsl" / "grammar" / "pc.lark").is_file()
    for backend in ("torch/layers.py", "torch/runtime.py", "torch/layout.py", "torch/emit.py", "numba/kernels.py",
                    "numba/runtime.py", "numba/emit.py"):
        assert (target / "pcdsl" / "backends" / backend).is_file(), backend  # every backend ships
    proc = _run(f"""
        import pcdsl, pcdsl.backends
        from importlib import resources
        assert pcdsl.__file__.startswith({str(target)!r}), pcdsl.__file__
        grammar = resources.files("pcdsl.grammar").joinpath("pc.lark")
        assert str(grammar).startswith({str(target)!r}), grammar
        checked = pcdsl.check({str(EXAMPLES / 'tiny.pc')!r})
        print(len(checked.circuit("tiny")))
    """, cwd=tmp_path, env_path=str(target))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "8"


def test_front_end_imports_without_torch_or_numba(tmp_path: Path) -> None:
    proc = _run(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "numba"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import pcdsl, pcdsl.syntax.parser, pcdsl.ir.graph, pcdsl.ir.validate, pcdsl.drawing, pcdsl.cli
        import pcdsl.structures, pcdsl.backends
        pcdsl.check({str(EXAMPLES / 'groups.pc')!r})
        assert not any(m.split(".")[0] in ("torch", "numba") for m in sys.modules)
        print("ok")
    """, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
