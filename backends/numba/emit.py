"""Code emission for the numba backend: a LayeredPlan as a standalone Python package.

:func:`emit_module` writes the folder ``<name>/``:

- ``kernels.py``, ``scaled.py``, ``live.py`` and ``runtime.py``: this backend's kernels and query runtime,
  copied as they are (they import only numpy and numba);
- ``arrays.npz``: the circuit's flat arrays (``runtime.ARRAYS``), no pickle;
- ``__init__.py``: the circuit's variables and layout, and ``load()``.

The kernels run any circuit from its arrays, so the emitted package needs no
per-circuit code: ``import <name>; model = <name>.load(); model.log_prob(x)``.
Compiled kernels are cached in the package's ``__pycache__``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from pcdsl.io.atomic import write_atomic
from pcdsl.plan import LayeredPlan

from . import flatten

HERE = Path(__file__).resolve().parent

_INIT = '''"""Circuit {name!r}, compiled by pcdsl for the numba backend. Needs numpy and numba only.

    import {module}
    model = {module}.load()            # or load(dtype="float32", tile=128)
    model.log_prob(x)                  # x: (batch, {num_vars}) in the order of VARIABLES; -1 / NaN = missing

Also model.conditional(x, query), model.map(x), model.sample(n, evidence=None, seed=0) and
model.flows(x) (see runtime.py).
"""

from pathlib import Path

import numpy as np

from .runtime import Circuit

VARIABLES = {variables!r}
CARDINALITIES = {cardinalities!r}  # None: a real variable
ROOT = {root!r}
NUM_SLOTS = {num_slots!r}


def load(dtype: str = "float64", tile: int = 128) -> Circuit:
    """The circuit with its parameters, ready to query."""
    with np.load(Path(__file__).with_name("arrays.npz"), allow_pickle=False) as stored:
        arrays = {{key: stored[key] for key in stored.files}}
    return Circuit(arrays, VARIABLES, CARDINALITIES, ROOT, NUM_SLOTS, dtype=dtype, tile=tile)
'''


def emit_module(plan: LayeredPlan, out_dir: Path, module_name: str = "circuit") -> list[Path]:
    """Write the package ``out_dir/<module_name>/``; return the paths of its files."""
    if not module_name.isidentifier():
        raise ValueError(f"module name '{module_name}' is not a Python identifier")
    package = Path(out_dir) / module_name
    package.mkdir(parents=True, exist_ok=True)
    arrays = io.BytesIO()
    contents: dict[str, Any] = flatten(plan)  # numpy's stubs take **kwds as its allow_pickle flag
    np.savez(arrays, **contents)
    written = []
    for name, data in (("kernels.py", (HERE / "kernels.py").read_bytes()),
                       ("runtime.py", (HERE / "runtime.py").read_bytes()),
                       ("scaled.py", (HERE / "scaled.py").read_bytes()),
                       ("live.py", (HERE / "live.py").read_bytes()),
                       ("arrays.npz", arrays.getvalue()),
                       ("__init__.py", source(plan, module_name).encode())):
        write_atomic(package / name, data)
        written.append(package / name)
    return written


def source(plan: LayeredPlan, module_name: str) -> str:
    """The package's ``__init__.py``."""
    return _INIT.format(name=plan.name, module=module_name, num_vars=plan.num_vars, variables=plan.variables,
                        cardinalities=plan.cardinalities, root=plan.root, num_slots=plan.num_slots)
