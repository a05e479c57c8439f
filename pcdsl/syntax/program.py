"""Loading a .pc file with its imports into one Program of top-level definitions."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pcdsl.diagnostics import Note, PcdslError, Sink, Source, error
from pcdsl.syntax import ast
from pcdsl.syntax.parser import decode_source, parse, read_source

Definition = ast.Const | ast.DataDecl | ast.Circuit | ast.Recipe


@dataclass
class Program:
    """Every top-level definition of a file and the files it imports (one namespace)."""

    main: Source
    sources: dict[str, Source] = field(default_factory=dict)
    definitions: dict[str, Definition] = field(default_factory=dict)

    def of_type(self, kind: type) -> dict[str, Definition]:
        return {k: v for k, v in self.definitions.items() if isinstance(v, kind)}

    @property
    def consts(self) -> dict[str, ast.Const]:
        return self.of_type(ast.Const)  # type: ignore[return-value]

    @property
    def data(self) -> dict[str, ast.DataDecl]:
        return self.of_type(ast.DataDecl)  # type: ignore[return-value]

    @property
    def circuits(self) -> dict[str, ast.Circuit]:
        return self.of_type(ast.Circuit)  # type: ignore[return-value]

    @property
    def recipes(self) -> dict[str, ast.Recipe]:
        return self.of_type(ast.Recipe)  # type: ignore[return-value]

    def circuit_names_in_main(self) -> list[str]:
        return [k for k, v in self.circuits.items() if v.span.source is self.main]


def load_program(path: str | Path) -> Program:
    """Parse `path` and everything it imports; raise PcdslError with every problem found."""
    return _Loader().run(read_source(path))


def load_text(text: str, name: str = "<string>") -> Program:
    return _Loader().run(decode_source(name, text.encode("utf-8")))


class _Loader:
    def __init__(self) -> None:
        self.sink = Sink()
        self.stack: list[str] = []  # files being loaded, for import cycles
        self.keys: dict[str, Source] = {}

    def run(self, main: Source) -> Program:
        program = Program(main)
        self._load(program, main, self._key(main.name))
        self.sink.raise_if_errors()
        return program

    @staticmethod
    def _key(name: str) -> str:
        return os.path.realpath(name)

    def _load(self, program: Program, source: Source, key: str) -> None:
        self.keys[key] = source
        program.sources[source.name] = source
        module = parse(source)
        self.stack.append(key)
        try:
            for item in module.items:
                if isinstance(item, ast.Import):
                    self._import(program, source, item)
                else:
                    self._define(program, item)
        finally:
            self.stack.pop()

    def _import(self, program: Program, importer: Source, item: ast.Import) -> None:
        name = os.path.normpath(os.path.join(os.path.dirname(importer.name), item.path.value))
        key = self._key(name)
        if key in self.stack:
            chain = [self.keys[k].name for k in self.stack[self.stack.index(key):]] + [name]
            self.sink.add(error("E0106", f"import cycle: '{item.path.value}' imports this file back",
                                item.span, "cycle: " + " -> ".join(chain),
                                help="move the shared definitions into a third file that both import"))
            return
        if key in self.keys:  # already loaded through another import
            return
        if not os.path.isfile(name):
            self.sink.add(error("E0105", f"cannot import '{item.path.value}': no such file", item.path.span,
                                f"looked for '{name}' (paths are relative to the importing file)"))
            return
        try:
            self._load(program, read_source(name), key)
        except PcdslError as exc:
            for d in exc.diagnostics:
                self.sink.add(d)
            self.sink.add(error("E0107", f"imported file '{item.path.value}' has errors", item.span))

    def _define(self, program: Program, item: Definition) -> None:
        name = item.name
        first = program.definitions.get(name.text)
        if first is not None:
            self.sink.add(error("E0102", f"'{name.text}' is defined twice", name.span,
                                Note("first defined here", first.name.span),
                                help="rename one of the definitions"))
            return
        program.definitions[name.text] = item
