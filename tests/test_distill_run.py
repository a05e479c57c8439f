"""Distillation recipes end to end on a tiny synthetic image set, as a user runs them:
`pcdsl check` diagnostics, `pcdsl run` with each teacher, caching and resuming, and the
distilled model answering queries from its model file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pcdsl.cli import main
from pcdsl.io.model import load_model
from pcdsl.learn.train import Trainer

TRAIN_STEPS = ("counting(pseudocount = 0.1); patch_em(epochs = 2, batch = 128); latent_em(epochs = 2, batch = 32); "
               "top_em(epochs = 1, batch = 32); em(epochs = 2, batch = 16, step = 0.2)")


def _images(seed: int, n: int) -> np.ndarray:
    """8x8 grey images: each 4x4 quadrant is one of three textures, plus noise."""
    rng = np.random.default_rng(seed)
    textures = np.stack([np.full((4, 4), 30), np.tile([[200, 60]], (4, 2)), np.tile([[90], [220]], (2, 4))])
    quads = textures[rng.integers(0, 3, (n, 4))]  # (n, 4, 4, 4)
    images = np.concatenate([np.concatenate([quads[:, 0], quads[:, 1]], axis=2),
                             np.concatenate([quads[:, 2], quads[:, 3]], axis=2)], axis=1)
    noisy = images + rng.integers(-8, 9, images.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _recipe(tmp: Path, teacher: str = "pixels()", extra: str = "", latents: str = "clusters = 4",
            train: str = TRAIN_STEPS) -> Path:
    np.save(tmp / "train.npy", _images(0, 96))
    np.save(tmp / "test.npy", _images(1, 24))
    path = tmp / "tiny.pc"
    path.write_text(f"""
recipe tiny {{
  data    = images("train.npy", test = "test.npy", valid = 16)
  patches = grid(x, 4, 4)
  teacher = {teacher}
  latents = kmeans(teacher.features, {latents})
  model   = hclt(over = latents, hidden = 4) with patch_pc = hclt(hidden = 2, shared = true)
  train   {{ {train} }}
  report  bpd(test), samples(8), inpaint(test, mask = left_half, count = 4)
  {extra}
}}
""")
    return path


def _run(path: Path, out: Path) -> dict:
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("teacher", ["pixels()", "vqvae(codes = 8, dim = 8, epochs = 1)", "mae(dim = 8, epochs = 1)"])
def test_recipe_runs_end_to_end_with_each_teacher(tmp_path: Path, teacher: str) -> None:
    report = _run(_recipe(tmp_path, teacher), tmp_path / "run")
    for key in ("test_bpd", "lvd_bound_test_bpd", "parameters", "seconds", "peak_memory_mib"):
        assert key in report
    assert 0 < report["test_bpd"] < 8
    # the LVD bound is a lower bound on log p(x): its bpd can only be larger
    assert report["lvd_bound_test_bpd"] >= report["test_bpd"] - 1e-9
    if teacher.startswith("vqvae"):
        assert 0 < report["teacher_test_bpd"] < 16
    for picture in ("samples.png", "inpaint.png"):
        assert (tmp_path / "run" / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the model file is an ordinary model: eval on the test images gives the reported figure
    graph, params = load_model(tmp_path / "run" / "model.safetensors")
    import pcdsl

    model = pcdsl.compile(graph, "numba", params=params, dtype="float64")
    test = np.load(tmp_path / "test.npy").reshape(24, -1).astype(np.float64)
    assert abs(-np.mean(model.log_prob(test)) / (64 * np.log(2)) - report["test_bpd"]) < 1e-3


def test_a_users_own_encoder_is_a_teacher(tmp_path: Path) -> None:
    """`module("pkg.mod:factory", weights = "file")`: weights relative to the recipe's file."""
    from safetensors.torch import save_file
    from teacher_module_example import make_encoder

    save_file(make_encoder().state_dict(), str(tmp_path / "encoder.safetensors"))
    teacher = 'module("teacher_module_example:make_encoder", weights = "encoder.safetensors")'
    report = _run(_recipe(tmp_path, teacher), tmp_path / "run")
    assert 0 < report["test_bpd"] <= report["lvd_bound_test_bpd"] + 1e-9


def test_progressive_growing_runs_end_to_end(tmp_path: Path) -> None:
    path = _recipe(tmp_path, latents="clusters = 2) | grow(to = 5, rounds = 2, workers = 1")
    report = _run(path, tmp_path / "run")
    assert report["latent_states"] == 5 and report["clusters"] == 2
    assert report["lvd_bound_test_bpd"] >= report["test_bpd"] - 1e-9
    assert sum(report["growing"]["heads"]) == 5
    graph, params = load_model(tmp_path / "run" / "model.safetensors")
    import pcdsl

    model = pcdsl.compile(graph, "torch", params=params, dtype="float64")
    test = np.load(tmp_path / "test.npy").reshape(24, -1).astype(np.float64)
    assert abs(-np.mean(model.log_prob(test)) / (64 * np.log(2)) - report["test_bpd"]) < 1e-3
    _run(path, tmp_path / "run")  # every stage cached, growing included


def test_a_second_run_uses_every_cached_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _recipe(tmp_path)
    first = _run(path, tmp_path / "run")
    capsys.readouterr()
    second = _run(path, tmp_path / "run")
    said = capsys.readouterr().out
    for stage in ("teacher", "latents", "patches", "top", "distilled"):
        assert f"{stage}: cached" in said
    assert second["test_bpd"] == first["test_bpd"]


def _same_model(a: Path, b: Path) -> None:
    _, first = load_model(a / "model.safetensors")
    _, second = load_model(b / "model.safetensors")
    for group, w in first.weights.items():
        np.testing.assert_array_equal(second.weights[group], w)
    for group, p in first.inputs.items():
        for key, value in p.items():
            np.testing.assert_array_equal(second.inputs[group][key], value)


PATIENT = TRAIN_STEPS.replace("em(epochs = 2, batch = 16, step = 0.2)",
                              "em(epochs = 5, batch = 16, step = 0.5, patience = 1); full_em(epochs = 2)")


@pytest.mark.parametrize("kill_at", [2, 6, 8, 9])
def test_a_killed_run_resumes_to_the_same_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                kill_at: int) -> None:
    """Killed after the `kill_at`-th epoch of any fit (patch EM, top level, soft evidence, EM
    with early stopping, full-batch EM), a run resumes to the model of an uninterrupted one."""
    path = _recipe(tmp_path, train=PATIENT)
    _run(path, tmp_path / "whole")
    calls = {"n": 0}
    original = Trainer._select

    def dies(self, record):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise KeyboardInterrupt
        return original(self, record)

    monkeypatch.setattr(Trainer, "_select", dies)
    assert main(["run", str(path), "--out", str(tmp_path / "killed"), "-q"]) != 0  # "pcdsl: interrupted"
    monkeypatch.setattr(Trainer, "_select", original)
    _run(path, tmp_path / "killed")
    _same_model(tmp_path / "whole", tmp_path / "killed")


def test_a_run_killed_while_growing_keeps_its_finished_clusters_and_time(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import pcdsl.distill.growing as growing

    from conftest import Interrupting

    path = _recipe(tmp_path, latents="clusters = 2) | grow(to = 5, rounds = 2, workers = 1")
    _run(path, tmp_path / "whole")
    dies = Interrupting(growing.grow_cluster, at=2)

    monkeypatch.setattr(growing, "grow_cluster", dies)
    assert main(["run", str(path), "--out", str(tmp_path / "killed"), "-q"]) != 0
    state = json.loads((tmp_path / "killed" / "stages.json").read_text())
    assert "growing" not in state["keys"] and state["attempts"]["growing"]["seconds"] == 0
    dies.calls = -100
    report = _run(path, tmp_path / "killed")
    assert dies.calls == -99  # only the cluster the killed run had not finished
    _same_model(tmp_path / "whole", tmp_path / "killed")
    assert report["seconds"]["growing"] > 0 and not list((tmp_path / "killed").glob("growing-*"))
    assert "attempts" not in report and json.loads((tmp_path / "killed" / "stages.json").read_text())["attempts"] == {}


@pytest.mark.parametrize("fault", ["write=em.json:3", "batch:20", "write=teacher.safetensors:1"])
def test_a_sigkilled_distillation_resumes_to_the_same_files(tmp_path: Path, fault: str) -> None:
    """SIGKILL while a fit's state is written (its new checkpoint is on disk), inside a
    mini-batch epoch (checkpoints after every mini-batch), and while a stage's output is written."""
    from tiny_debd import pcdsl

    path = _recipe(tmp_path, train=PATIENT)
    _run(path, tmp_path / "whole")
    killed = tmp_path / "killed"
    assert pcdsl("run", str(path), "--out", str(killed), "-q", fault=fault).returncode == -9
    assert pcdsl("run", str(path), "--out", str(killed), "-q").returncode == 0
    _same_model(tmp_path / "whole", killed)
    assert (killed / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()


def test_the_imagenet32_example_runs_on_a_tiny_synthetic_npz(tmp_path: Path) -> None:
    """examples/lvd_imagenet32.pc as shipped (crops, YCoCg-R, the official .npz layout), with the
    sizes cut down so that it runs in seconds."""
    from test_images import write_imagenet

    from conftest import EXAMPLES

    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "imagenet32"
    folder.mkdir(parents=True)
    smooth = rng.integers(0, 256, (30, 4, 4, 3)).repeat(8, axis=1).repeat(8, axis=2)
    write_imagenet(folder / "train_data_batch_1.npz", smooth[:24].astype(np.uint8))
    write_imagenet(folder / "val_data.npz", smooth[24:].astype(np.uint8))
    text = (EXAMPLES / "lvd_imagenet32.pc").read_text()
    for old, new in (("valid = 10000", "valid = 4"), ("codes = 256, epochs = 3", "codes = 8, dim = 8, epochs = 1"),
                     ("clusters = 128", "clusters = 4"), ("hidden = 32", "hidden = 2"), ("hidden = 8", "hidden = 1"),
                     ("rows = 400000", "rows = 2000"), ("rows = 20000", "rows = 16"), ("samples(64)", "samples(4)")):
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "lvd_imagenet32.pc"
    path.write_text(text)
    report = _run(path, tmp_path / "run")
    assert report["transform"] == "ycocg_r" and report["patches"] == 16 and report["patch_dims"] == 48
    assert 0 < report["test_bpd"] <= report["lvd_bound_test_bpd"] + 1e-9
    graph, _ = load_model(tmp_path / "run" / "model.safetensors")
    assert len(graph.variables) == 16 * 16 * 3  # bits per dimension count the crop's values
    assert graph.colour == "ycocg_r"  # so that pictures of its samples come out in RGB by default
    model = str(tmp_path / "run" / "model.safetensors")
    for name, extra in (("default.png", []), ("explicit.png", ["--colour", "ycocg_r"])):
        assert main(["sample", model, "-n", "4", "--seed", "1", "-o", str(tmp_path / name), *extra]) == 0
    assert (tmp_path / "default.png").read_bytes() == (tmp_path / "explicit.png").read_bytes()


def test_bad_recipes_are_diagnosed_at_check_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _recipe(tmp_path)
    text = path.read_text()
    cases = {
        "grid(x, 4, 4)": ("grid(x, 3, 4)", "do not tile"),
        "latents = kmeans(teacher.features, clusters = 4)": (
            "latents = kmeans(teacher.features, clusters = 9999)", "clusters but only"),
        "teacher = pixels()": ("teacher = vae()", "unknown"),
        "clusters = 4)": ("clusters = 4) | grow(to = 3)", "fewer heads"),
        "model   = hclt(over = latents, hidden = 4)": ("model   = fully_factorized(over = latents)", "an HCLT"),
        "  patches = grid(x, 4, 4)": ("  patches = grid(x, 4, 4)\n  transform = ycocg_r()", "needs RGB"),
        "counting(pseudocount = 0.1);": ("counting(pseudocount = 0.1); sgd(epochs = 1);", "EM steps"),
    }
    for old, (new, words) in cases.items():
        path.write_text(text.replace(old, new))
        assert main(["check", str(path)]) == 1
        err = capsys.readouterr().err
        assert words in err and "tiny.pc:" in err, err
    # images that are not there yet: a warning at check time, a clear error from `pcdsl run`
    path.write_text(text.replace('"train.npy"', '"missing.npy"'))
    assert main(["check", str(path)]) == 0
    assert "missing.npy" in capsys.readouterr().err
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "-q"]) == 1
    assert "missing.npy" in capsys.readouterr().err
