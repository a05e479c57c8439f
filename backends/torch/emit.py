"""Code emission for the torch backend: a LayeredPlan as a standalone Python package.

:func:`emit_module` writes the folder ``<name>/``:

- ``runtime.py``, ``layers.py`` and ``sparse.py``: this backend's passes, queries and lowering
  rules, copied as they are, with ``layout.py`` and ``numerics.py``, copies of
  :mod:`pcdsl.layout` (the plan's records) and :mod:`pcdsl.numerics` (they import only torch and
  numpy);
- ``arrays.safetensors``: the plan's arrays, with its layout (names, sizes, slots) as JSON in the
  header (:func:`pcdsl.layout.plan_arrays`), no pickle;
- ``__init__.py``: the circuit's variables and ``load()``.

The package runs the very code of the in-process backend, so both give the same results at the
same speed: ``import <name>; model = <name>.load(); model.log_prob(x)``.
"""

from __future__ import annotations

from pathlib import Path

from pcdsl import layout, numerics
from pcdsl.io.atomic import write_atomic
from pcdsl.layout import plan_arrays
from pcdsl.plan import LayeredPlan

HERE = Path(__file__).resolve().parent
# The package's modules, each copied from its one source: the backend's runtime and the core
# modules it imports (in pcdsl it reaches those through the one-line ``layout.py`` and
# ``numerics.py`` beside it).
SOURCES = {"runtime.py": HERE / "runtime.py", "layers.py": HERE / "layers.py", "sparse.py": HERE / "sparse.py",
           "layout.py": Path(layout.__file__), "numerics.py": Path(numerics.__file__)}
ARRAYS = "arrays.safetensors"

_INIT = '''"""Circuit {name!r}, compiled by pcdsl for torch. Needs torch, numpy and safetensors only.

    import {module}
    model = {module}.load()            # or load(dtype="float64", device="cuda")
    model.log_prob(x)                  # x: (batch, {num_vars}) in the order of VARIABLES; -1 / NaN = missing

Also model.conditional(x, query), model.map(x), model.sample(n, evidence=None, seed=0) and
model.flows(x) (see runtime.py). numpy in, numpy out; tensors in, tensors out.
"""

from pathlib import Path

import torch

from .runtime import Circuit, read

VARIABLES = {variables!r}
CARDINALITIES = {cardinalities!r}  # None: a real variable


def load(dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu") -> Circuit:
    """The circuit with its parameters, ready to query."""
    return read(Path(__file__).with_name({arrays!r}), device=device, dtype=dtype)
'''


def emit_module(plan: LayeredPlan, out_dir: Path, module_name: str = "circuit") -> list[Path]:
    """Write the package ``out_dir/<module_name>/``; return the paths of its files."""
    from safetensors.numpy import save

    if not module_name.isidentifier():
        raise ValueError(f"module name '{module_name}' is not a Python identifier")
    package = Path(out_dir) / module_name
    package.mkdir(parents=True, exist_ok=True)
    arrays, header = plan_arrays(plan)
    files = {name: source.read_bytes() for name, source in SOURCES.items()}
    files[ARRAYS] = save(arrays, metadata={"plan": header})  # one key: safetensors writes a map unordered
    files["__init__.py"] = source(plan, module_name).encode()
    written = []
    for name in sorted(files):
        write_atomic(package / name, files[name])
        written.append(package / name)
    return written


def source(plan: LayeredPlan, module_name: str) -> str:
    """The package's ``__init__.py``."""
    return _INIT.format(name=plan.name, module=module_name, num_vars=plan.num_vars, variables=plan.variables,
                        cardinalities=plan.cardinalities, arrays=ARRAYS)
