"""Source spans, diagnostics and their one renderer.

A user mistake becomes a :class:`Diagnostic` (a value) and travels inside a
:class:`PcdslError`; a bug in pcdsl is an :class:`InternalError`. Diagnostics
render once, here, as ``file:line:col: error[CODE]: message`` followed by the
source line, a caret under the span, and notes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, eq=False)
class Source:
    """The text of one input file; spans point into it."""

    name: str
    text: str

    def line(self, number: int) -> str:
        # lines end at "\n" only, as the parser counts them (not at \r, \x0c, U+2028, ...)
        lines = self.text.split("\n")
        return lines[number - 1].removesuffix("\r") if 0 < number <= len(lines) else ""


@dataclass(frozen=True)
class Span:
    """A region of a source file: 1-based lines and columns, end exclusive."""

    source: Source | None = field(compare=False, repr=False)
    line: int
    column: int
    end_line: int
    end_column: int

    @property
    def file(self) -> str:
        return self.source.name if self.source else "<unknown>"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    @staticmethod
    def at_start(source: Source) -> Span:
        return Span(source, 1, 1, 1, 2)

    def merge(self, other: Span) -> Span:
        start = min((self.line, self.column), (other.line, other.column))
        end = max((self.end_line, self.end_column), (other.end_line, other.end_column))
        return Span(self.source, start[0], start[1], end[0], end[1])


NO_SPAN = Span(None, 0, 0, 0, 0)


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Note:
    message: str
    span: Span | None = None


@dataclass(frozen=True)
class Diagnostic:
    code: str
    severity: Severity
    message: str
    span: Span
    notes: tuple[Note, ...] = ()
    help: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR


def error(code: str, message: str, span: Span, *notes: Note | str, help: str | None = None) -> Diagnostic:
    return Diagnostic(code, Severity.ERROR, message, span, _notes(notes), help)


def warning(code: str, message: str, span: Span, *notes: Note | str, help: str | None = None) -> Diagnostic:
    return Diagnostic(code, Severity.WARNING, message, span, _notes(notes), help)


def _notes(notes: Iterable[Note | str]) -> tuple[Note, ...]:
    return tuple(n if isinstance(n, Note) else Note(n) for n in notes)


class PcdslError(Exception):
    """A user error: one or more diagnostics about the input."""

    def __init__(self, diagnostics: Sequence[Diagnostic]):
        self.diagnostics = tuple(diagnostics)
        super().__init__(render_all(self.diagnostics))


class MessageError(PcdslError):
    """A user error told in one sentence that names its file or argument (a data file, a model
    file, an API argument): one diagnostic without a source location; ``str`` is the sentence.
    (Not a ValueError: code that catches ValueError from numpy must not swallow these.)"""

    code = "E0004"

    def __init__(self, message: str, help: str | None = None):
        super().__init__([error(self.code, message, NO_SPAN, help=help)])
        self.message, self.help = message, help

    def __str__(self) -> str:
        return self.message + (f"; {self.help}" if self.help else "")


class InternalError(Exception):
    """A bug in pcdsl, never the user's fault."""


class Sink:
    """Collects diagnostics so a pass can report every problem, not just the first."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []

    def add(self, diagnostic: Diagnostic) -> None:
        self.items.append(diagnostic)

    @property
    def has_errors(self) -> bool:
        return any(d.is_error for d in self.items)

    def raise_if_errors(self) -> None:
        if self.has_errors:
            raise PcdslError(sorted_diagnostics(self.items))


def sorted_diagnostics(items: Iterable[Diagnostic]) -> list[Diagnostic]:
    def key(d: Diagnostic) -> tuple[str, int, int]:
        return (d.span.file, d.span.line, d.span.column)

    return sorted(items, key=key)


def render(d: Diagnostic) -> str:
    """Render one diagnostic: location, message, source line with caret, notes."""
    at = f"{d.span}: " if d.span.source is not None or d.span.line > 0 else ""  # API arguments: no file
    out = [f"{at}{d.severity.value}[{d.code}]: {d.message}"]
    out += _snippet(d.span)
    pad = " " * (len(str(d.span.line)) + 1) if d.span.source and d.span.line > 0 else "  "
    for note in d.notes:
        where = f" ({note.span})" if note.span and note.span.source else ""
        out.append(f"{pad}= note: {note.message}{where}")
    if d.help:
        out.append(f"{pad}= help: {d.help}")
    return "\n".join(out)


def render_all(diagnostics: Iterable[Diagnostic]) -> str:
    return "\n\n".join(render(d) for d in diagnostics)


_MAX_SHOWN = 120


def _snippet(span: Span) -> list[str]:
    if span.source is None or span.line < 1:
        return []
    text = span.source.line(span.line).replace("\t", " ")
    start = span.column - 1
    end = span.end_column - 1 if span.end_line == span.line else len(text)
    end = max(end, start + 1)
    if len(text) > _MAX_SHOWN:  # keep huge lines readable: a window around the span
        left = max(0, start - _MAX_SHOWN // 2)
        text = text[left:left + _MAX_SHOWN]
        start, end = start - left, min(end - left, len(text) + 1)
    text = "".join(ch if ch.isprintable() else "\N{REPLACEMENT CHARACTER}" for ch in text)
    gutter = " " * len(str(span.line))
    caret = " " * start + "^" * max(1, min(end, len(text) + 1) - start)
    return [f"{gutter} |", f"{span.line} | {text}", f"{gutter} | {caret}"]
