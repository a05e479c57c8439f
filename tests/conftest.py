"""Shared test setup: every RNG seeded, tolerances in one place, paths."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# The suite runs torch and numba in one process: numba's default OpenMP threads and torch's would
# spin beside each other and slow the torch tests down many times over (see README, Backends).
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ATOL = 1e-9  # float64 comparisons


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Learned Chow-Liu trees are cached on disk: tests (and the commands they run) keep theirs
    in a temporary folder, not in the user's ~/.cache."""
    os.environ["PCDSL_CACHE"] = str(tmp_path_factory.mktemp("pcdsl-cache"))


@pytest.fixture
def in_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run with the repository root as working directory, so paths print relative."""
    monkeypatch.chdir(ROOT)
    return ROOT


def require_dot() -> bool:
    """CI sets PCDSL_REQUIRE_DOT=1 so that missing graphviz fails instead of skipping."""
    return bool(os.environ.get("PCDSL_REQUIRE_DOT"))


def codes_of_files(files: list[tuple[str, str]], folder: Path) -> set[str]:
    """The codes `pcdsl check` gives the first circuit file of `files` ((extension, text) pairs,
    written side by side as example.EXT, so a .vtree sits beside its circuit); a .vtree alone is
    checked when there is no circuit file."""
    from pcdsl.diagnostics import PcdslError
    from pcdsl.io.formats import check_path

    for extension, text in files:
        (folder / f"example.{extension}").write_text(text)
    main = next((e for e, _ in files if e != "vtree"), "vtree")
    try:
        checked = check_path(folder / f"example.{main}")
    except PcdslError as exc:
        return {d.code for d in exc.diagnostics}
    return {w.code for w in checked.warnings}


def codes_raised(python: str) -> set[str]:
    """The codes of the pcdsl error that running `python` (our own example text) raises; files it
    writes land in the working directory, so tests run it in a temporary one."""
    from pcdsl.diagnostics import PcdslError

    try:
        exec(python, {})
    except PcdslError as exc:
        return {d.code for d in exc.diagnostics}
    return set()


class Interrupting:
    """Wraps a function so that its `at`-th call raises KeyboardInterrupt (a kill mid-run);
    `calls` counts the calls, and setting it back lets a resumed run count afresh."""

    def __init__(self, function: Callable[..., Any], at: int) -> None:
        self.function, self.at, self.calls = function, at, 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.function(*args)
