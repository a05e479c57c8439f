"""Shared test setup: every RNG seeded, tolerances in one place, paths."""

from __future__ import annotations

import os
import random
from pathlib import Path

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
