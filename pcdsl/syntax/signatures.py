"""Call signatures: binding ``f(a, b, key = value)`` to named, typed parameters.

Leaf families, templates, data sources and recipe stages all declare their
parameters here, so every call gets the same checks and the same messages:
unknown function or argument (with a suggestion), missing or repeated
argument, too many positional arguments, and typed values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pcdsl.syntax import ast
from pcdsl.syntax.names import did_you_mean, one_of
from pcdsl.syntax.values import Bad, Values

Reader = Callable[[Values, ast.Value, str], Any]
REQUIRED = object()


@dataclass(frozen=True)
class Param:
    name: str
    read: Reader | None  # None: keep the raw AST value (read later, in context)
    default: Any = REQUIRED
    positional: bool = True
    doc: str = ""


@dataclass(frozen=True)
class Signature:
    name: str
    params: tuple[Param, ...]
    doc: str = ""

    def usage(self) -> str:
        parts = [p.name if p.default is REQUIRED else f"{p.name} = ..." for p in self.params]
        return f"{self.name}({', '.join(parts)})"

    def text(self) -> str:
        """The full signature as docs/language.md writes it, e.g. ``grid(image, height, width)``
        or ``em(*, epochs = 10, step = 0.1, ...)``: arguments before ``*`` may be given by
        position, the others only by name; a bare name is required; ``unset`` means the
        argument has no value unless given."""
        positional = [param_text(p) for p in self.params if p.positional]
        named = [param_text(p) for p in self.params if not p.positional]
        return f"{self.name}({', '.join(positional + (['*'] if named else []) + named)})"


def param_text(p: Param) -> str:
    """One parameter with its default, in the language's own notation."""
    if p.default is REQUIRED:
        return p.name
    return f"{p.name} = {_default_text(p.default, _is_symbol(p))}"


def _is_symbol(p: Param) -> bool:
    """Whether the parameter takes a bare word (``split = train``) rather than a string."""
    return getattr(p.read, "__qualname__", "").startswith("read_symbol.")


def _default_text(value: Any, symbol: bool) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if symbol else f'"{value}"'
    if isinstance(value, tuple):
        return " -> ".join(_default_text(v, symbol) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Bound:
    """A call bound to its signature: values by parameter name, and where each came from."""

    call: ast.Call
    values: Mapping[str, Any]
    sources: Mapping[str, ast.Value]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def span_of(self, key: str) -> Any:
        source = self.sources.get(key)
        return source.span if source is not None else self.call.span


def lookup(vals: Values, call: ast.Call, table: Mapping[str, Signature], kind: str) -> Signature:
    sig = table.get(call.func.text)
    if sig is None:
        raise vals.fail("E0401", f"unknown {kind} '{call.func.text}'", call.func.span,
                        f"known {_plural(kind)}: {one_of(table)}", help=did_you_mean(call.func.text, table))
    return sig


def _plural(kind: str) -> str:
    return kind[:-1] + "ies" if kind.endswith("y") else kind + "s"


def bind(vals: Values, call: ast.Call, sig: Signature) -> Bound:
    """Match arguments to parameters and read each with its type; report all problems."""
    given: dict[str, ast.Value] = {}
    positional = [p for p in sig.params if p.positional]
    failed = False
    if len(call.args) > len(positional):
        extra = call.args[len(positional)]
        vals.fail("E0404", f"'{sig.name}' takes at most {len(positional)} positional argument"
                  f"{'s' if len(positional) != 1 else ''}, found {len(call.args)}", extra.span,
                  f"usage: {sig.usage()}")
        failed = True
    for p, v in zip(positional, call.args, strict=False):
        given[p.name] = v
    names = {p.name for p in sig.params}
    for kw in call.kwargs:
        key = kw.name.text
        if key not in names:
            vals.fail("E0402", f"'{sig.name}' has no argument '{key}'", kw.name.span,
                      f"usage: {sig.usage()}", help=did_you_mean(key, names))
            failed = True
        elif key in given:
            vals.fail("E0406", f"argument '{key}' given twice", kw.name.span)
            failed = True
        else:
            given[key] = kw.value
    out: dict[str, Any] = {}
    for p in sig.params:
        if p.name not in given:
            if p.default is REQUIRED:
                vals.fail("E0403", f"'{sig.name}' needs argument '{p.name}'", call.span,
                          f"usage: {sig.usage()}")
                failed = True
            else:
                out[p.name] = p.default
            continue
        try:
            out[p.name] = given[p.name] if p.read is None else p.read(
                vals, given[p.name], f"argument '{p.name}' of '{sig.name}'")
        except Bad:
            failed = True
    if failed:
        raise Bad()
    return Bound(call, out, given)


# ---- common readers ---------------------------------------------------------------------
MAX_UNITS = 1 << 16  # per node group; far beyond what fits in memory as dense weights anyway


def read_int(minimum: int | None = None, maximum: int | None = None) -> Reader:
    return lambda vals, v, what: vals.as_int(v, what, minimum, maximum)


def read_units() -> Reader:
    return read_int(1, MAX_UNITS)


def read_float(minimum: float | None = None, maximum: float | None = None, strict: bool = False) -> Reader:
    return lambda vals, v, what: vals.as_float(v, what, minimum, maximum, strict)


def read_prob() -> Reader:
    return lambda vals, v, what: vals.as_prob(v, what)


def read_bool() -> Reader:
    return lambda vals, v, what: vals.as_bool(v, what)


def read_str() -> Reader:
    return lambda vals, v, what: vals.as_str(v, what)


def read_symbol(*choices: str) -> Reader:
    return lambda vals, v, what: vals.as_symbol(v, what, choices)


def read_ints(minimum: int | None = None) -> Reader:
    return lambda vals, v, what: vals.as_int_or_list(v, what, minimum)
