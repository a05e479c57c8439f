"""Text -> AST. Lark (LALR) does the parsing; this module turns its trees into
the dataclass AST and its exceptions into diagnostics written in words."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any

import lark
from lark import Token, Transformer, v_args

from pcdsl.diagnostics import Diagnostic, Note, PcdslError, Source, Span, error
from pcdsl.syntax import ast

MAX_FILE_BYTES = 16 * 1024 * 1024  # a .pc file describes structure; data lives elsewhere


@functools.lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    text = resources.files("pcdsl.grammar").joinpath("pc.lark").read_text(encoding="utf-8")
    return lark.Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def read_source(path: str | Path) -> Source:
    """Read a file as UTF-8, reporting unreadable or undecodable files as diagnostics."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PcdslError([error("E0004", f"file '{name}' does not exist", Span(None, 0, 0, 0, 0))]) from None
    except OSError as exc:
        raise PcdslError([error("E0004", f"cannot read '{name}': {exc.strerror}", Span(None, 0, 0, 0, 0))]) from None
    return decode_source(name, data)


def decode_source(name: str, data: bytes) -> Source:
    if len(data) > MAX_FILE_BYTES:
        src = Source(name, "")
        raise PcdslError([error(
            "E0006", f"file is {len(data) / 2**20:.1f} MiB; .pc files are limited to "
            f"{MAX_FILE_BYTES // 2**20} MiB", Span.at_start(src),
            help="keep data and learned parameters in data or model files, not in .pc source")])
    try:
        return Source(name, data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PcdslError([not_utf8(name, data, exc, "save the file as UTF-8")]) from None


def not_utf8(name: str, data: bytes, exc: UnicodeDecodeError, help: str) -> Diagnostic:
    """E0005 at the line and column of the first byte that is not UTF-8."""
    prefix = data[:exc.start].decode("utf-8", errors="replace")
    src = Source(name, data.decode("utf-8", errors="replace"))
    line = prefix.count("\n") + 1
    col = len(prefix) - (prefix.rfind("\n") + 1) + 1
    return error("E0005", f"file is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
                 Span(src, line, col, line, col + 1), help=help)


def parse(source: Source) -> ast.Module:
    """Parse a whole source file into a Module, or raise PcdslError."""
    try:
        tree = _parser().parse(source.text)
        items = _Builder(source).transform(tree)
    except lark.exceptions.UnexpectedInput as exc:
        raise PcdslError([_syntax_diagnostic(source, exc)]) from None
    except RecursionError:  # the parser and the tree walk both recurse on nesting
        raise PcdslError([error("E0007", "expression is nested too deeply", Span.at_start(source),
                                help="flatten the expression; nesting this deep is never needed")]) from None
    return ast.Module(source.name, tuple(items), span=Span.at_start(source))


# ---- syntax errors in words ------------------------------------------------------
_WORDS = {"NAME": "a name", "NUMBER": "a number", "STRING": "a string", "$END": "end of file"}
_KEYWORDS = {"import", "const", "data", "circuit", "recipe", "var", "leaf", "prod", "sum",
             "structure", "outer", "with", "true", "false"}


def _describe(terminal: str) -> str:
    if terminal in _WORDS:
        return _WORDS[terminal]
    try:
        pattern = _parser().get_terminal(terminal).pattern
    except KeyError:
        return terminal.lower()
    if isinstance(pattern, lark.lexer.PatternStr):
        return f"'{pattern.value}'"
    return terminal.lower()


def _expected_words(terminals: set[str]) -> str:
    # names and literals first, then punctuation, then keywords
    words = sorted({_describe(t) for t in terminals},
                   key=lambda w: (not w.startswith(("a ", "end")), w[1:2].isalpha(), w))
    if len(words) > 12:
        words = [*words[:12], "..."]
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _syntax_diagnostic(source: Source, exc: lark.exceptions.UnexpectedInput) -> Diagnostic:
    if isinstance(exc, lark.exceptions.UnexpectedCharacters):
        line, col = exc.line, exc.column
        pos = exc.pos_in_stream or 0
        char = source.text[pos] if pos < len(source.text) else "?"
        span = Span(source, line, col, line, col + 1)
        shown = repr(char) if char.isprintable() else f"U+{ord(char):04X}"
        return error("E0002", f"unexpected character {shown}", span, help=_character_help(char))
    assert isinstance(exc, lark.exceptions.UnexpectedToken)
    tok: Token = exc.token
    expected = _accepted(exc)
    if tok.type == "$END":
        span = _end_span(source)
        notes = [Note("this '{' is never closed", s) for s in _unclosed_braces(source)[-1:]]
        return error("E0003", f"unexpected end of file; expected {_expected_words(expected)}",
                     span, *notes)
    line, col = tok.line or 1, tok.column or 1
    span = Span(source, line, col, tok.end_line or line, tok.end_column or col + 1)
    text = str(tok)
    shown = f"'{text}'" if len(text) < 40 else f"'{text[:37]}...'"
    help_ = _syntax_help(text, expected)
    return error("E0001", f"unexpected {shown}; expected {_expected_words(expected)}", span, help=help_)


def _accepted(exc: lark.exceptions.UnexpectedToken) -> set[str]:
    """Tokens that really continue the parse (LALR's own list includes merged lookaheads)."""
    try:
        accepts = set(exc.interactive_parser.accepts())
    except Exception:  # noqa: BLE001 -- the precise list is a nicety; fall back to the table's
        accepts = set()
    return accepts or set(exc.expected)


def _character_help(char: str) -> str | None:
    if char in "\u201c\u201d\u2018\u2019":
        return 'use plain ASCII quotes: "..."'
    if char in "\t\r\n ":
        return None
    return "this character has no meaning in a .pc file; comments start with '#'"


def _syntax_help(text: str, expected: set[str]) -> str | None:
    if text in _KEYWORDS and "NAME" in expected:
        return f"'{text}' is a keyword; choose another name"
    if text == "*" and "NAME" in expected:
        return "a sum weight is written right before its child, without '*': `sum s = 0.3 a + 0.7 b`"
    if text == "+" and any(_describe(t) == "'*'" for t in expected):
        return "a product multiplies its children with '*'; sums are declared with `sum`"
    if text == "=" and any(_describe(t) == "':'" for t in expected):
        return "a variable's domain follows ':', as in `var a : bool`"
    return None


def _end_span(source: Source) -> Span:
    lines = source.text.rstrip().split("\n")  # point just after the last character
    line = len(lines)
    col = len(lines[-1]) + 1
    return Span(source, line, col, line, col + 1)


def _unclosed_braces(source: Source) -> list[Span]:
    """Spans of '{' with no matching '}', skipping comments and strings."""
    stack: list[Span] = []
    line, col, in_comment, in_string = 1, 1, False, False
    for ch in source.text:
        if ch == "\n":
            line, col, in_comment, in_string = line + 1, 1, False, False
            continue
        if not in_comment and ch == '"':
            in_string = not in_string
        elif not in_string and ch == "#":
            in_comment = True
        elif not (in_comment or in_string):
            if ch == "{":
                stack.append(Span(source, line, col, line, col + 1))
            elif ch == "}" and stack:
                stack.pop()
        col += 1
    return stack


# ---- Lark tree -> AST ---------------------------------------------------------------
def _tok_span(source: Source, tok: Token) -> Span:
    return Span(source, tok.line or 0, tok.column or 0, tok.end_line or 0, tok.end_column or 0)


class _Builder(Transformer):  # type: ignore[type-arg]
    def __init__(self, source: Source):
        super().__init__()
        self.source = source

    def _span(self, meta: Any) -> Span:
        if getattr(meta, "empty", True):
            return Span(self.source, 0, 0, 0, 0)
        return Span(self.source, meta.line, meta.column, meta.end_line, meta.end_column)

    def _name(self, tok: Token) -> ast.Name:
        return ast.Name(str(tok), span=_tok_span(self.source, tok))

    def start(self, items: list[Any]) -> list[Any]:
        return items

    @v_args(meta=True)
    def import_decl(self, meta: Any, c: list[Any]) -> ast.Import:
        return ast.Import(ast.Str(_unquote(c[0]), span=_tok_span(self.source, c[0])), span=self._span(meta))

    @v_args(meta=True)
    def const_decl(self, meta: Any, c: list[Any]) -> ast.Const:
        return ast.Const(self._name(c[0]), c[1], span=self._span(meta))

    @v_args(meta=True)
    def data_decl(self, meta: Any, c: list[Any]) -> ast.DataDecl:
        return ast.DataDecl(self._name(c[0]), c[1], span=self._span(meta))

    @v_args(meta=True)
    def circuit(self, meta: Any, c: list[Any]) -> ast.Circuit:
        return ast.Circuit(self._name(c[0]), tuple(c[1:]), span=self._span(meta))

    @v_args(meta=True)
    def var_decl(self, meta: Any, c: list[Any]) -> ast.VarDecl:
        return ast.VarDecl(tuple(c[:-1]), c[-1], span=self._span(meta))

    @v_args(meta=True)
    def var_item(self, meta: Any, c: list[Any]) -> ast.VarItem:
        return ast.VarItem(self._name(c[0]), c[1], span=self._span(meta))

    def shape(self, c: list[Any]) -> tuple[Any, ...]:
        return tuple(c)

    @v_args(meta=True)
    def domain(self, meta: Any, c: list[Any]) -> ast.Domain:
        return ast.Domain(self._name(c[0]), c[1], span=self._span(meta))

    @v_args(meta=True)
    def leaf_decl(self, meta: Any, c: list[Any]) -> ast.LeafDecl:
        return ast.LeafDecl(self._name(c[0]), c[1], c[2] or (), span=self._span(meta))

    @v_args(meta=True)
    def hadamard_decl(self, meta: Any, c: list[Any]) -> ast.ProdDecl:
        return self._prod(meta, c, "hadamard")

    @v_args(meta=True)
    def outer_decl(self, meta: Any, c: list[Any]) -> ast.ProdDecl:
        return self._prod(meta, c, "kronecker")

    def _prod(self, meta: Any, c: list[Any], pattern: str) -> ast.ProdDecl:
        options = c[-1] or ()
        children = tuple(self._name(t) for t in c[1:-1])
        return ast.ProdDecl(self._name(c[0]), children, pattern, options, span=self._span(meta))

    @v_args(meta=True)
    def sum_decl(self, meta: Any, c: list[Any]) -> ast.SumDecl:
        return ast.SumDecl(self._name(c[0]), tuple(c[1:-1]), c[-1] or (), span=self._span(meta))

    @v_args(meta=True)
    def sum_term(self, meta: Any, c: list[Any]) -> ast.SumTerm:
        return ast.SumTerm(c[0], self._name(c[1]), span=self._span(meta))

    @v_args(meta=True)
    def structure_decl(self, meta: Any, c: list[Any]) -> ast.StructureDecl:
        return ast.StructureDecl(c[0], span=self._span(meta))

    def options(self, c: list[Any]) -> tuple[ast.KwArg, ...]:
        return tuple(c)

    @v_args(meta=True)
    def recipe(self, meta: Any, c: list[Any]) -> ast.Recipe:
        return ast.Recipe(self._name(c[0]), tuple(c[1:]), span=self._span(meta))

    @v_args(meta=True)
    def assign_entry(self, meta: Any, c: list[Any]) -> ast.AssignEntry:
        return ast.AssignEntry(self._name(c[0]), tuple(c[1:-1]), c[-1] or (), span=self._span(meta))

    @v_args(meta=True)
    def block_entry(self, meta: Any, c: list[Any]) -> ast.BlockEntry:
        return ast.BlockEntry(self._name(c[0]), tuple(c[1:]), span=self._span(meta))

    @v_args(meta=True)
    def list_entry(self, meta: Any, c: list[Any]) -> ast.ListEntry:
        return ast.ListEntry(self._name(c[0]), tuple(c[1:]), span=self._span(meta))

    # values
    @v_args(meta=True)
    def schedule(self, meta: Any, c: list[Any]) -> ast.Schedule:
        return ast.Schedule(tuple(c), span=self._span(meta))

    @v_args(meta=True)
    def number(self, meta: Any, c: list[Any]) -> ast.Num:
        value = _number(c[0])
        if c[1] is not None:
            denominator = _number(c[1])
            value = value / denominator if denominator else float("inf")
        return ast.Num(value, span=self._span(meta))

    @v_args(meta=True)
    def string(self, meta: Any, c: list[Any]) -> ast.Str:
        return ast.Str(_unquote(c[0]), span=self._span(meta))

    @v_args(meta=True)
    def true(self, meta: Any, c: list[Any]) -> ast.Bool:
        return ast.Bool(True, span=self._span(meta))

    @v_args(meta=True)
    def false(self, meta: Any, c: list[Any]) -> ast.Bool:
        return ast.Bool(False, span=self._span(meta))

    @v_args(meta=True)
    def vlist(self, meta: Any, c: list[Any]) -> ast.ListV:
        items = tuple(x for x in c if x is not None)
        return ast.ListV(items, span=self._span(meta))

    @v_args(meta=True)
    def call(self, meta: Any, c: list[Any]) -> ast.Call:
        rest = [x for x in c[1:] if x is not None]
        args = tuple(x for x in rest if not isinstance(x, ast.KwArg))
        kwargs = tuple(x for x in rest if isinstance(x, ast.KwArg))
        return ast.Call(self._name(c[0]), args, kwargs, span=self._span(meta))

    @v_args(meta=True)
    def kwarg(self, meta: Any, c: list[Any]) -> ast.KwArg:
        return ast.KwArg(self._name(c[0]), c[1], span=self._span(meta))

    @v_args(meta=True)
    def ref(self, meta: Any, c: list[Any]) -> ast.Ref:
        index = c[-1]
        parts = tuple(self._name(t) for t in c[:-1])
        return ast.Ref(parts, index, span=self._span(meta))

    def index(self, c: list[Any]) -> tuple[Any, ...]:
        return tuple(c)

    def at(self, c: list[Any]) -> Any:
        return c[0]

    @v_args(meta=True)
    def span_slice(self, meta: Any, c: list[Any]) -> ast.Slice:
        return ast.Slice(c[0], c[1], span=self._span(meta))


def _number(tok: Token) -> int | float:
    text = str(tok)
    if any(ch in text for ch in ".eE"):
        return float(text)
    return int(text)


def _unquote(tok: Token) -> str:
    body = str(tok)[1:-1]
    escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
    out, i = [], 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            out.append(escapes.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)
