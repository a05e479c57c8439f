"""Code emission for the torch backend: a LayeredPlan as a standalone Python module.

:func:`emit_module` writes ``<name>.py``, a ``Circuit(torch.nn.Module)`` whose
``log_prob`` calls one generated method per plan layer (``layer0``, ``layer1``, ...
in plan order), and ``<name>.safetensors``, every index array and parameter block
keyed ``layer<i>_<field>``. The module needs only torch and safetensors.

Each layer method is the sum mode of ``layers.py`` op for op (max-shifted
log-space bmm for sums, with units whose shifted sum underflowed recomputed by
their own largest weighted term; gather-add for products, categorical gather
with missing -> 0, gaussian log-density in float64), so both agree to rounding
in float64.

The module is built as an ``ast`` tree. Fixed statements come from constant
templates whose upper-case placeholder names are replaced by nodes, never by
string formatting, so names and constants cannot be mis-quoted.
"""

from __future__ import annotations

import ast
import copy
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from pcdsl.io.atomic import write_atomic
from pcdsl.plan import ONE, ZERO, InputLayer, Layer, LayeredPlan, ProductLayer, dump_plan

from . import emit_queries as T

# Layer-independent code, copied verbatim into the emitted class.
_RUNTIME = '''
class Circuit(torch.nn.Module):
    """A compiled probabilistic circuit. Data: (batch, variables) in the column order of
    ``variables``; -1 marks a missing discrete value, NaN a missing real one (marginalised)."""

    variables = VARIABLES
    cardinalities = CARDINALITIES

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for name in sorted(tensors):
            self.register_buffer(name, tensors[name])
        self.register_buffer("discrete", torch.tensor([c is not None for c in CARDINALITIES]))
        self.register_buffer("card", torch.tensor([c or 0 for c in CARDINALITIES]))

    @classmethod
    def from_file(cls, path: str | Path | None = None, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu") -> Circuit:
        """Load the parameters (by default the .safetensors file next to this module)."""
        file = Path(path) if path is not None else Path(__file__).with_name(PARAMETERS)
        tensors = load_file(str(file), device=str(device))
        # Gaussian means and stds stay float64: x - mean must not cancel
        tensors = {k: v.to(dtype) if v.is_floating_point() and not k.endswith(PRECISE) else v
                   for k, v in tensors.items()}
        return cls({**tensors, "model_dtype": torch.zeros((), dtype=dtype, device=device)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per row; missing entries are marginalised (numpy in, numpy out)."""
        return self._like(self._values(x, "sum")[0][:, ROOT], x)

    def _evidence(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Category indices (missing -> 0), real values and the missing mask of a batch."""
        t = torch.as_tensor(x, device=self.card.device)
        t = t[None, :] if t.ndim == 1 else t
        if t.ndim != 2 or t.shape[1] != len(VARIABLES):
            raise ValueError(f"data must have shape (batch, {len(VARIABLES)}), got {tuple(t.shape)}")
        real = t.to(torch.float64)
        missing = torch.isnan(real) | (self.discrete[None, :] & (real == -1))
        category = torch.where(missing, torch.zeros_like(real), real).to(torch.long)
        bad = self.discrete[None, :] & ~missing & ((real < 0) | (real >= self.card[None, :]) | (real != real.floor()))
        if bool(bad.any()):
            v = int(bad.nonzero()[0, 1])
            raise ValueError(f"variable '{VARIABLES[v]}' has a value that is not one of 0..{CARDINALITIES[v] - 1} "
                             "(missing values are -1)")
        return category, real, missing

    def _dtype(self) -> torch.dtype:
        """The dtype of the value buffer: the model's, whatever the (float64) Gaussian parameters."""
        floats = [b for n, b in self.named_buffers() if b.is_floating_point() and not n.endswith(PRECISE)]
        return floats[0].dtype if floats else torch.float64
'''

_HEADER = """
from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
PRECISE = ("_mean", "_std")
"""


def emit_module(plan: LayeredPlan, out_dir: Path, module_name: str = "circuit") -> list[Path]:
    """Write ``<module_name>.py`` and ``<module_name>.safetensors`` into ``out_dir``; return both paths."""
    from safetensors.numpy import save

    if not module_name.isidentifier():
        raise ValueError(f"module name '{module_name}' is not a Python identifier")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    code, params = out_dir / f"{module_name}.py", out_dir / f"{module_name}.safetensors"
    write_atomic(params, save(plan_tensors(plan), metadata={"circuit": plan.name}))
    write_atomic(code, emit_source(plan, params.name).encode())
    return [code, params]


def plan_tensors(plan: LayeredPlan) -> dict[str, np.ndarray]:
    """Every index array and parameter block of the plan, keyed ``layer<i>_<field>``."""
    tensors: dict[str, np.ndarray] = {}
    for i, layer in enumerate(plan.layers):
        if isinstance(layer, InputLayer):
            fields = {"var": layer.var, "rows": layer.rows, **layer.params}
        elif isinstance(layer, ProductLayer):
            fields = {"index": layer.index}
        else:
            fields = {"index": layer.index, "weights": layer.weights}
        for field, array in fields.items():
            tensors[f"layer{i}_{field}"] = np.ascontiguousarray(array)
    return tensors


def emit_source(plan: LayeredPlan, parameters: str) -> str:
    """The module's source text; ``parameters`` is the file name of its .safetensors."""
    constants: dict[str, Any] = {"VARIABLES": plan.variables, "CARDINALITIES": plan.cardinalities,
                                 "NUM_SLOTS": plan.num_slots, "ROOT": plan.root, "PARAMETERS": parameters}
    circuit = ast.parse(_RUNTIME).body[0]
    queries = ast.parse(T.RUNTIME).body[0]
    assert isinstance(circuit, ast.ClassDef) and isinstance(queries, ast.ClassDef)
    descriptions = dump_plan(plan).splitlines()
    methods = []
    for i, layer in enumerate(plan.layers):
        methods += _layer_methods(i, layer, descriptions[1 + i].strip())
    circuit.body += [*queries.body, *_passes(plan), *methods]
    doc = (f"Circuit '{plan.name}', compiled by pcdsl for torch; needs only torch and safetensors.\n\n"
           + "\n".join(descriptions) + "\n")
    body: list[ast.stmt] = [ast.Expr(ast.Constant(doc)), *ast.parse(_HEADER).body]
    for name, value in constants.items():
        body.append(ast.Assign(targets=[ast.Name(name, ast.Store())], value=ast.Constant(value)))
    body.append(circuit)
    module = ast.fix_missing_locations(ast.Module(body=body, type_ignores=[]))
    compile(module, "<emitted>", "exec")  # a malformed tree fails here, not in the user's import
    return ast.unparse(module) + "\n"


_INPUT_ARGS = [("category", "torch.Tensor"), ("real", "torch.Tensor"), ("missing", "torch.Tensor"), ("mode", "str")]
_DOWN_ARGS = [("active", "torch.Tensor"), ("buf", "torch.Tensor"), ("out", "torch.Tensor"),
              ("missing", "torch.Tensor"), ("mode", "str"), ("gen", "torch.Generator | None")]
_FLOW_ARGS = [("buf", "torch.Tensor"), ("flow", "torch.Tensor"), ("category", "torch.Tensor"),
              ("real", "torch.Tensor"), ("missing", "torch.Tensor")]


def _passes(plan: LayeredPlan) -> list[ast.FunctionDef]:
    """`_values` (every layer forward, sum or max mode), `_downs` and `_flows` (every layer top-down)."""
    body = _fill(_VALUES, NUM_SLOTS=ast.Name("NUM_SLOTS", ast.Load()), ONE=ONE, ZERO=ZERO)
    downs: list[ast.stmt] = []
    flows: list[ast.stmt] = [ast.parse("result = {}").body[0]]
    for i, layer in enumerate(plan.layers):
        if isinstance(layer, InputLayer):
            body += _fill("buf[:, START:STOP] = LAYER(category, real, missing, mode)", START=layer.start,
                          STOP=layer.stop, LAYER=_self(f"layer{i}"))
        else:
            body += _fill("LAYER(buf, mode)", LAYER=_self(f"layer{i}"))
    for i in reversed(range(len(plan.layers))):
        downs += _fill("DOWN(active, buf, out, missing, mode, gen)", DOWN=_self(f"down{i}"))
        flows += _fill("result.update(FLOWS(buf, flow, category, real, missing))", FLOWS=_self(f"flows{i}"))
    body += ast.parse("return buf, category, real, missing").body
    flows += ast.parse("return result").body
    return [_function("_values", [("x", "torch.Tensor"), ("mode", "str")], "tuple", "Every layer forward.", body),
            _function("_downs", _DOWN_ARGS, "None", "Every layer top-down: MAP or sampling.", downs),
            _function("_flows", _FLOW_ARGS, "dict", "Every layer top-down: flows.", flows)]


_VALUES = """
category, real, missing = self._evidence(x)
buf = torch.empty(real.shape[0], NUM_SLOTS, dtype=self._dtype(), device=real.device)
buf[:, ONE] = 0.0
buf[:, ZERO] = -math.inf
"""


def _layer_methods(i: int, layer: Layer, description: str) -> list[ast.FunctionDef]:
    """Three methods per layer (forward, down, flows): a few tensor ops over all its units, no
    loop over nodes."""
    where: dict[str, ast.expr | int] = {"START": layer.start, "STOP": layer.stop}
    name = f"layer{i}"
    if isinstance(layer, InputLayer):
        fields = {key.upper(): _self(f"{name}_{key}") for key in ["var", "rows", *layer.params]}
        keys = {key: ast.Constant(f"{name}_{key.lower()}") for key in ("COUNTS", "N", "DX", "DXX")}
        gaussian = layer.family == "gaussian"
        return [
            _function(name, _INPUT_ARGS, "torch.Tensor", description,
                      _fill(T.GAUSSIAN if gaussian else T.CATEGORICAL, **fields)),
            _function(f"down{i}", _DOWN_ARGS, "None", description,
                      _fill(T.DOWN_GAUSSIAN if gaussian else T.DOWN_CATEGORICAL, **where, **fields)),
            _function(f"flows{i}", _FLOW_ARGS, "dict", description,
                      _fill(T.FLOWS_GAUSSIAN if gaussian else T.FLOWS_CATEGORICAL, **where, **fields, **keys))]
    index = _self(f"{name}_index")
    if isinstance(layer, ProductLayer):
        terms = [_expr("buf[:, INDEX[:, K]]", INDEX=index, K=k) for k in range(layer.index.shape[1])]
        total = terms[0]
        for term in terms[1:]:  # left to right, as the in-memory backend adds
            total = ast.BinOp(total, ast.Add(), term)
        forward = _fill("buf[:, START:STOP] = TOTAL", **where, TOTAL=total)
        down, flows = _fill(T.DOWN_PRODUCT, **where, INDEX=index), _fill(T.FLOWS_PRODUCT, **where, INDEX=index)
    else:
        folds, units, _ = layer.shape
        shape: dict[str, ast.expr | int] = {"INDEX": index, "WEIGHTS": _self(f"{name}_weights"),
                                            "FOLDS": folds, "UNITS": units}
        forward = _fill(T.SUM, **where, **shape)
        down = _fill(T.DOWN_SUM, **where, **shape)
        flows = _fill(T.FLOWS_SUM, **where, **shape, WEIGHT_FLOWS=ast.Constant(f"{name}_weights"))
    return [_function(name, [("buf", "torch.Tensor"), ("mode", "str")], "None", description, forward),
            _function(f"down{i}", _DOWN_ARGS, "None", description, down),
            _function(f"flows{i}", _FLOW_ARGS, "dict", description, flows)]


class _Fill(ast.NodeTransformer):
    """Replace placeholder names by (copies of) expression nodes."""

    def __init__(self, values: dict[str, ast.expr]) -> None:
        self.values = values

    def visit_Name(self, node: ast.Name) -> ast.expr:
        return copy.deepcopy(self.values[node.id]) if node.id in self.values else node


def _fill(template: str, **values: ast.expr | int) -> list[ast.stmt]:
    nodes = {k: v if isinstance(v, ast.expr) else ast.Constant(v) for k, v in values.items()}
    tree = _Fill(nodes).visit(ast.parse(textwrap.dedent(template)))
    return list(tree.body)


def _expr(template: str, **values: ast.expr | int) -> ast.expr:
    (statement,) = _fill(template, **values)
    assert isinstance(statement, ast.Expr)
    return statement.value


def _self(attr: str) -> ast.Attribute:
    return ast.Attribute(ast.Name("self", ast.Load()), attr, ast.Load())


def _function(name: str, args: list[tuple[str, str]], returns: str, doc: str,
              body: list[ast.stmt]) -> ast.FunctionDef:
    arguments = ast.arguments(posonlyargs=[], args=[ast.arg("self")] + [
        ast.arg(a, ast.parse(t, mode="eval").body) for a, t in args], kwonlyargs=[], kw_defaults=[], defaults=[])
    extra: dict[str, Any] = {"type_params": []} if "type_params" in ast.FunctionDef._fields else {}  # Python >= 3.12
    return ast.FunctionDef(name=name, args=arguments, body=[ast.Expr(ast.Constant(doc)), *body],
                           decorator_list=[], returns=ast.parse(returns, mode="eval").body, **extra)
