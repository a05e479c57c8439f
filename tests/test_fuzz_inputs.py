"""Fuzzing the front end with mutated example files.

Every input, however broken, must either check or raise exactly ``PcdslError``
whose diagnostics point inside the file (1-based line and column, lines split
on '\\n' as the parser counts them) and render as ``file:line:col: ...``.
The CLI must answer 0 or 1, never 3 (internal error).

Mutants are written next to symlinks of every entry of examples/, so that
relative imports and data paths of the examples still resolve.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcdsl.cli import main as cli_main
from pcdsl.diagnostics import Diagnostic, PcdslError, Span, render
from pcdsl.frontend import check_file
from pcdsl.syntax.parser import MAX_FILE_BYTES

ROOT = Path(__file__).parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.pc"))
TEXTS = {p.name: p.read_text(encoding="utf-8") for p in EXAMPLES}
NAMES = sorted(TEXTS)

SETTINGS = dict(derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))


# ---- the contract ------------------------------------------------------------------------
def _span_inside(span: Span, what: str) -> None:
    assert span.source is not None, f"{what}: span without source"
    lines = span.source.text.split("\n")  # the parser counts lines on '\n' only
    assert 1 <= span.line <= len(lines), f"{what}: line {span.line} outside 1..{len(lines)}"
    width = len(lines[span.line - 1])
    assert 1 <= span.column <= width + 1, \
        f"{what}: column {span.column} outside 1..{width + 1} on line {span.line}"
    assert (span.end_line, span.end_column) >= (span.line, span.column), f"{what}: span ends before it starts"
    assert span.end_line <= len(lines), f"{what}: end line {span.end_line} outside 1..{len(lines)}"
    end_width = len(lines[span.end_line - 1])
    assert span.end_column <= end_width + 2, \
        f"{what}: end column {span.end_column} beyond {end_width + 2} on line {span.end_line}"


def check_diagnostic(d: Diagnostic, path: Path, data: bytes) -> None:
    _span_inside(d.span, f"{d.code} {d.message!r}")
    source = d.span.source
    assert source is not None
    if source.name == str(path):  # the main file: the span is into its text as read
        if d.code == "E0006":
            assert source.text == ""
        elif d.code == "E0005":
            assert source.text == data.decode("utf-8", errors="replace")
        else:
            assert source.text == data.decode("utf-8")
    else:  # an example imported by the mutant
        assert Path(source.name).exists(), f"{d.code}: span into unknown file {source.name!r}"
    for note in d.notes:
        if note.span is not None and note.span.source is not None:
            _span_inside(note.span, f"note {note.message!r} of {d.code}")
    rendered = render(d)
    assert rendered.startswith(f"{source.name}:{d.span.line}:{d.span.column}:"), rendered[:200]


def check_contract(path: Path, data: bytes) -> tuple[Diagnostic, ...]:
    """Write `data` to `path`, check it; any exception but PcdslError propagates (and fails)."""
    path.write_bytes(data)
    try:
        checked = check_file(path)
    except PcdslError as exc:
        diagnostics = exc.diagnostics
        assert any(d.is_error for d in diagnostics), "PcdslError without an error diagnostic"
    else:
        diagnostics = tuple(checked.warnings)
        assert not any(d.is_error for d in diagnostics)
    for d in diagnostics:
        check_diagnostic(d, path, data)
    return diagnostics


def run_cli(path: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(["check", str(path)])
    return rc, err.getvalue()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fuzz")
    for entry in (ROOT / "examples").iterdir():
        os.symlink(entry.resolve(), d / entry.name)
    return d


# ---- mutations ----------------------------------------------------------------------------
SPECIAL = [*"{}[]()\"'#;:,=*+-/.|\\<>@$%^&~`!? \t\n\r",
    "\x00", "\x01", "\x0b", "\x0c", "\x1b", "\x1c", "\x7f", "\x85", "\xa0", "\u2028", "\u2029", "\ufeff",
    "\u200b", "\u201c", "\u201d", "\u2018", "é", "λ", "名", "😀", "\U0010ffff", "\\n", "\\\"",
]
CHARS = st.one_of(st.sampled_from(SPECIAL), st.characters(exclude_categories=("Cs",)))
TOKEN_POOL = [
    "circuit", "var", "leaf", "prod", "sum", "outer", "with", "structure", "import", "const", "data",
    "recipe", "true", "false", "bool", "real", "categorical", "categorical(3)", "bernoulli", "gaussian",
    "indicator", "units", "tie", "p", "probs", "0", "1", "2", "3", "-1", "0.5", "1.5", "-0.0", "1e308",
    "1e-400", "1/0", "0/0", "7/3", "[]", "[0.5, 0.5]", "[[1]]", '""', '"x"', '"../nope.pc"', "x", "x.y",
    "x[0]", "x[0:1]", "a -> b", "{", "}", ";", "*", "+", "=", ",",
]
TOKEN_RE = re.compile(r'[A-Za-z_][A-Za-z0-9_]*|-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|"(?:[^"\\\n]|\\.)*"|\S')
INVALID_UTF8 = [b"\xff", b"\xfe", b"\x80", b"\xc3", b"\xc0\xaf", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                b"\xf8\x88\x80\x80\x80"]


def _lines_op(draw, text: str, op: str) -> str:  # type: ignore[no-untyped-def]
    lines = text.split("\n")
    i = draw(st.integers(0, len(lines) - 1))
    if op == "delete_line":
        del lines[i]
    elif op == "duplicate_line":
        lines.insert(i, lines[i])
    else:
        j = draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


@st.composite
def mutated_text(draw) -> str:  # type: ignore[no-untyped-def]
    text = TEXTS[draw(st.sampled_from(NAMES))]
    ops = draw(st.lists(st.sampled_from([
        "truncate", "delete_line", "duplicate_line", "swap_lines", "insert", "insert", "delete_range",
        "replace_token", "replace_token", "crlf", "join_lines"]), min_size=1, max_size=3))
    for op in ops:
        if op == "truncate":
            text = text[:draw(st.integers(0, len(text)))]
        elif op in ("delete_line", "duplicate_line", "swap_lines"):
            text = _lines_op(draw, text, op)
        elif op == "insert":
            pos = draw(st.integers(0, len(text)))
            text = text[:pos] + "".join(draw(st.lists(CHARS, min_size=1, max_size=8))) + text[pos:]
        elif op == "delete_range":
            pos = draw(st.integers(0, len(text)))
            text = text[:pos] + text[pos + draw(st.integers(1, 30)):]
        elif op == "replace_token":
            tokens = list(TOKEN_RE.finditer(text))
            if tokens:
                tok = draw(st.sampled_from(tokens))
                pool = st.sampled_from(TOKEN_POOL) | st.sampled_from(sorted({t.group() for t in tokens}))
                text = text[:tok.start()] + draw(pool) + text[tok.end():]
        elif op == "crlf":
            text = text.replace("\n", "\r\n")
        elif op == "join_lines":
            text = text.replace("\n", " ")
    return text


@st.composite
def mutants(draw) -> bytes:  # type: ignore[no-untyped-def]
    """Example files, mutated as text and then, sometimes, as bytes."""
    kind = draw(st.sampled_from(["text"] * 6 + ["insert_bytes", "truncate_bytes", "random_bytes", "bad_utf8"]))
    if kind == "random_bytes":
        return draw(st.binary(max_size=300))
    data = draw(mutated_text()).encode("utf-8")
    if kind == "insert_bytes":
        pos = draw(st.integers(0, len(data)))
        data = data[:pos] + draw(st.binary(min_size=1, max_size=8)) + data[pos:]
    elif kind == "truncate_bytes":  # may cut a multi-byte character in two
        data = data[:draw(st.integers(0, len(data)))]
    elif kind == "bad_utf8":
        pos = draw(st.integers(0, len(data)))
        data = data[:pos] + draw(st.sampled_from(INVALID_UTF8)) + data[pos:]
    return data


# ---- properties ------------------------------------------------------------------------------
def test_there_are_examples() -> None:
    assert EXAMPLES, "no examples/*.pc to mutate"


@settings(max_examples=700, **SETTINGS)
@given(data=mutants())
def test_mutant_checks_or_raises_pcdsl_error(workdir: Path, data: bytes) -> None:
    check_contract(workdir / "zz_mutant.pc", data)


@settings(max_examples=150, **SETTINGS)
@given(text=mutated_text(), pos=st.integers(0, 10**6), bad=st.sampled_from(INVALID_UTF8))
def test_invalid_utf8_is_reported_at_the_first_bad_byte(workdir: Path, text: str, pos: int, bad: bytes) -> None:
    pos = min(pos, len(text))  # a character boundary
    prefix = text[:pos]
    data = prefix.encode("utf-8") + bad + text[pos:].encode("utf-8")
    diagnostics = check_contract(workdir / "zz_mutant.pc", data)
    assert [d.code for d in diagnostics] == ["E0005"]
    span = diagnostics[0].span
    assert (span.line, span.column) == (prefix.count("\n") + 1, len(prefix) - (prefix.rfind("\n") + 1) + 1)
    assert f"offset {len(prefix.encode('utf-8'))}" in diagnostics[0].message


@settings(max_examples=300, **SETTINGS)
@given(data=mutants())
def test_snippet_shows_the_reported_line(workdir: Path, data: bytes) -> None:
    """The rendered source line is the line the location names (lines end at '\\n' or '\\r\\n')."""
    path = workdir / "zz_mutant.pc"
    path.write_bytes(data)
    try:
        check_file(path)
        return
    except PcdslError as exc:
        diagnostics = exc.diagnostics
    for d in diagnostics:
        span = d.span
        if span.source is None or not 1 <= span.line <= len(span.source.text.split("\n")):
            continue  # the contract test reports these
        raw = span.source.text.split("\n")[span.line - 1].removesuffix("\r").replace("\t", " ")
        if len(raw) > 120:  # long lines are windowed
            continue
        shown = "".join(ch if ch.isprintable() else "\N{REPLACEMENT CHARACTER}" for ch in raw)
        assert f"\n{span.line} | {shown}\n" in render(d) + "\n", \
            f"{d.code} at line {span.line} should show {shown!r}; rendered:\n{render(d)}"


@settings(max_examples=40, **SETTINGS)
@given(data=mutants())
def test_cli_check_never_reports_an_internal_error(workdir: Path, data: bytes) -> None:
    path = workdir / "zz_mutant.pc"
    path.write_bytes(data)
    rc, err = run_cli(path)
    assert rc in (0, 1), f"exit {rc}: {err[-2000:]}"


# ---- fixed hostile inputs -----------------------------------------------------------------------
TINY_LIKE = """circuit t {
  var a, b : bool
  leaf la = bernoulli(a, p = 0.2)
  leaf lb = bernoulli(b, p = 0.5)
  prod root = la * lb
}
"""
HOSTILE = {
    "empty": b"",
    "only_newlines": b"\n\n\n",
    "only_bom": "\ufeff".encode(),
    "nul": b"\x00",
    "lone_brace": b"}",
    "unclosed": b"circuit c {\n",
    "deep_list": ("const x = " + "[" * 5000 + "1" + "]" * 5000 + "\n").encode(),
    "deep_call": ("const x = " + "f(" * 5000 + "1" + ")" * 5000 + "\n").encode(),
    "long_const_chain": ("".join(f"const c{i} = c{i + 1}\n" for i in range(5000)) + "const c5000 = 1\n"
                         + TINY_LIKE.replace("0.2", "c0")).encode(),
    "huge_leaf_units": TINY_LIKE.replace("p = 0.2)", "p = 0.2) with units = 10000000000").encode(),
    "huge_sum_units": TINY_LIKE.replace("prod root = la * lb",
                                        "prod r = la * lb\n  sum root = r with units = 10000000000").encode(),
    "too_many_variables": TINY_LIKE.replace("var a, b : bool", "var a, b : bool\n  var x[2000, 1000] : bool").encode(),
    "huge_variable_shape": TINY_LIKE.replace("var a, b : bool",
                                             "var a, b : bool\n  var x[10000000000000000000000] : bool").encode(),
    "huge_categorical": TINY_LIKE.replace("var a, b : bool", "var a : bool\n  var b : categorical(10000000000000)")
    .replace("bernoulli(b, p = 0.5)", "categorical(b)").encode(),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input(workdir: Path, name: str) -> None:
    path = workdir / f"zz_hostile_{name}.pc"
    check_contract(path, HOSTILE[name])
    rc, err = run_cli(path)
    assert rc in (0, 1), f"exit {rc}: {err[-2000:]}"


def test_empty_file_is_fine(workdir: Path) -> None:
    path = workdir / "zz_empty.pc"
    assert check_contract(path, b"") == ()
    assert run_cli(path)[0] == 0


def _ten_mb(kind: str) -> bytes:
    size = 10 * 2**20
    head = (TEXTS[NAMES[0]] if NAMES else TINY_LIKE).encode("utf-8")
    if kind == "comment_lines_then_error":  # ~140k lines, then a syntax error on the last one
        line = b"# " + b"padding " * 9 + b"\n"
        return head + line * ((size - len(head)) // len(line)) + b"circuit oops {"
    if kind == "one_long_comment_line":  # valid: a 10 MB comment without a newline
        return head + b"# " + b"x" * (size - len(head) - 2)
    # random printable text, seeded: a lexer error early, spans on a huge line
    import random
    rng = random.Random(1234)
    alphabet = "abcdefghij {}[]()=*+,;:#\"0123456789\n"
    return head + "".join(rng.choice(alphabet) for _ in range(size // 8)).encode() * 8


@pytest.mark.parametrize("kind", ["comment_lines_then_error", "one_long_comment_line", "random_text"])
def test_ten_megabyte_file(workdir: Path, kind: str) -> None:
    data = _ten_mb(kind)
    assert len(data) >= 10 * 2**20 - 64 and len(data) <= MAX_FILE_BYTES
    path = workdir / "zz_big.pc"
    diagnostics = check_contract(path, data)
    if kind == "comment_lines_then_error":
        assert [d.code for d in diagnostics] == ["E0003"]
        assert diagnostics[0].span.line == data.count(b"\n") + 1
    if kind == "one_long_comment_line":
        assert not any(d.is_error for d in diagnostics)


def test_file_over_the_size_limit(workdir: Path) -> None:
    path = workdir / "zz_huge.pc"
    diagnostics = check_contract(path, b"# x\n" * (MAX_FILE_BYTES // 4 + 1))
    assert [(d.code, d.span.line, d.span.column) for d in diagnostics] == [("E0006", 1, 1)]
    rc, _ = run_cli(path)
    assert rc == 1
