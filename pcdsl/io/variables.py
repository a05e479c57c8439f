"""Variables of the line-based formats: 1-based in files, 0-based data columns in pcdsl.

The formats number variables from 1 and say nothing else about them, so a file's variable ``v``
becomes data column ``v - 1``, named ``x[v - 1]``, with the domain its leaves imply. pcdsl's own
writers add comments that other tools skip and pcdsl reads back, so names and domains survive a
round trip::

    c pcdsl-circuit tiny
    c pcdsl-variable 3 categorical(3) c
"""

from __future__ import annotations

import re

from pcdsl.diagnostics import Diagnostic, Source, error
from pcdsl.io.textformat import token_span
from pcdsl.ir.graph import BOOL, REAL, Domain, Variable

_DOMAIN = re.compile(r"^(bool|real|categorical\((\d+)\))$")
MAX_VARIABLES = 1 << 24


def default_name(index: int) -> str:
    return f"x[{index}]"


def domain_text(domain: Domain) -> str:
    return str(domain)


def parse_domain(text: str) -> Domain | None:
    match = _DOMAIN.match(text)
    if match is None:
        return None
    if match.group(2) is not None:
        size = int(match.group(2))
        return Domain("categorical", size) if size >= 1 else None
    return BOOL if text == "bool" else REAL


def metadata_lines(name: str, variables: tuple[Variable, ...]) -> list[str]:
    """The comments that carry a circuit's name and its variables' names and domains."""
    out = [f"c pcdsl-circuit {name}"]
    out += [f"c pcdsl-variable {v.index + 1} {domain_text(v.domain)} {v.name}" for v in variables]
    return out


def read_metadata(source: Source, meta: list[tuple[int, str]], problems: list[Diagnostic]
                  ) -> tuple[str | None, dict[int, tuple[Domain, str, int]]]:
    """(circuit name, {0-based variable: (domain, name, line)}) from a file's pcdsl comments."""
    name = None
    found: dict[int, tuple[Domain, str, int]] = {}
    for number, line in meta:
        words = line.split(" ", 4)
        if words[1] == "pcdsl-circuit" and len(words) >= 3:
            name = line.split(" ", 2)[2].strip() or None
        elif words[1] == "pcdsl-variable":
            index = words[2] if len(words) > 2 else ""
            domain = parse_domain(words[3]) if len(words) > 3 else None
            if not index.isdigit() or not 1 <= int(index) <= MAX_VARIABLES or domain is None or len(words) < 5:
                problems.append(error("E0709", "a pcdsl-variable comment needs a variable (from 1), a domain "
                                      "(bool, real or categorical(K)) and a name", token_span(source, number),
                                      help="e.g. 'c pcdsl-variable 3 categorical(4) x[2]'"))
                continue
            found[int(index) - 1] = (domain, words[4].strip(), number)
    return name, found


def make_variables(count: int, domains: dict[int, Domain], meta: dict[int, tuple[Domain, str, int]]
                   ) -> tuple[Variable, ...]:
    """Variables 0..count-1: domains as the leaves imply (bool where nothing is said), names from
    the file's comments where it has them."""
    out = []
    for i in range(count):
        domain = domains.get(i, meta[i][0] if i in meta else BOOL)
        name = meta[i][1] if i in meta else default_name(i)
        out.append(Variable(name, i, domain))
    return tuple(out)
