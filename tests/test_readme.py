"""The README's quick start stays true: two commands, and CI runs the same test command."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

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


def test_python_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """Every ```python block of the README, in order, in one namespace (from a scratch folder that
    sees the repository's examples)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 4
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert "query names no variable 'd' (variables: a, b, c)" in capsys.readouterr().out
    completion = namespace["completion"]
    assert completion.dtype == np.int64 and (completion >= 0).all()  # type: ignore[attr-defined]
    assert (tmp_path / "nltcs.safetensors").exists()
