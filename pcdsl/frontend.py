"""The front-end pipeline, one step per line: file -> checked circuits and recipes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pcdsl.diagnostics import Diagnostic, PcdslError, Sink, sorted_diagnostics
from pcdsl.ir.graph import CircuitGraph
from pcdsl.ir.validate import Properties, analyse, validate
from pcdsl.syntax import ast
from pcdsl.syntax.elaborate import elaborate
from pcdsl.syntax.names import did_you_mean
from pcdsl.syntax.program import Program, load_program, load_text
from pcdsl.syntax.recipes import RecipeSpec, check_recipe
from pcdsl.syntax.sources import DataSource, read_source
from pcdsl.syntax.values import Bad, Values


@dataclass
class Checked:
    """A checked file: its circuits (as graphs), their properties, its recipes, its warnings."""

    program: Program
    circuits: dict[str, CircuitGraph] = field(default_factory=dict)
    properties: dict[str, Properties] = field(default_factory=dict)
    recipes: dict[str, RecipeSpec] = field(default_factory=dict)
    data: dict[str, DataSource] = field(default_factory=dict)  # the file's `data NAME = ...` sources
    warnings: list[Diagnostic] = field(default_factory=list)
    # circuits that elaborate but fail validation, with their violations (check_file_keeping_invalid)
    invalid: dict[str, tuple[CircuitGraph, list[Diagnostic]]] = field(default_factory=dict)

    def circuit(self, name: str | None = None) -> CircuitGraph:
        """The named circuit, or the file's only (or first) circuit; InvalidArgument (a did-you-mean
        for a near miss) when there is no such circuit."""
        from pcdsl.arguments import InvalidArgument

        if name is None:
            own = self.program.circuit_names_in_main() or list(self.circuits)
            if not own:
                raise InvalidArgument("E0806", f"{self.program.main.name} declares no circuit")
            return self.circuits[own[0]]
        if not isinstance(name, str) or name not in self.circuits:
            hint = did_you_mean(name, self.circuits) if isinstance(name, str) else None
            raise InvalidArgument("E0806", f"no circuit {name!r} in {self.program.main.name} (circuits: "
                                           f"{', '.join(self.circuits) or 'none'})", hint)
        return self.circuits[name]


def check_file(path: str | Path) -> Checked:
    """Parse, resolve, elaborate and validate a file; raise PcdslError with every error."""
    return check_program(load_program(path))


def check_text(text: str, name: str = "<string>") -> Checked:
    return check_program(load_text(text, name))


def check_program(program: Program) -> Checked:
    result, sink = _check(program)
    sink.raise_if_errors()
    result.warnings = sorted_diagnostics(sink.items)
    return result


def check_file_keeping_invalid(path: str | Path) -> tuple[Checked, list[Diagnostic]]:
    """Like `check_file`, but circuits that fail validation are kept (in ``Checked.invalid``, with
    their violations) instead of raising, so they can still be drawn; returns every diagnostic.
    Errors that leave no circuit to look at (syntax, names) still raise PcdslError."""
    result, sink = _check(load_program(path))
    others = [d for d in sink.items if d.is_error and not any(d in found for _, found in result.invalid.values())]
    if others:
        raise PcdslError(sorted_diagnostics(sink.items))
    result.warnings = [d for d in sorted_diagnostics(sink.items) if not d.is_error]
    return result, sorted_diagnostics(sink.items)


def _check(program: Program) -> tuple[Checked, Sink]:
    sink = Sink()
    vals = Values(sink, program.consts)
    result = Checked(program)
    for const in program.consts.values():  # every constant resolves, used or not
        try:
            vals.deref(ast.Ref((const.name,), span=const.name.span))
        except Bad:
            pass
    sources = result.data = _data_sources(program, vals)
    resolve = _data_resolver(sources, vals)
    for name, circ in program.circuits.items():
        graph = elaborate(circ, vals, resolve)
        if graph is None:
            continue
        found = validate(graph)
        for d in found:
            sink.add(d)
        if not any(d.is_error for d in found):  # the analyses assume a valid circuit
            result.circuits[name] = graph
            result.properties[name] = analyse(graph, found)
        else:
            result.invalid[name] = (graph, found)
    for name, recipe in program.recipes.items():
        try:
            spec = result.recipes[name] = check_recipe(recipe, vals, set(program.circuits), set(sources))
        except Bad:
            continue
        from pcdsl.distill.recipe import check_distillation, is_distillation

        if is_distillation(spec):
            check_distillation(spec, vals, sources)
        else:
            _check_report_splits(spec, vals, sources)
    return result, sink


def _check_report_splits(spec: RecipeSpec, vals: Values, sources: dict[str, DataSource]) -> None:
    """A report on a split the recipe's data does not provide is an error now, not after training:
    `file(...)` gives a train split only; `debd(...)` the splits whose files exist."""
    bound = spec.entries["data"][0]
    if "ref" in bound.values:
        source = sources.get(str(bound.values["ref"]))
    else:
        call = bound.call
        source = DataSource(call.func.text, dict(bound.values), os.path.dirname(call.span.file), call.span)
    if source is None or source.kind not in ("file", "debd"):
        return
    for report in spec.entries.get("report", []):
        split = report.values.get("split")
        if split in (None, "train"):
            continue
        if source.kind == "file":
            vals.fail("E0605", f"the report needs the {split} split, but `file(...)` data has a train split only",
                      report.call.span, help="report on train, or use a source with splits, e.g. debd(...)")
            continue
        chosen = DataSource(source.kind, {**source.args, "split": split}, source.base_dir, source.span)
        if not any(path.exists() for path in chosen.candidates()):
            looked = ", ".join(f"'{p}'" for p in chosen.candidates())
            vals.fail("E0605", f"the report needs the {split} split, but its file does not exist", report.call.span,
                      f"looked for {looked}", help="add the file, or report on another split")


def _data_sources(program: Program, vals: Values) -> dict[str, DataSource]:
    out = {}
    for name, decl in program.data.items():
        try:
            out[name] = read_source(vals, decl.source)
        except Bad:
            pass
    return out


def _data_resolver(sources: dict[str, DataSource], vals: Values):  # type: ignore[no-untyped-def]
    def resolve(ref: ast.Ref, local: Values) -> DataSource:
        name = ref.parts[0].text
        if name in sources and len(ref.parts) == 1 and ref.index is None:
            return sources[name]
        raise local.fail("E0101", f"undefined data source '{ref.dotted}'", ref.span,
                         help=did_you_mean(name, sources) or "declare it: `data NAME = file(\"path\")`")
    return resolve


__all__ = ["Checked", "PcdslError", "check_file", "check_program", "check_text"]
