"""HCLT structure learning on a seeded subsample, and the on-disk cache of learned trees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_structures import build, correlated_data

from pcdsl.io.cache import cache_dir
from pcdsl.ir.dump import dump
from pcdsl.structures import chow_liu
from pcdsl.structures.chow_liu import learn_trees, subsample_rows


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[int]:
    """A private cache, and the number of rows of each mutual-information computation."""
    monkeypatch.setenv("PCDSL_CACHE", str(tmp_path / "cache"))
    seen: list[int] = []
    real = chow_liu.mutual_information

    def counting(columns: np.ndarray, *args: object) -> np.ndarray:
        seen.append(len(columns))
        return real(columns, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(chow_liu, "mutual_information", counting)
    return seen


def test_second_build_hits_the_cache_and_is_identical(calls: list[int], tmp_path: Path) -> None:
    data = correlated_data(400, 7, 4, seed=3)
    first, _ = build("hclt", 7, np.arange(7), hidden=3, trees=2, data=data)
    assert calls == [400]
    files = list((tmp_path / "cache" / "chow_liu").glob("*.json"))
    assert len(files) == 1 and len(json.loads(files[0].read_text())) == 2
    second, _ = build("hclt", 7, np.arange(7), hidden=3, trees=2, data=data)
    assert calls == [400]  # no new computation
    assert dump(second) == dump(first)
    build("hclt", 7, np.arange(7), hidden=3, trees=2, data=data, bins=2)  # other arguments: a new entry
    data[0, 0] = (data[0, 0] + 1) % 4
    build("hclt", 7, np.arange(7), hidden=3, trees=2, data=data)  # other rows: a new entry
    assert calls == [400, 400, 400]


def test_a_damaged_cache_entry_is_recomputed(calls: list[int], tmp_path: Path) -> None:
    data = correlated_data(200, 5, 3, seed=1)
    trees = learn_trees(data, np.full(5, 3))
    entry = next((tmp_path / "cache" / "chow_liu").glob("*.json"))
    for damage in ("not json", "[[[0, 9]]]", "[[[1, 0], [0, 2], [0, 3], [0, 4]]]"):
        entry.write_text(damage)
        assert learn_trees(data, np.full(5, 3)) == trees
    assert len(calls) == 4


def test_cache_off(monkeypatch: pytest.MonkeyPatch, calls: list[int], tmp_path: Path) -> None:
    monkeypatch.setenv("PCDSL_CACHE", "off")
    assert cache_dir() is None
    data = correlated_data(100, 4, 3)
    learn_trees(data, np.full(4, 3))
    learn_trees(data, np.full(4, 3))
    assert calls == [100, 100] and not (tmp_path / "cache").exists()


def test_default_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PCDSL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "pcdsl"


def test_tree_learned_on_a_seeded_subsample(calls: list[int]) -> None:
    data = correlated_data(6000, 4, 3, seed=2)
    build("hclt", 4, np.arange(4), hidden=2, data=data)
    assert calls == [5000]  # the default subsample
    build("hclt", 4, np.arange(4), hidden=2, data=data, subsample=0)
    build("hclt", 4, np.arange(4), hidden=2, data=data, subsample=100, seed=1)
    assert calls == [5000, 6000, 100]
    rows = subsample_rows(data, 100, seed=1)
    np.testing.assert_array_equal(rows, subsample_rows(data, 100, seed=1))
    assert not np.array_equal(rows, subsample_rows(data, 100, seed=2))
    assert subsample_rows(data, 7000, seed=0) is data
    with pytest.raises(ValueError, match="'subsample' must be an integer >= 0"):
        build("hclt", 4, np.arange(4), data=data, subsample=-1)
