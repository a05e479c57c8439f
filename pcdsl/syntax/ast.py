"""The typed AST of a .pc file. Every node carries the Span it came from;
equality ignores spans, so two parses of the same text compare equal."""

from __future__ import annotations

from dataclasses import dataclass, field

from pcdsl.diagnostics import NO_SPAN, Span


def _span() -> Span:
    return field(default=NO_SPAN, compare=False, repr=False, kw_only=True)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Name:
    text: str
    span: Span = _span()


# ---- values ----------------------------------------------------------------
@dataclass(frozen=True)
class Num:
    value: int | float
    span: Span = _span()


@dataclass(frozen=True)
class Str:
    value: str
    span: Span = _span()


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span = _span()


@dataclass(frozen=True)
class ListV:
    items: tuple[Value, ...]
    span: Span = _span()


@dataclass(frozen=True)
class KwArg:
    name: Name
    value: Value
    span: Span = _span()


@dataclass(frozen=True)
class Call:
    func: Name
    args: tuple[Value, ...]
    kwargs: tuple[KwArg, ...]
    span: Span = _span()


@dataclass(frozen=True)
class Slice:
    start: Value | None
    stop: Value | None
    span: Span = _span()


@dataclass(frozen=True)
class Ref:
    """A name, possibly dotted (``teacher.features``) and indexed (``x[0, 2:5]``)."""

    parts: tuple[Name, ...]
    index: tuple[Value | Slice, ...] | None = None
    span: Span = _span()

    @property
    def dotted(self) -> str:
        return ".".join(p.text for p in self.parts)


@dataclass(frozen=True)
class Schedule:
    """``0.1 -> 0.01``: a value that changes linearly over training."""

    points: tuple[Value, ...]
    span: Span = _span()


Value = Num | Str | Bool | ListV | Call | Ref | Schedule


# ---- declarations ------------------------------------------------------------
@dataclass(frozen=True)
class Import:
    path: Str
    span: Span = _span()


@dataclass(frozen=True)
class Const:
    name: Name
    value: Value
    span: Span = _span()


@dataclass(frozen=True)
class DataDecl:
    name: Name
    source: Call
    span: Span = _span()


@dataclass(frozen=True)
class VarItem:
    name: Name
    shape: tuple[Value, ...] | None
    span: Span = _span()


@dataclass(frozen=True)
class Domain:
    name: Name
    arg: Value | None
    span: Span = _span()


@dataclass(frozen=True)
class VarDecl:
    items: tuple[VarItem, ...]
    domain: Domain
    span: Span = _span()


@dataclass(frozen=True)
class LeafDecl:
    name: Name
    dist: Call
    options: tuple[KwArg, ...] = ()
    span: Span = _span()


@dataclass(frozen=True)
class ProdDecl:
    name: Name
    children: tuple[Name, ...]
    pattern: str  # "hadamard" | "kronecker"
    options: tuple[KwArg, ...] = ()
    span: Span = _span()


@dataclass(frozen=True)
class SumTerm:
    weight: Num | None
    child: Name
    span: Span = _span()


@dataclass(frozen=True)
class SumDecl:
    name: Name
    terms: tuple[SumTerm, ...]
    options: tuple[KwArg, ...] = ()
    span: Span = _span()


@dataclass(frozen=True)
class StructureDecl:
    template: Call
    span: Span = _span()


Stmt = VarDecl | Const | LeafDecl | ProdDecl | SumDecl | StructureDecl
NodeDecl = LeafDecl | ProdDecl | SumDecl


@dataclass(frozen=True)
class Circuit:
    name: Name
    body: tuple[Stmt, ...]
    span: Span = _span()


@dataclass(frozen=True)
class AssignEntry:
    key: Name
    stages: tuple[Value, ...]  # ``a | b | c`` is a pipeline of three
    options: tuple[KwArg, ...] = ()
    span: Span = _span()


@dataclass(frozen=True)
class BlockEntry:
    key: Name
    calls: tuple[Call, ...]
    span: Span = _span()


@dataclass(frozen=True)
class ListEntry:
    key: Name
    calls: tuple[Call, ...]
    span: Span = _span()


Entry = AssignEntry | BlockEntry | ListEntry


@dataclass(frozen=True)
class Recipe:
    name: Name
    entries: tuple[Entry, ...]
    span: Span = _span()


Item = Import | Const | DataDecl | Circuit | Recipe


@dataclass(frozen=True)
class Module:
    path: str
    items: tuple[Item, ...]
    span: Span = _span()
