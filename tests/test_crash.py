"""Runs that survive crashes: `pcdsl run` killed with SIGKILL at chosen moments and started
again ends with the model file and report of a run never interrupted, byte for byte; the run
directory is locked, checksummed, and not resumed for another recipe. Kill points are named
crash points (pcdsl.io.faults), so every test is deterministic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_debd import EPOCHS, pcdsl, recipe

from pcdsl.cli import main
from pcdsl.io.rundir import RunDirError, RunLock

# Each entry: where the run is killed, counted from the (re)start of that attempt. With a
# checkpoint after every mini-batch (PCDSL_CHECKPOINT_SECONDS=0) the attempts walk through:
KILLS = (
    "batch:3",  # inside the first mini-batch EM epoch
    "write=train.ckpt:5",  # during a checkpoint write: temporary file on disk, not yet renamed
    "write=train.json:4",  # during a state write (the new checkpoint is there, its state is not)
    "epoch=stopped:1",  # right after the stage that stopped early (patience) saved its state
    "full-batch:1",  # inside a full-batch EM epoch
    "batch:2",  # inside an SGD (Adam) epoch
    "write=model.safetensors:1",  # while the final model file is written
    "finish:1",  # outputs written, state not yet marked finished
)
# the numba backend shares every line of the resume logic: five of the points, one of each kind
NUMBA_KILLS = ("batch:3", "write=train.ckpt:5", "epoch=stopped:1", "full-batch:1", "batch:2")


def _files(out: Path) -> tuple[bytes, bytes]:
    return (out / "model.safetensors").read_bytes(), (out / "report.json").read_bytes()


def _metrics(out: Path) -> list[tuple[int, int, float]]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(m["stage"], m["epoch"], m["valid_ll"]) for m in lines]


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_sigkill_at_any_point_then_restart_gives_identical_files(tmp_path: Path, backend: str) -> None:
    path = recipe(tmp_path)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert pcdsl("run", str(path), "--out", str(whole), "-q", "--backend", backend).returncode == 0
    for point in KILLS if backend == "torch" else NUMBA_KILLS:
        attempt = pcdsl("run", str(path), "--out", str(killed), "-q", "--backend", backend, fault=point)
        assert attempt.returncode == -signal.SIGKILL, (point, attempt.stderr)  # the point was reached
    last = pcdsl("run", str(path), "--out", str(killed), "-q", "--backend", backend)
    assert last.returncode == 0, last.stderr
    assert _files(killed) == _files(whole)
    # the epochs really run, early stop included, each once; valid scores the same to the bit
    assert _metrics(killed) == _metrics(whole) and len(_metrics(whole)) == EPOCHS
    assert not list(killed.glob(".*.*")) and not list(killed.glob("train.ckpt-*"))  # no temporaries left


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_sigkill_at_random_moments_then_restart_gives_identical_files(tmp_path: Path, backend: str) -> None:
    """Killed by a timer (random delays that grow, so that the run gets on) until it finishes:
    wherever the kills land, the files are those of the uninterrupted run."""
    path = recipe(tmp_path)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert pcdsl("run", str(path), "--out", str(whole), "-q", "--backend", backend).returncode == 0
    rng = np.random.default_rng(2026)
    env = {**os.environ, "PCDSL_CHECKPOINT_SECONDS": "0"}
    env.pop("PCDSL_FAULT", None)
    kills = 0
    for attempt in range(60):
        proc = subprocess.Popen([sys.executable, "-m", "pcdsl.cli", "run", str(path), "--out", str(killed), "-q",
                                 "--backend", backend], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert proc.wait(timeout=rng.uniform(2.0, 4.0) + 0.5 * attempt) == 0
            break
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
    assert kills >= 5 and _files(killed) == _files(whole)


def test_the_run_lock_refuses_a_second_run_and_dies_with_its_holder(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path, out = recipe(tmp_path), tmp_path / "run"
    with RunLock(out):
        assert main(["run", str(path), "--out", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert f"the run directory '{out}' is in use by pcdsl (pid {os.getpid()}" in err and "wait for" in err
    # a process killed while it holds the lock leaves nothing stale behind
    holder = subprocess.run([sys.executable, "-c", "import os, signal, sys; from pathlib import Path; "
                             "from pcdsl.io.rundir import RunLock; RunLock(Path(sys.argv[1])).acquire(); "
                             "os.kill(os.getpid(), signal.SIGKILL)", str(out)])
    assert holder.returncode == -signal.SIGKILL
    with RunLock(out):
        pass


def _interrupted(tmp_path: Path) -> tuple[Path, Path]:
    path, out = recipe(tmp_path), tmp_path / "run"
    assert pcdsl("run", str(path), "--out", str(out), "-q", fault="epoch:2").returncode == -signal.SIGKILL
    return path, out


def _refused(path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["run", str(path), "--out", str(out), "-q"]) == 1
    return capsys.readouterr().err


def test_edited_or_truncated_files_are_reported_not_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, out = _interrupted(tmp_path)
    state = json.loads((out / "train.json").read_text())
    checkpoint = out / state["checkpoint"]
    original = checkpoint.read_bytes()
    checkpoint.write_bytes(original[:-10])
    err = _refused(path, out, capsys)
    assert f"{checkpoint.name} has {len(original) - 10} bytes where {len(original)} were written (truncated)" in \
        err and "changed outside pcdsl" in err
    checkpoint.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    assert "was changed after it was written" in _refused(path, out, capsys)
    checkpoint.write_bytes(original)
    metrics = out / "metrics.jsonl"
    intact = metrics.read_text()
    metrics.write_text(intact.replace('"epoch": 0', '"epoch": 7'))
    assert "metrics.jsonl no longer begins with the lines its state counts" in _refused(path, out, capsys)
    # restored, the run goes on; finished, it vouches for its outputs
    metrics.write_text(intact)
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    assert "had finished; its files are intact" in capsys.readouterr().out
    report = out / "report.json"
    report.write_text(report.read_text().replace("-", "+", 1))
    assert "report.json was changed after it was written" in _refused(path, out, capsys)


def test_a_changed_recipe_or_option_is_not_resumed_and_says_what_changed(tmp_path: Path) -> None:
    path, out = _interrupted(tmp_path)
    path.write_text(path.read_text().replace("full_em(epochs = 3)", "full_em(epochs = 5)"))
    attempt = pcdsl("run", str(path), "--out", str(out), "-q")
    assert attempt.returncode == 1
    assert "holds a run of a different recipe or options, so it is not resumed" in attempt.stderr
    assert "full_em(epochs = 3, " in attempt.stderr and "-> " in attempt.stderr
    assert "remove the directory (or choose another --out) to start afresh" in attempt.stderr
    path.write_text(path.read_text().replace("full_em(epochs = 5)", "full_em(epochs = 3)"))
    option = pcdsl("run", str(path), "--out", str(out), "-q", "--dtype", "float64")
    assert option.returncode == 1 and "--dtype: float32 -> float64" in option.stderr
    data = tmp_path / "data" / "tiny" / "tiny.valid.data"
    data.write_text(data.read_text().replace("0", "1", 1))
    changed = pcdsl("run", str(path), "--out", str(out), "-q")
    assert "data (valid split): 200 rows, sha256 " in changed.stderr
    assert "train" not in changed.stderr.split("so it is not resumed")[1].split("Run with")[0].replace(
        "data (valid split)", "")  # only what changed is listed


def _tiny_trainer(kind: str, seed: int = 3):  # type: ignore[no-untyped-def]
    from circuits import random_circuit

    import pcdsl
    from pcdsl import reference
    from pcdsl.learn.train import Stage, Trainer

    graph, params = random_circuit(seed, num_vars=5)
    data = reference.sample(graph, params, 90, seed=1)
    stages = [Stage("em", 2, 20, (0.5, 0.1), patience=5), Stage("sgd", 2, 30, (0.05,), optimizer="adam"),
              Stage("em", 1, 25, (0.3,), rows=60)] if kind == "mixed" else [Stage("full_em", 3, 40)]

    def make() -> Trainer:
        model = pcdsl.compile(graph, "torch", params=params, dtype="float64")
        return Trainer(model, params, data[:60], data[60:], seed=7, progress=False)

    return make, stages


def test_a_trainer_resumed_from_a_snapshot_after_any_mini_batch_ends_the_same() -> None:
    """In-process: a snapshot after every single mini-batch and epoch (through bytes, as on
    disk), restored into a fresh trainer, finishes with the parameters of the uninterrupted run."""
    from pcdsl.learn.checkpoint import decode, encode

    make, stages = _tiny_trainer("mixed")
    snaps: list[bytes] = []
    whole = make()
    whole.on_batch = lambda t: snaps.append(encode(t.snapshot()))
    whole.on_epoch = lambda *_: snaps.append(encode(whole.snapshot()))
    final = whole.run(stages)
    assert len(snaps) == 3 * 2 + 2 * 2 + 3 + 5  # mini-batches (60 rows: 3, 2, 3 per epoch) and epochs
    for data in snaps:
        resumed = make()
        again = resumed.run(stages, resume=decode(data))
        for group, w in final.weights.items():
            np.testing.assert_array_equal(again.weights[group], w)
        for node, p in final.inputs.items():
            for key, value in p.items():
                np.testing.assert_array_equal(again.inputs[node][key], value)
        assert resumed.best is not None and whole.best is not None and resumed.best[0] == whole.best[0]


def test_a_snapshot_keeps_every_bit_of_the_trainer_state() -> None:
    from pcdsl.learn.checkpoint import decode, encode

    make, stages = _tiny_trainer("mixed")
    trainer = make()
    taken = []
    trainer.on_batch = lambda t: taken.append(t.snapshot()) if t.optimizer is not None else None
    trainer.run(stages)
    snap = taken[1]  # inside the Adam stage, after its second step
    back = decode(encode(snap))
    assert back.position == snap.position and back.batch == snap.batch and back.rng == snap.rng
    assert back.train_ll == snap.train_ll and back.step == snap.step
    assert [b.tolist() for b in back.order] == [b.tolist() for b in snap.order]
    assert snap.optimizer is not None and back.optimizer is not None and back.optimizer[1] == snap.optimizer[1] == 2
    for key, value in snap.optimizer[0].items():
        np.testing.assert_array_equal(back.optimizer[0][key], value)
    with pytest.raises(RunDirError, match="not a readable pcdsl checkpoint"):
        decode(b"garbage bytes")
