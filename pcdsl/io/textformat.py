"""What the line-based circuit formats share: reading a file into checked numeric fields.

`.jpc`, `.psdd`, `.sdd` and `.vtree` files are lines of one letter (the line's kind) and numbers,
after a header ``MAGIC COUNT``; lines starting with ``c`` are comments. A :class:`Schema` names
each kind's fields; :func:`scan` turns a file into :class:`Lines` (every field as a float64, the
integer fields checked to be integers) or raises :class:`PcdslError` with every problem it finds,
each located at ``file:line:col`` and rendered like a `.pc` diagnostic.

Speed matters (Juice models have tens of millions of edges), so the numbers of all lines are
parsed by one ``numpy.fromstring`` call; only when that fails is the file read token by token,
to say where and why. Files ending in ``.gz`` (or starting with gzip's magic bytes) are
decompressed first.
"""

from __future__ import annotations

import gzip
import re
import warnings
import weakref
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pcdsl.diagnostics import Diagnostic, Note, PcdslError, Source, Span, error, sorted_diagnostics
from pcdsl.syntax.parser import not_utf8

MAX_BYTES = 1 << 35  # 32 GiB of text, compressed or not
MAX_SHOWN = 20  # diagnostics reported per file; the rest are counted
_TOKEN = re.compile(r"\S+")
_INTEGRAL = float(1 << 53)  # integers above this are not exact in float64


@dataclass(frozen=True)
class Kind:
    """One kind of line: its fixed fields, then `repeat` (a group of fields) some number of times,
    given by the last fixed field when `counted`, else by the line's length."""

    letter: str
    name: str
    fields: tuple[str, ...]
    repeat: tuple[str, ...] = ()
    counted: bool = False
    min_repeat: int = 0
    max_repeat: int | None = None

    def usage(self) -> str:
        tail = f" {{{' '.join(self.repeat)}}}{'+' if self.min_repeat else '*'}" if self.repeat else ""
        return f"{self.letter} {' '.join(self.fields)}{tail}".strip()

    def token(self, name: str, k: int = 0) -> int:
        """The 1-based token index of field `name` (of the k-th repeat group): 0 is the letter."""
        if name in self.fields:
            return 1 + self.fields.index(name)
        return 1 + len(self.fields) + k * len(self.repeat) + self.repeat.index(name)


@dataclass(frozen=True)
class Schema:
    magic: str  # the header's first word: "jpc", "psdd", "sdd", "vtree"
    kinds: tuple[Kind, ...]
    reals: frozenset[str]  # fields holding real numbers; every other field is an integer

    def kind(self, letter: str) -> Kind:
        return next(k for k in self.kinds if k.letter == letter)


@dataclass
class Lines:
    """The node lines of a file (comments and header left out), in file order."""

    source: Source
    schema: Schema
    count: int  # the header's count
    header_line: int
    letters: np.ndarray  # (lines,) uint8 codes of the kind letters
    numbers: np.ndarray  # (lines,) 1-based line numbers in the file
    offsets: np.ndarray  # (lines + 1,) int64: line i's fields are values[offsets[i]:offsets[i + 1]]
    values: np.ndarray  # float64
    meta: list[tuple[int, str]] = field(default_factory=list)  # (line, text) of "c pcdsl-..." comments
    _cache: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.letters)

    def of_kind(self, letter: str) -> np.ndarray:
        return np.flatnonzero(self.letters == ord(letter))

    def field(self, lines: np.ndarray, letter: str, name: str) -> np.ndarray:
        """Field `name` of `lines` (all of kind `letter`)."""
        return self.values[self.offsets[lines] + self.schema.kind(letter).token(name) - 1]

    def ints(self, lines: np.ndarray, letter: str, name: str) -> np.ndarray:
        return self.field(lines, letter, name).astype(np.int64)

    def repeats(self, letter: str) -> np.ndarray:
        """How many repeat groups each line of kind `letter` has."""
        kind = self.schema.kind(letter)
        return (np.diff(self.offsets)[self.of_kind(letter)] - len(kind.fields)) // max(1, len(kind.repeat))

    def items(self, letter: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(owner line, value) of repeated field `name` over the lines of kind `letter`, in order."""
        owners, k = self._groups(letter)
        kind = self.schema.kind(letter)
        return owners, self.values[self.offsets[owners] + kind.token(name) - 1 + k * len(kind.repeat)]

    def item_index(self, letter: str) -> np.ndarray:
        """For each repeat group of the lines of kind `letter`, its index k within its line."""
        return self._groups(letter)[1]

    def _groups(self, letter: str) -> tuple[np.ndarray, np.ndarray]:
        if letter not in self._cache:  # computed once: files have millions of groups
            lines = self.of_kind(letter)
            counts = self.repeats(letter)
            starts = np.repeat(np.cumsum(counts) - counts, counts)
            self._cache[letter] = (np.repeat(lines, counts), np.arange(int(counts.sum()), dtype=np.int64) - starts)
        return self._cache[letter]

    # ---- locations ----------------------------------------------------------------------
    def span(self, line: int, token: int | None = None) -> Span:
        """Line `line` (an index into these lines) or its `token`-th token (0: the letter)."""
        return token_span(self.source, int(self.numbers[line]), token)

    def field_span(self, line: int, name: str, k: int = 0) -> Span:
        kind = self.schema.kind(chr(self.letters[line]))
        return self.span(line, kind.token(name, k))

    def header_span(self, token: int | None = None) -> Span:
        return token_span(self.source, self.header_line, token)


_LINES: weakref.WeakKeyDictionary[Source, list[str]] = weakref.WeakKeyDictionary()


def _line(source: Source, number: int) -> str:
    """Line `number` of `source` (split once per source: spans are made for every node)."""
    lines = _LINES.get(source)
    if lines is None:
        lines = _LINES[source] = source.text.split("\n")
    return lines[number - 1].removesuffix("\r") if 0 < number <= len(lines) else ""


def token_span(source: Source, number: int, token: int | None = None) -> Span:
    """A span over line `number` of `source`, or over its `token`-th whitespace-separated token
    (the end of the line when it has fewer tokens)."""
    text = _line(source, number)
    if token is None:
        return Span(source, number, 1, number, max(2, len(text.rstrip()) + 1))
    for i, match in enumerate(_TOKEN.finditer(text)):
        if i == token:
            return Span(source, number, match.start() + 1, number, match.end() + 1)
    end = len(text.rstrip()) + 1
    return Span(source, number, end, number, end + 1)


# ---- reading ------------------------------------------------------------------------------
def read_source(path: str | Path) -> Source:
    """A format file's text, gunzipped when compressed; unreadable, oversized, broken gzip or
    non-UTF-8 files are diagnostics."""
    name = str(path)
    nowhere = Span(None, 0, 0, 0, 0)
    try:
        if Path(path).stat().st_size > MAX_BYTES:
            raise PcdslError([error("E0004", f"file '{name}' is larger than {MAX_BYTES >> 30} GiB", nowhere)])
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PcdslError([error("E0004", f"file '{name}' does not exist", nowhere)]) from None
    except OSError as exc:
        raise PcdslError([error("E0004", f"cannot read '{name}': {exc.strerror or exc}", nowhere)]) from None
    if name.endswith(".gz") or data[:2] == b"\x1f\x8b":
        data = _gunzip(name, data)
    if len(data) > MAX_BYTES:
        raise PcdslError([error("E0004", f"file '{name}' is larger than {MAX_BYTES >> 30} GiB", nowhere)])
    try:
        return Source(name, data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PcdslError([not_utf8(name, data, exc, "circuit files are plain ASCII text")]) from None


def _gunzip(name: str, data: bytes) -> bytes:
    nowhere = Span(None, 0, 0, 0, 0)
    inflater = zlib.decompressobj(wbits=31)  # gzip framing
    try:
        out = inflater.decompress(data, MAX_BYTES + 1)
    except zlib.error as exc:
        raise PcdslError([error("E0004", f"'{name}' is not a readable gzip file ({exc})", nowhere)]) from None
    if len(out) > MAX_BYTES:
        raise PcdslError([error("E0004", f"'{name}' unpacks to more than {MAX_BYTES >> 30} GiB", nowhere)])
    if not inflater.eof:
        raise PcdslError([error("E0004", f"'{name}': the gzip stream ends early (a truncated file)", nowhere,
                                help="copy or download the file again")])
    return out


def compress_if_gz(path: Path, text: bytes) -> bytes:
    """`text` gzipped when `path` ends in .gz (no timestamp, so equal models give equal files)."""
    return gzip.compress(text, mtime=0) if path.name.endswith(".gz") else text


def scan(source: Source, schema: Schema) -> Lines:
    """The file's node lines with every field checked for shape and type (see module doc)."""
    problems: list[Diagnostic] = []
    header, count, letters, numbers, rests, counts, meta = _split(source, schema, problems)
    if header == 0:
        raise PcdslError(problems or [error("E0701", f"the file has no '{schema.magic} COUNT' header line",
                                            Span.at_start(source), help=_header_help(schema))])
    line_problems = len(problems)  # a bad header or unknown line kinds: the count means nothing then
    values = _parse(source, schema, rests, counts, numbers, problems)
    lines = Lines(source, schema, count, header, np.array(letters, dtype=np.uint8), np.array(numbers, dtype=np.int64),
                  np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]), values, meta)
    if not problems:
        _check_shapes(lines, problems)
    if not problems:
        _check_integers(lines, problems)
    if not line_problems:
        _check_count(lines, problems)
    raise_all(problems)
    return lines


def _check_count(lines: Lines, problems: list[Diagnostic]) -> None:
    """The header's count is the number of node lines (a shorter file was cut off)."""
    if len(lines) == lines.count:
        return
    what = "node" if lines.schema.magic != "vtree" else "vtree node"
    plural = "s" if lines.count != 1 else ""
    problems.append(error("E0707", f"the header promises {lines.count} {what}{plural}, but the "
                          f"file has {len(lines)}{' (is it truncated?)' if len(lines) < lines.count else ''}",
                          lines.header_span(1),
                          *([Note("the last line", lines.span(len(lines) - 1))] if len(lines) else []),
                          help=f"the number after '{lines.schema.magic}' counts the {what} lines"))


def _header_help(schema: Schema) -> str:
    return f"the first line that is not a comment must be '{schema.magic} N', N the number of node lines"


def _split(source: Source, schema: Schema, problems: list[Diagnostic]):  # type: ignore[no-untyped-def]
    """One pass over the lines: the header, then each node line's letter and number fields."""
    letters_ok = {k.letter for k in schema.kinds}
    header = count = 0
    letters: list[int] = []
    numbers: list[int] = []
    rests: list[str] = []
    counts: list[int] = []
    meta: list[tuple[int, str]] = []
    text = source.text
    loose = "  " in text or "\t" in text or "\r" in text  # checked once, not per line, for speed
    for number, line in enumerate(text.split("\n"), 1):
        if not line or line[0] == "c" or line.isspace():  # blank lines and comments
            if line.startswith("c pcdsl-"):
                meta.append((number, line.rstrip("\r")))
            continue
        if header == 0:
            header, count = number, _header(source, schema, number, line, problems)
            continue
        letter = line[0]
        if letter not in letters_ok or (len(line) > 1 and not line[1].isspace()):
            if len(problems) < MAX_SHOWN:
                problems.append(_unknown_kind(source, schema, number, line))
            continue
        rest = line[2:]
        if rest[:1] == " " or rest[-1:] == " " or (loose and ("  " in rest or "\t" in rest or "\r" in rest)):
            rest = " ".join(rest.split())
        letters.append(ord(letter))
        numbers.append(number)
        rests.append(rest)
        counts.append(rest.count(" ") + 1 if rest else 0)
    return header, count, letters, numbers, rests, counts, meta


def _header(source: Source, schema: Schema, number: int, line: str, problems: list[Diagnostic]) -> int:
    words = line.split()
    if words[0] != schema.magic or len(words) != 2 or not words[1].isdigit():
        token = 0 if words[0] != schema.magic else 1
        problems.append(error("E0701", f"expected the header '{schema.magic} COUNT', found '{line.strip()[:40]}'",
                              token_span(source, number, token), help=_header_help(schema)))
        return 0
    return int(words[1])


def _unknown_kind(source: Source, schema: Schema, number: int, line: str) -> Diagnostic:
    known = ", ".join(k.letter for k in schema.kinds)
    word = line.split()[0] if line.split() else line
    return error("E0702", f"'{word[:20]}' is not a kind of {schema.magic} line", token_span(source, number, 0),
                 f"a line starts with one of {known}, or 'c' for a comment",
                 help="; ".join(k.usage() for k in schema.kinds))


def _parse(source: Source, schema: Schema, rests: list[str], counts: list[int], numbers: list[int],
           problems: list[Diagnostic]) -> np.ndarray:
    total = sum(counts)
    if total:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", DeprecationWarning)  # older numpy warns on bad text
                values = np.fromstring(" ".join(rests), sep=" ")  # one C loop over every number
            if len(values) == total:
                return values
        except (ValueError, DeprecationWarning):
            pass
    return _parse_carefully(source, rests, numbers, problems)


def _parse_carefully(source: Source, rests: list[str], numbers: list[int], problems: list[Diagnostic]) -> np.ndarray:
    """Token by token, reporting each token that is not a number (the slow path)."""
    out: list[float] = []
    for rest, number in zip(rests, numbers, strict=True):
        for i, token in enumerate(rest.split()):
            try:
                out.append(float(token) if "_" not in token else float("x"))
            except ValueError:
                if len(problems) < MAX_SHOWN:
                    problems.append(error("E0703", f"'{token[:30]}' is not a number",
                                          token_span(source, number, i + 1)))
                out.append(float("nan"))
    return np.array(out, dtype=np.float64)


def _check_shapes(lines: Lines, problems: list[Diagnostic]) -> None:
    """Each line has the fields its kind needs (a counted kind: as many groups as its count)."""
    lengths = np.diff(lines.offsets)
    for kind in lines.schema.kinds:
        idx = lines.of_kind(kind.letter)
        if not len(idx):
            continue
        fixed = len(kind.fields)
        have = lengths[idx]
        if kind.counted:
            n = np.full(len(idx), -1.0)
            long_enough = have >= fixed
            n[long_enough] = lines.values[lines.offsets[idx[long_enough]] + fixed - 1]
            groups = np.where(n == np.floor(n), n, -1)
            bad = (have < fixed) | (groups < kind.min_repeat) | (have != fixed + groups * len(kind.repeat))
        elif kind.repeat:
            extra = have - fixed
            groups = extra // len(kind.repeat)
            bad = (extra < 0) | (extra % len(kind.repeat) != 0) | (groups < kind.min_repeat)
            if kind.max_repeat is not None:
                bad |= groups > kind.max_repeat
        else:
            bad = have != fixed
        for i in idx[bad][:MAX_SHOWN - len(problems)]:
            problems.append(_shape_error(lines, kind, int(i), int(lengths[i])))


def _shape_error(lines: Lines, kind: Kind, i: int, have: int) -> Diagnostic:
    fixed = len(kind.fields)
    if kind.counted and have >= fixed:
        n = lines.values[lines.offsets[i] + fixed - 1]
        what = f"its count says {n:g} {'group' if n == 1 else 'groups'} of {{{' '.join(kind.repeat)}}}"
        if n >= kind.min_repeat and np.isfinite(n) and n == int(n):
            what += f" ({fixed + int(n) * len(kind.repeat)} numbers), but it has {have}"
        else:
            what += f", and a {kind.name} needs at least {kind.min_repeat}"
        return error("E0702", f"{kind.name} line does not match its count: {what}",
                     lines.span(i), help=f"the line's form is '{kind.usage()}'")
    return error("E0702", f"{kind.name} line has {have} {'number' if have == 1 else 'numbers'} after "
                 f"'{kind.letter}', which does not fit its form", lines.span(i),
                 help=f"the line's form is '{kind.usage()}'")


def _check_integers(lines: Lines, problems: list[Diagnostic]) -> None:
    """Integer fields hold exact integers; real fields are not NaN."""
    for kind in lines.schema.kinds:
        idx = lines.of_kind(kind.letter)
        if not len(idx):
            continue
        for name in (*kind.fields, *kind.repeat):
            if name in kind.repeat:
                owners, values = lines.items(kind.letter, name)
                ks = lines.item_index(kind.letter)
            else:
                owners, values, ks = idx, lines.field(idx, kind.letter, name), np.zeros(len(idx), dtype=np.int64)
            if name in lines.schema.reals:
                bad = np.isnan(values)
                what = "a number"
            else:
                bad = ~((values == np.floor(values)) & (np.abs(values) < _INTEGRAL))
                what = "an integer"
            for j in np.flatnonzero(bad)[:MAX_SHOWN - len(problems)]:
                line, k = int(owners[j]), int(ks[j])
                span = lines.span(line, kind.token(name, k))
                problems.append(error("E0703", f"the {name} of a {kind.name} must be {what}, found "
                                      f"'{_text(span)}'", span, help=f"the line's form is '{kind.usage()}'"))


def _text(span: Span) -> str:
    assert span.source is not None
    return _line(span.source, span.line)[span.column - 1:span.end_column - 1][:30]


def raise_all(problems: Iterable[Diagnostic]) -> None:
    """Raise every problem (the first MAX_SHOWN, and a count of the rest), if there are any."""
    found = list(problems)
    if not found:
        return
    shown = sorted_diagnostics(found)[:MAX_SHOWN]
    if len(found) > MAX_SHOWN:
        last = shown[-1]
        shown[-1] = Diagnostic(last.code, last.severity, last.message, last.span,
                               (*last.notes, Note(f"{len(found) - MAX_SHOWN} more problems are not shown")), last.help)
    raise PcdslError(shown)


# ---- checks every format shares ------------------------------------------------------------------
def check_ids(lines: Lines, problems: list[Diagnostic], what: str = "node") -> np.ndarray:
    """Each line's id is in 0..count-1 and unique; returns the line index of each id (-1 where no
    line defines it)."""
    ids = lines.values[lines.offsets[:-1]].astype(np.int64)  # the id is every kind's first field
    by_id = np.full(max(lines.count, 0), -1, dtype=np.int64)
    outside = np.flatnonzero((ids < 0) | (ids >= lines.count))
    for i in outside[:MAX_SHOWN]:
        problems.append(error("E0704", f"{what} id {ids[i]} is outside 0..{lines.count - 1} (the header's "
                              f"count is {lines.count})", lines.span(int(i), 1),
                              help=f"{what} ids run from 0 to the header's count minus 1"))
    inside = np.flatnonzero((ids >= 0) & (ids < lines.count))
    first = np.full(max(lines.count, 0), -1, dtype=np.int64)
    first[ids[inside][::-1]] = inside[::-1]  # the earliest line of each id wins
    twice = inside[first[ids[inside]] != inside]
    for i in twice[:MAX_SHOWN]:
        problems.append(error("E0705", f"{what} id {ids[i]} is defined twice", lines.span(int(i), 1),
                              Note("first defined here", lines.span(int(first[ids[i]]), 1)),
                              help=f"every {what} needs its own id"))
    by_id[ids[inside]] = first[ids[inside]]
    return by_id


def check_children(lines: Lines, by_id: np.ndarray, owners: np.ndarray, ids: np.ndarray, tokens: np.ndarray,
                   problems: list[Diagnostic], what: str = "node") -> np.ndarray:
    """Children (`ids`, listed on lines `owners` at token `tokens`) are defined on earlier lines;
    returns each child's line index."""
    inside = (ids >= 0) & (ids < len(by_id))
    at = np.full(len(ids), -1, dtype=np.int64)
    at[inside] = by_id[ids[inside]]
    bad = np.flatnonzero((at < 0) | (at >= owners))
    for j in bad[:MAX_SHOWN]:
        span = lines.span(int(owners[j]), int(tokens[j]))
        if at[j] < 0:
            problems.append(error("E0706", f"child {ids[j]} is not a {what} of this file", span,
                                  help=f"children are ids of {what}s defined on earlier lines"))
        else:
            problems.append(error("E0706", f"child {ids[j]} is defined after this line (ids out of order)", span,
                                  Note(f"{what} {ids[j]} is defined here", lines.span(int(at[j]), 1)),
                                  help="children come before their parents: write the file bottom-up"))
    return at
