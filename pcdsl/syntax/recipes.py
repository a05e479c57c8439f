"""Checking recipe blocks: which entries exist, their form, and their calls.

A recipe names its data, an optional patch grid, colour transform, teacher
and latent assignment, the model, the training stages and the report. This
module checks a recipe into a :class:`RecipeSpec` of bound calls; running it
is the job of the learning and distillation packages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pcdsl.diagnostics import Note, Span
from pcdsl.syntax import ast
from pcdsl.syntax.names import did_you_mean, one_of
from pcdsl.syntax.signatures import (
    Bound,
    Param,
    Signature,
    bind,
    lookup,
    read_bool,
    read_float,
    read_int,
    read_prob,
    read_str,
    read_symbol,
)
from pcdsl.syntax.sources import SOURCES, SPLITS
from pcdsl.syntax.values import Bad, Values


def read_rate(minimum: float = 0.0) -> object:
    """A number, or a schedule `0.1 -> 0.01` annealed linearly over the stage."""
    def read(vals: Values, v: ast.Value, what: str) -> tuple[float, ...]:
        d = vals.deref(v)
        points = d.points if isinstance(d, ast.Schedule) else (v,)
        return tuple(vals.as_float(p, what, minimum) for p in points)
    return read


def _sig(name: str, *params: Param, doc: str = "") -> Signature:
    return Signature(name, params, doc)


def _kw(name: str, read: object, default: object = None) -> Param:
    return Param(name, read, default, positional=False)  # type: ignore[arg-type]


_SPLIT = Param("split", read_symbol(*SPLITS), "test")
# EM regularisers (pcdsl.learn.regularise): data softening beta (the observed value keeps 1 - beta;
# beyond 0.5 a binary value would count as its opposite) and the entropy weight tau
_REGULARISERS = (_kw("soften", read_float(0.0, 0.5), 0.0), _kw("entropy", read_float(0.0), 0.0),
                 # Gaussian leaves (pcdsl.learn.gaussian): the std floor (default: 1e-3 x the variable's data
                 # std) and the prior's pseudo-observations
                 _kw("min_std", read_float(0.0, strict=True), None), _kw("gaussian_pseudocount", read_float(0.0), 0.0))

TABLES: dict[str, dict[str, Signature]] = {
    "data": SOURCES,
    "patches": {"grid": _sig("grid", Param("image", read_symbol("x")), Param("height", read_int(1)),
                             Param("width", read_int(1)), doc="cut the data's images `x` into height x width patches")},
    "transform": {t: _sig(t, doc=f"the {t} colour transform") for t in ("identity", "ycocg_r", "ycbcr")},
    "crop": {
        "tiles": _sig("tiles", Param("height", read_int(1)), Param("width", read_int(1)),
                      doc="cut every image into non-overlapping height x width crops, each a sample"),
        "centre": _sig("centre", Param("height", read_int(1)), Param("width", read_int(1)),
                       doc="keep the centre height x width crop of every image"),
    },
    "teacher": {
        "vqvae": _sig("vqvae", _kw("patch_decoder", read_symbol("independent", "neighbourhood"), "independent"),
                      _kw("codes", read_int(2), 256), _kw("dim", read_int(1), 64), _kw("epochs", read_int(1), 3),
                      _kw("lr", read_float(0.0, strict=True), 1e-3), _kw("seed", read_int(0), 0)),
        "mae": _sig("mae", _kw("mask", read_prob(), 0.75), _kw("dim", read_int(1), 64),
                    _kw("epochs", read_int(1), 3), _kw("seed", read_int(0), 0)),
        "pixels": _sig("pixels", doc="no teacher: cluster raw patch pixels"),
        "module": _sig("module", Param("factory", read_str()), _kw("weights", read_str(), None),
                       doc="a user's torch encoder `pkg.mod:factory` (docs/distillation.md)"),
    },
    "latents": {
        "kmeans": _sig("kmeans", Param("features", None), _kw("clusters", read_int(2), 64),
                       _kw("iterations", read_int(1), 50), _kw("seed", read_int(0), 0)),
        "grow": _sig("grow", _kw("to", read_int(2)), _kw("rounds", read_int(1), 1),
                     _kw("noise", read_float(0.0), 0.1), _kw("workers", read_int(0), 0),
                     _kw("sample", read_int(0), 100_000),
                     doc="progressive growing of clusters (workers: parallel processes, 0 = one per core; sample: "
                         "patches per global cluster the loop runs on, 0 = all)"),
    },
    "model": {
        "hclt": _sig("hclt", _kw("over", None), _kw("hidden", read_int(1), 16), _kw("trees", read_int(1), 1),
                     _kw("pseudocount", read_float(0.0), 0.1), _kw("subsample", read_int(0), 5000)),
        "fully_factorized": _sig("fully_factorized", _kw("over", None), _kw("units", read_int(1), 1)),
    },
    "train": {
        "counting": _sig("counting", _kw("pseudocount", read_float(0.0), 0.1)),
        "em": _sig("em", _kw("epochs", read_int(1), 10), _kw("step", read_rate(), (0.1,)),
                   _kw("batch", read_int(1), 512), _kw("pseudocount", read_float(0.0), 0.1),
                   _kw("patience", read_int(1), None), *_REGULARISERS, _kw("rows", read_int(1), None)),
        **{name: _sig(name, _kw("epochs", read_int(1), epochs), _kw("step", read_rate(), step),
                      _kw("batch", read_int(1), batch), _kw("pseudocount", read_float(0.0), 0.1),
                      _kw("patience", read_int(1), None), _kw("rows", read_int(1), None), doc=doc)
           for name, epochs, step, batch, doc in (
               ("patch_em", 3, (0.3, 0.05), 4096, "cluster-conditioned EM of the patch circuits (distillation)"),
               ("latent_em", 10, (0.5, 0.05), 512, "EM of the top level on the hard assignments (distillation)"),
               ("top_em", 2, (0.3, 0.05), 512, "EM of the top level on soft evidence (distillation)"))},
        "full_em": _sig("full_em", _kw("epochs", read_int(1), 10), _kw("pseudocount", read_float(0.0), 0.1),
                        _kw("patience", read_int(1), None), *_REGULARISERS),
        "sgd": _sig("sgd", _kw("epochs", read_int(1), 10), _kw("lr", read_rate(), (1e-2,)),
                    _kw("batch", read_int(1), 512), _kw("optimizer", read_symbol("adam", "sgd"), "adam")),
    },
    "report": {
        "bpd": _sig("bpd", _SPLIT), "loglik": _sig("loglik", _SPLIT),
        "samples": _sig("samples", Param("count", read_int(1), 64), _kw("seed", read_int(0), 0)),
        "inpaint": _sig("inpaint", _SPLIT, _kw("mask", read_symbol("left_half", "top_half", "centre"),
                                                 "left_half"), _kw("count", read_int(1), 16)),
    },
}
PATCH_PC = {
    "hclt": _sig("hclt", _kw("hidden", read_int(1), 8), _kw("shared", read_bool(), True)),
    "fully_factorized": _sig("fully_factorized", _kw("units", read_int(1), 1), _kw("shared", read_bool(), True)),
}

_FORMS: dict[str, type] = {"train": ast.BlockEntry, "report": ast.ListEntry}
_EXAMPLES: dict[type, str] = {ast.BlockEntry: "`{key} {{ ... }}`", ast.ListEntry: "`{key} a(...), b(...)`",
             ast.AssignEntry: "`{key} = ...`"}
REQUIRED = ("data", "model", "train")


@dataclass
class RecipeSpec:
    name: str
    entries: dict[str, list[Bound]] = field(default_factory=dict)  # key -> calls, in order
    model_circuit: str | None = None  # when `model = some_circuit`
    options: dict[str, Bound] = field(default_factory=dict)  # `model = ... with patch_pc = ...`
    span: Span | None = None


def check_recipe(recipe: ast.Recipe, vals: Values, circuits: set[str], data: set[str]) -> RecipeSpec:
    spec = RecipeSpec(recipe.name.text, span=recipe.name.span)
    seen: dict[str, ast.Name] = {}
    failed = False
    for entry in recipe.entries:
        key = entry.key
        if key.text in seen:
            vals.fail("E0602", f"recipe entry '{key.text}' is given twice", key.span,
                      Note("first given here", seen[key.text].span))
            continue
        seen[key.text] = key
        try:
            _entry(spec, entry, vals, circuits, data, set(seen))
        except Bad:
            failed = True
    for required in REQUIRED:
        if required not in seen:
            form = _FORMS.get(required, ast.AssignEntry)
            vals.fail("E0603", f"recipe '{recipe.name.text}' has no '{required}' entry", recipe.name.span,
                      help=f"add {_EXAMPLES[form].format(key=required)}")
            failed = True
    if failed:
        raise Bad()
    return spec


def _entry(spec: RecipeSpec, entry: ast.Entry, vals: Values, circuits: set[str], data: set[str],
           earlier: set[str]) -> None:
    key = entry.key.text
    if key not in TABLES:
        raise vals.fail("E0601", f"unknown recipe entry '{key}'", entry.key.span,
                        f"recipe entries are {one_of(TABLES)}", help=did_you_mean(key, TABLES))
    form = _FORMS.get(key, ast.AssignEntry)
    if not isinstance(entry, form):
        raise vals.fail("E0604", f"'{key}' is written {_EXAMPLES[form].format(key=key)}", entry.span)
    if isinstance(entry, ast.AssignEntry):
        if len(entry.stages) > 1 and key != "latents":
            raise vals.fail("E0604", f"only 'latents' takes a pipeline `a | b`; '{key}' takes one value",
                            entry.stages[1].span)
        spec.entries[key] = [_assigned(spec, key, v, vals, circuits, data, earlier) for v in entry.stages]
        spec.options.update(_options(entry, vals, key))
    else:
        spec.entries[key] = [bind(vals, c, lookup(vals, c, TABLES[key], f"'{key}' step")) for c in entry.calls]


def _assigned(spec: RecipeSpec, key: str, v: ast.Value, vals: Values, circuits: set[str], data: set[str],
              earlier: set[str]) -> Bound:
    d = vals.deref(v)
    if isinstance(d, ast.Ref) and len(d.parts) == 1 and d.index is None:
        name = d.parts[0].text
        if key == "model" and name in circuits:
            spec.model_circuit = name
            return Bound(ast.Call(d.parts[0], (), (), span=d.span), {}, {})
        if key == "data" and name in data:
            return Bound(ast.Call(d.parts[0], (), (), span=d.span), {"ref": name}, {})
        known = circuits if key == "model" else data
        raise vals.fail("E0101", f"undefined {'circuit' if key == 'model' else 'data source'} '{name}'",
                        d.span, help=did_you_mean(name, known))
    if not isinstance(d, ast.Call):
        raise vals.fail("E0308", f"'{key}' must be a call such as {one_of(TABLES[key])}(...)", v.span)
    bound = bind(vals, d, lookup(vals, d, TABLES[key], f"'{key}' kind"))
    for name, source in bound.sources.items():  # references to earlier entries (teacher.features)
        ref = vals.deref(source)
        if isinstance(ref, ast.Ref) and bound.values[name] is source and ref.parts[0].text not in earlier:
            raise vals.fail("E0101", f"'{ref.dotted}' refers to no earlier recipe entry", ref.span,
                            help=did_you_mean(ref.parts[0].text, earlier))
    return bound


def _options(entry: ast.AssignEntry, vals: Values, key: str) -> dict[str, Bound]:
    out = {}
    for kw in entry.options:
        if key != "model" or kw.name.text != "patch_pc":
            raise vals.fail("E0402", f"'{key}' takes no option '{kw.name.text}'", kw.name.span,
                            help="only `model = ... with patch_pc = ...` takes an option")
        call = vals.deref(kw.value)
        if not isinstance(call, ast.Call):
            raise vals.fail("E0308", f"'patch_pc' must be a call such as {one_of(PATCH_PC)}(...)", kw.value.span)
        out["patch_pc"] = bind(vals, call, lookup(vals, call, PATCH_PC, "patch circuit"))
    return out
