"""`pcdsl plot`: learning curves from run directories, drawn to a PNG that opens at its size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pcdsl.cli import main
from pcdsl.learn.train import Epoch
from pcdsl.plot import PlotError, metrics_files, plot_curves, read_curve, run_curves

WIDTH, HEIGHT = 750, 450  # the figure: 7.5 x 4.5 inches at 100 dpi


def _write_metrics(path: Path, epochs: list[Epoch]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e.as_dict(), sort_keys=True) + "\n" for e in epochs))  # as run.py writes


def _epochs(n: int, valid: bool = True) -> list[Epoch]:
    return [Epoch(stage=int(i >= n // 2), epoch=i % (n // 2), step=0.1, train_ll=-10 + i, seconds=0.1,
                  valid_ll=-10.5 + i if valid else None) for i in range(n)]


def _open(path: Path) -> tuple[int, int]:
    image = pytest.importorskip("PIL.Image")
    with image.open(path) as picture:
        picture.load()  # decodes every pixel: a truncated file fails here
        return picture.size


def test_plot_of_a_real_run_and_a_second_one_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "tr.npy", rng.integers(0, 256, size=(40, 4, 4, 1), dtype=np.uint8))
    np.save(tmp_path / "te.npy", rng.integers(0, 256, size=(6, 4, 4, 1), dtype=np.uint8))
    recipe = tmp_path / "r.pc"
    recipe.write_text('recipe small {\n  data = images("tr.npy", test = "te.npy", valid = 8)\n'
                      '  model = hclt(over = data, hidden = 2)\n'
                      '  train { em(epochs = 2, batch = 8); full_em(epochs = 2) }\n  report bpd(test)\n}\n')
    run = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(run), "-q"]) == 0
    _write_metrics(tmp_path / "other" / "metrics.jsonl", _epochs(6))
    out = tmp_path / "curves.png"
    capsys.readouterr()
    assert main(["plot", str(run), str(tmp_path / "other"), "-o", str(out), "--title", "two runs"]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert _open(out) == (WIDTH, HEIGHT)
    curves = run_curves([run, tmp_path / "other"])
    assert [c.label for c in curves] == ["run", "other"]
    assert len(curves[0].train) == len((run / "metrics.jsonl").read_text().splitlines())
    assert curves[0].stage_starts == (2,) and curves[1].stage_starts == (3,)  # em -> full_em


def test_distillation_runs_plot_their_model_stages(tmp_path: Path) -> None:
    run = tmp_path / "lvd"
    for stage in ("patch_3", "top", "em"):
        _write_metrics(run / f"{stage}.metrics.jsonl", _epochs(4))
    assert [p.name for p in metrics_files(run)] == ["top.metrics.jsonl", "em.metrics.jsonl"]
    assert [c.label for c in run_curves([run])] == ["lvd: top", "lvd: em"]
    only_patches = tmp_path / "early"
    _write_metrics(only_patches / "patch_0.metrics.jsonl", _epochs(2, valid=False))
    curve = run_curves([only_patches])[0]
    assert curve.label == "early: patch_0" and curve.valid == (None, None)
    pytest.importorskip("matplotlib")
    assert _open(plot_curves([curve], tmp_path / "early.png")) == (WIDTH, HEIGHT)


def test_bad_run_directories_and_files_say_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plot", str(tmp_path / "missing"), "-o", str(tmp_path / "c.png")]) == 2
    assert "missing: not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty"), "-o", str(tmp_path / "c.png")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    bad = tmp_path / "bad" / "metrics.jsonl"
    _write_metrics(bad, _epochs(2))
    bad.write_text(bad.read_text() + '{"epoch": 2, "train_ll": "high"}\n')
    assert main(["plot", str(bad.parent), "-o", str(tmp_path / "c.png")]) == 1
    assert f"{bad}:3: not an epoch record" in capsys.readouterr().err
    _write_metrics(tmp_path / "good" / "metrics.jsonl", _epochs(2))
    assert main(["plot", str(tmp_path / "good"), "-o", str(tmp_path / "c.gif")]) == 2
    assert "unknown picture format 'gif'" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists() and not (tmp_path / "c.gif").exists()
    (tmp_path / "blank" / "metrics.jsonl").parent.mkdir()
    (tmp_path / "blank" / "metrics.jsonl").write_text("\n")
    with pytest.raises(PlotError, match="no epochs recorded yet"):
        read_curve(tmp_path / "blank" / "metrics.jsonl", "blank")


def test_without_matplotlib_the_command_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    _write_metrics(tmp_path / "run" / "metrics.jsonl", _epochs(2))
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert main(["plot", str(tmp_path / "run"), "-o", str(tmp_path / "c.png")]) == 2
    assert "needs matplotlib: pip install 'pcdsl[plot]'" in capsys.readouterr().err
