"""Reading AST values as typed Python values, with constants substituted and
every mismatch reported as a diagnostic at the value's span."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pcdsl.diagnostics import Note, Sink, Span, error
from pcdsl.syntax import ast
from pcdsl.syntax.names import did_you_mean, one_of


class Bad(Exception):
    """Raised after a diagnostic was reported: abandons the current declaration."""


def describe(v: ast.Value) -> str:
    if isinstance(v, ast.Num):
        return f"the number {v.value}"
    if isinstance(v, ast.Str):
        return f'the string "{v.value}"'
    if isinstance(v, ast.Bool):
        return "true" if v.value else "false"
    if isinstance(v, ast.ListV):
        return f"a list of {len(v.items)}"
    if isinstance(v, ast.Call):
        return f"a call to '{v.func.text}'"
    if isinstance(v, ast.Ref):
        return f"the name '{v.dotted}'"
    return "a schedule"


class Values:
    """Typed readers over one constant environment (global constants, shadowed
    by a circuit's own)."""

    def __init__(self, sink: Sink, consts: Mapping[str, ast.Const], cycles: set[frozenset[str]] | None = None):
        self.sink = sink
        self.consts = consts
        self._cycles = cycles if cycles is not None else set()  # reported once, however often met
        self._resolved: dict[str, ast.Value] = {}

    def child(self, local: Mapping[str, ast.Const]) -> Values:
        return Values(self.sink, {**self.consts, **local}, self._cycles)

    def fail(self, code: str, message: str, span: Span, *notes: Note | str, help: str | None = None) -> Bad:
        self.sink.add(error(code, message, span, *notes, help=help))
        return Bad()

    # ---- constants -----------------------------------------------------------------
    def deref(self, v: ast.Value) -> ast.Value:
        """Replace a bare name that names a constant by the constant's value (following
        chains of constants iteratively, so long chains cannot exhaust the stack)."""
        chain: list[str] = []
        seen: set[str] = set()
        while isinstance(v, ast.Ref) and len(v.parts) == 1 and v.index is None:
            name = v.parts[0].text
            const = self.consts.get(name)
            if const is None:
                break
            if name in self._resolved:  # each constant is followed to its value once
                v = self._resolved[name]
                break
            if name in seen:
                members = chain[chain.index(name):]
                if frozenset(members) not in self._cycles:
                    self._cycles.add(frozenset(members))
                    self.fail("E0103", f"constant '{name}' is defined in terms of itself", const.name.span,
                              f"cycle: {' -> '.join([*members, name])}")
                raise Bad()
            chain.append(name)
            seen.add(name)
            v = const.value
        for name in chain:
            self._resolved[name] = v
        return v

    # ---- typed readers ---------------------------------------------------------------
    def as_number(self, v: ast.Value, what: str) -> int | float:
        d = self.deref(v)
        if isinstance(d, ast.Num):
            return d.value
        raise self._type(v, d, what, "a number")

    def as_int(self, v: ast.Value, what: str, minimum: int | None = None, maximum: int | None = None) -> int:
        d = self.deref(v)
        if not isinstance(d, ast.Num) or not isinstance(d.value, int):
            raise self._type(v, d, what, "an integer")
        if minimum is not None and d.value < minimum:
            raise self.fail("E0309", f"{what} must be at least {minimum}, found {d.value}", v.span)
        if maximum is not None and d.value > maximum:
            raise self.fail("E0309", f"{what} must be at most {maximum}, found {d.value}", v.span)
        return d.value

    def as_float(self, v: ast.Value, what: str, minimum: float | None = None,
              maximum: float | None = None, strict_min: bool = False) -> float:
        value = float(self.as_number(v, what))
        if value != value or value in (float("inf"), float("-inf")):
            raise self.fail("E0309", f"{what} must be finite, found {value}", v.span)
        low_bad = minimum is not None and (value <= minimum if strict_min else value < minimum)
        if low_bad or (maximum is not None and value > maximum):
            bound = f"greater than {minimum}" if strict_min else f"at least {minimum}"
            if maximum is not None:
                bound = f"between {minimum} and {maximum}"
            raise self.fail("E0309", f"{what} must be {bound}, found {value}", v.span)
        return value

    def as_prob(self, v: ast.Value, what: str) -> float:
        value = float(self.as_number(v, what))
        if not 0.0 <= value <= 1.0:
            raise self.fail("E0301", f"{what} must be a probability in [0, 1], found {value}", v.span)
        return value

    def as_bool(self, v: ast.Value, what: str) -> bool:
        d = self.deref(v)
        if isinstance(d, ast.Bool):
            return d.value
        raise self._type(v, d, what, "true or false")

    def as_str(self, v: ast.Value, what: str) -> str:
        d = self.deref(v)
        if isinstance(d, ast.Str):
            return d.value
        raise self._type(v, d, what, "a string")

    def as_symbol(self, v: ast.Value, what: str, choices: Iterable[str]) -> str:
        """A bare name or a string naming one of `choices`."""
        d = self.deref(v)
        options = sorted(choices)
        if isinstance(d, ast.Ref) and len(d.parts) == 1 and d.index is None:
            text = d.parts[0].text
        elif isinstance(d, ast.Str):
            text = d.value
        else:
            raise self._type(v, d, what, one_of(options))
        if text not in options:
            raise self.fail("E0309", f"{what} must be {one_of(options)}, found '{text}'", v.span,
                            help=did_you_mean(text, options))
        return text

    def as_list(self, v: ast.Value, what: str) -> tuple[ast.Value, ...]:
        d = self.deref(v)
        if isinstance(d, ast.ListV):
            return d.items
        raise self._type(v, d, what, "a list")

    def as_int_or_list(self, v: ast.Value, what: str, minimum: int | None = None) -> tuple[int, ...]:
        d = self.deref(v)
        items = d.items if isinstance(d, ast.ListV) else (v,)
        if not items:
            raise self.fail("E0309", f"{what} must not be empty", v.span)
        return tuple(self.as_int(x, what, minimum) for x in items)

    def _type(self, v: ast.Value, d: ast.Value, what: str, expected: str) -> Bad:
        notes = []
        if d is not v:
            notes.append(Note("the constant's value is defined here", d.span))
        if isinstance(d, ast.Ref) and len(d.parts) == 1 and d.index is None and expected != "true or false":
            help_ = did_you_mean(d.parts[0].text, self.consts)
            if "number" in expected or "integer" in expected:
                return self.fail("E0101", f"undefined name '{d.parts[0].text}' (expected {expected} "
                                 f"for {what})", v.span, *notes, help=help_)
        return self.fail("E0308", f"{what} must be {expected}, found {describe(d)}", v.span, *notes)
