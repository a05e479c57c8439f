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

    def _evidence(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Category indices (missing -> 0), real values and the missing mask of a batch."""
        t = torch.as_tensor(x, device=self.card.device)
        t = t[None, :] if t.ndim == 1 else t
        if t.ndim != 2 or t.shape[1] != len(VARIABLES):
            raise ValueError(f"data must have shape (batch, {len(VARIABLES)}), got {tuple(t.shape)}")
        real = t.to(torch.float64)
        missing = torch.isnan(real) | (self.discrete[None, :] & (real == -1))
        category = torch.where(missing, torch.zeros_like(real), real).to(torch.long)
        bad = self.discrete[None, :] & ~missing & ((category < 0) | (category >= self.card[None, :]))
        if bool(bad.any()):
            v = int(bad.nonzero()[0, 1])
            raise ValueError(f"variable '{VARIABLES[v]}' has a value outside 0..{CARDINALITIES[v] - 1} "
                             "(missing values are -1)")
        return category, real, missing

    def _dtype(self) -> torch.dtype:
        """The dtype of the value buffer: the model's, whatever the (float64) Gaussian parameters."""
        floats = [b for n, b in self.named_buffers() if b.is_floating_point() and not n.endswith(PRECISE)]
        return floats[0].dtype if floats else torch.float64
'''

_LOG_PROB = """
category, real, missing = self._evidence(x)
buf = torch.empty(real.shape[0], NUM_SLOTS, dtype=self._dtype(), device=real.device)
buf[:, ONE] = 0.0
buf[:, ZERO] = -math.inf
"""

_CATEGORICAL = """
var = VAR
table = LOG_PROBS
observed = table.reshape(-1)[ROWS * table.shape[1] + category[:, var]]
buf[:, START:STOP] = torch.where(missing[:, var], torch.zeros_like(observed), observed)
"""

_GAUSSIAN = """
var = VAR
std = STD[ROWS].to(torch.float64)
z = (real[:, var] - MEAN[ROWS].to(torch.float64)) / std
observed = -0.5 * z * z - torch.log(std) - LOG_SQRT_2PI
buf[:, START:STOP] = torch.where(missing[:, var], torch.zeros_like(observed), observed).to(buf.dtype)
"""

_SUM = """
inputs = buf[:, INDEX]
m = inputs.amax(dim=2, keepdim=True)
m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
s = torch.bmm(torch.exp(inputs - m).transpose(0, 1), WEIGHTS.transpose(1, 2)).transpose(0, 1)
value = torch.log(s) + m
lost = s < (2.0 ** -100 if s.dtype == torch.float32 else 2.0 ** -960)
if bool(lost.any()):
    b, f, u = lost.nonzero(as_tuple=True)
    value[b, f, u] = torch.logsumexp(torch.log(WEIGHTS[f, u]) + inputs[b, f], dim=1)
buf[:, START:STOP] = value.reshape(buf.shape[0], -1)
"""

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
    assert isinstance(circuit, ast.ClassDef)
    descriptions = dump_plan(plan).splitlines()
    methods = [_layer_method(i, layer, descriptions[1 + i].strip()) for i, layer in enumerate(plan.layers)]
    circuit.body += [_log_prob(plan), *methods]
    doc = (f"Circuit '{plan.name}', compiled by pcdsl for torch; needs only torch and safetensors.\n\n"
           + "\n".join(descriptions) + "\n")
    body: list[ast.stmt] = [ast.Expr(ast.Constant(doc)), *ast.parse(_HEADER).body]
    for name, value in constants.items():
        body.append(ast.Assign(targets=[ast.Name(name, ast.Store())], value=ast.Constant(value)))
    body.append(circuit)
    module = ast.fix_missing_locations(ast.Module(body=body, type_ignores=[]))
    compile(module, "<emitted>", "exec")  # a malformed tree fails here, not in the user's import
    return ast.unparse(module) + "\n"


def _log_prob(plan: LayeredPlan) -> ast.FunctionDef:
    body = _fill(_LOG_PROB, NUM_SLOTS=ast.Name("NUM_SLOTS", ast.Load()), ONE=ONE, ZERO=ZERO)
    for i, layer in enumerate(plan.layers):
        args = ["buf", "category", "real", "missing"] if isinstance(layer, InputLayer) else ["buf"]
        call = ast.Call(_self(f"layer{i}"), [ast.Name(a, ast.Load()) for a in args], [])
        body.append(ast.Expr(call))
    body.append(ast.Return(_expr("buf[:, ROOT]", ROOT=ast.Name("ROOT", ast.Load()))))
    doc = "log p(x) per row; missing entries are marginalised."
    return _function("log_prob", [("x", "torch.Tensor")], "torch.Tensor", doc, body)


def _layer_method(i: int, layer: Layer, description: str) -> ast.FunctionDef:
    """One method per layer: a few tensor ops over all its units, no loop over nodes."""
    where = {"START": layer.start, "STOP": layer.stop}
    if isinstance(layer, InputLayer):
        fields = {name.upper(): _self(f"layer{i}_{name}") for name in ["var", "rows", *layer.params]}
        template = _CATEGORICAL if layer.family == "categorical" else _GAUSSIAN
        body = _fill(template, **where, **fields)
        args = [("buf", "torch.Tensor"), ("category", "torch.Tensor"), ("real", "torch.Tensor"),
                ("missing", "torch.Tensor")]
    elif isinstance(layer, ProductLayer):
        terms = [_expr("buf[:, INDEX[:, K]]", INDEX=_self(f"layer{i}_index"), K=k) for k in range(layer.index.shape[1])]
        total = terms[0]
        for term in terms[1:]:  # left to right, as the in-memory backend adds
            total = ast.BinOp(total, ast.Add(), term)
        body = _fill("buf[:, START:STOP] = TOTAL", **where, TOTAL=total)
        args = [("buf", "torch.Tensor")]
    else:
        body = _fill(_SUM, **where, INDEX=_self(f"layer{i}_index"), WEIGHTS=_self(f"layer{i}_weights"))
        args = [("buf", "torch.Tensor")]
    return _function(f"layer{i}", args, "None", description, body)


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
