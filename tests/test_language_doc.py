"""docs/language.md against the checker's own tables: every grammar keyword and literal, domain,
leaf family, node option, template, data source, recipe entry and step (with its full signature)
and diagnostic code is documented with an example, and every example checks: cleanly, or, under
a diagnostic code, producing that code."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pcdsl.codes import CODES
from pcdsl.diagnostics import PcdslError
from pcdsl.frontend import check_text
from pcdsl.syntax.elaborate import DOMAINS, NODE_OPTIONS
from pcdsl.syntax.leaves import FAMILIES
from pcdsl.syntax.recipes import PATCH_PC, TABLES
from pcdsl.syntax.signatures import Signature, param_text
from pcdsl.syntax.sources import SOURCES
from pcdsl.syntax.templates import TEMPLATES

from conftest import EXAMPLES, ROOT, codes_of_files, codes_raised

DOC = ROOT / "docs" / "language.md"
GRAMMAR = ROOT / "grammar" / "pc.lark"
# codes that one file's text cannot produce (a missing, unreadable or huge file, an import chain,
# sums built by the API): their examples are commands, not checked files
NOT_FROM_ONE_TEXT = {"E0004", "E0005", "E0006", "E0007", "E0106", "E0107", "E0211", "E0712"}
FORMAT_FILES = ("jpc", "psdd", "sdd", "vtree")  # examples of the E07xx codes are circuit and vtree files
ENVIRONMENT_WARNINGS = {"W0601"}  # image data sets this machine may not have
# codes that calls and commands produce, not a file's text: their examples are Python (run: it must
# raise the code) and command lines (`$ pcdsl ...`, run: they must print it), in a folder holding
# the c.pc of the section's introduction
FROM_CALLS = {"E0008"} | {code for code in CODES if code.startswith("E08")}


@dataclass
class Section:
    path: tuple[str, ...]  # the titles of its headings, outermost first
    text: list[str] = field(default_factory=list)
    blocks: list[tuple[str, str]] = field(default_factory=list)  # (language, code)


def _sections() -> dict[tuple[str, ...], Section]:
    sections: dict[tuple[str, ...], Section] = {}
    path: list[str] = []
    current = sections.setdefault((), Section(()))
    fence: tuple[str, list[str]] | None = None
    for line in DOC.read_text().splitlines():
        if fence is not None:
            if line.startswith("```"):
                current.blocks.append((fence[0], "\n".join(fence[1]) + "\n"))
                fence = None
            else:
                fence[1].append(line)
            continue
        if line.startswith("```"):
            fence = (line[3:].strip(), [])
            continue
        heading = re.match(r"^(#{2,4}) (.+)$", line)
        if heading:
            level = len(heading.group(1)) - 1
            path = [*path[:level - 1], heading.group(2).strip()]
            current = sections.setdefault(tuple(path), Section(tuple(path)))
        else:
            current.text.append(line)
    return sections


SECTIONS = _sections()


def _section(*path: str) -> Section:
    assert path in SECTIONS, f"docs/language.md has no section {' > '.join(path)}"
    return SECTIONS[path]


def _documents(section: Section, signature_text: str, call: str) -> None:
    """The section gives the signature in full and an example that makes the call."""
    where = " > ".join(section.path)
    assert signature_text in "\n".join(section.text), f"{where}: the signature `{signature_text}` is missing"
    assert any(lang == "pc" and call in code for lang, code in section.blocks), f"{where}: no example with {call}"


def _check(code: str) -> set[str]:
    """The diagnostic codes a file produces, checked as a file of examples/ (paths resolve there)."""
    try:
        checked = check_text(code, str(EXAMPLES / "language_doc.pc"))
    except PcdslError as exc:
        return {d.code for d in exc.diagnostics}
    return {w.code for w in checked.warnings}


def test_every_grammar_keyword_and_literal_is_documented() -> None:
    rules = [line for line in GRAMMAR.read_text().splitlines() if not re.match(r"^[A-Z_]+:", line)]  # not terminals
    literals = set(re.findall(r'"([^"]+)"', "\n".join(rules)))
    keywords = {lit for lit in literals if lit.isalpha()}
    headings = " ".join(" ".join(path) for path in SECTIONS)
    assert {k for k in keywords if f"`{k}`" not in headings} == set()
    examples = "\n".join(code for s in SECTIONS.values() for lang, code in s.blocks if lang == "pc")
    assert {lit for lit in literals if lit not in examples} == set()
    assert {d for d in DOMAINS if f": {d}" not in examples} == set()


@pytest.mark.parametrize("table, section", [(FAMILIES, "Leaf families"), (TEMPLATES, "Templates"),
                                            (SOURCES, "Data sources")])
def test_every_family_template_and_source_is_documented(table: dict[str, Signature], section: str) -> None:
    for name, sig in table.items():
        _documents(_section(section, f"`{name}`"), sig.text(), f"{name}(")


def test_every_node_option_is_documented() -> None:
    for kind, sig in NODE_OPTIONS.items():
        section = _section("Circuits", "Options (`with`)", f"`{kind} ... with`")
        if sig.params:
            _documents(section, "`with " + ", ".join(param_text(p) for p in sig.params) + "`", "with")
        else:
            assert "take no options" in "\n".join(section.text)


def test_every_recipe_entry_and_step_is_documented() -> None:
    for key, table in TABLES.items():
        entry = _section("Recipes", f"`{key}`")
        if table is SOURCES:  # the data sources' own section documents them
            assert "[data sources](#data-sources)" in "\n".join(entry.text)
            continue
        for name, sig in table.items():
            _documents(_section("Recipes", f"`{key}`", f"`{name}`"), sig.text(), f"{name}(")
    for name, sig in PATCH_PC.items():
        _documents(_section("Recipes", "`model`", f"`patch_pc = {name}`"), sig.text(), f"patch_pc = {name}(")


def test_every_example_checks() -> None:
    failures = []
    for path, section in SECTIONS.items():
        if path[:1] == ("Diagnostic codes",):
            continue
        for lang, code in section.blocks:
            found = _check(code) - ENVIRONMENT_WARNINGS if lang == "pc" else set()
            if found:
                failures.append((" > ".join(path), sorted(found), code))
    assert failures == []


def _calls_produce(code: str, section: Section, folder: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    """Every Python example of the section raises `code`; every `$ pcdsl ...` line prints it."""
    from pcdsl.cli import main

    (circuit,) = [text for lang, text in _section("Diagnostic codes").blocks if lang == "pc"]
    assert _check(circuit) == set()
    (folder / "c.pc").write_text(circuit)
    monkeypatch.chdir(folder)
    assert {lang for lang, _ in section.blocks} <= {"python", "text"}
    assert any(lang == "python" for lang, _ in section.blocks), f"{code}: no Python example"
    for lang, text in section.blocks:
        if lang == "python":
            assert code in codes_raised(text), f"{code}: the Python example raises {sorted(codes_raised(text))}"
            continue
        commands = [line[2:] for line in text.splitlines() if line.startswith("$ pcdsl ")]
        assert commands, f"{code}: a text block without a `$ pcdsl` command"
        for command in commands:
            main(shlex.split(command)[1:])
            err = capsys.readouterr().err
            assert f"error[{code}]" in err, f"{code}: `{command}` prints {err!r}"


@pytest.mark.parametrize("code", sorted(CODES))
def test_every_diagnostic_code_has_an_example_that_produces_it(code: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    section = _section("Diagnostic codes", code)
    assert CODES[code][0].upper() + CODES[code][1:] in "\n".join(section.text), "the catalogue's text"
    if code in FROM_CALLS:
        _calls_produce(code, section, tmp_path, monkeypatch, capsys)
        return
    files = [(lang, text) for lang, text in section.blocks if lang in FORMAT_FILES]
    if files:
        assert code in codes_of_files(files, tmp_path), f"{code}: the example files produce another code"
        return
    examples = [text for lang, text in section.blocks if lang == "pc"]
    if code in NOT_FROM_ONE_TEXT:
        assert not examples and any(lang == "text" for lang, _ in section.blocks)
        return
    assert examples, f"{code}: no example"
    for example in examples:
        assert code in _check(example), f"{code}: the example produces {sorted(_check(example))}"


def test_the_doc_documents_nothing_that_is_not_there() -> None:
    """No stale sections: every documented code, family, template, source and step exists."""
    documented_codes = {path[1] for path in SECTIONS if len(path) == 2 and path[0] == "Diagnostic codes"}
    assert documented_codes == set(CODES)
    for section, table in (("Leaf families", FAMILIES), ("Templates", TEMPLATES), ("Data sources", SOURCES)):
        names = {path[1].strip("`") for path in SECTIONS if len(path) == 2 and path[0] == section}
        assert names == set(table), section
    steps = {path[2].strip("`") for path in SECTIONS if len(path) == 3 and path[0] == "Recipes"}
    expected = {n for key, t in TABLES.items() if t is not SOURCES for n in t} | {f"patch_pc = {n}" for n in PATCH_PC}
    assert steps == expected
