"""The README's quick start stays true: two commands, and CI runs the same test command."""

from __future__ import annotations

import re

from conftest import ROOT


def _quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```sh\n(.*?)```", text, re.S)
    assert block, "README has no quick-start sh block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_has_two_commands() -> None:
    commands = _quick_start()
    assert len(commands) == 2
    assert "pip install" in commands[0] and "pcdsl demo" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command() -> None:
    test_command = _quick_start()[1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert any(line.split("#")[0].strip() == test_command for line in ci.splitlines())
