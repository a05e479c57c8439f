"""Data-parallel training on torch.distributed (gloo, two local workers): the same steps as
one process, after every epoch; only rank 0 writes; `pcdsl eval` sharded; a worker that dies
stops the others, and the run resumes from its checkpoint to the files of an uninterrupted
two-worker run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_debd import EPOCHS, pcdsl, recipe

from pcdsl.io.model import load_model
from pcdsl.launch import launch

from conftest import ROOT

# float64: the workers' flows differ from one process's only in the order of summation
FLOAT64_ATOL = 1e-12
# float32: each worker sums its shard's flows in float32 (one process sums the whole batch), so
# every step differs by float32 rounding of the flows (relative 1e-7), which later steps carry on
# (measured: 1.1e-5 after 13 epochs, some of full steps on 10-row batches; float64: 2.9e-14)
FLOAT32_ATOL = 1e-4

DRIVER = """
import sys
from pathlib import Path

import numpy as np

from pcdsl.frontend import check_file
from pcdsl.learn.parallel import from_environment
from pcdsl.run import run_recipe

path, out, dump, dtype = sys.argv[1:5]
group = from_environment("cpu")
count = [0]


def on_epoch(epoch, params):
    arrays = {f"w/{g}": w for g, w in params.weights.items()}
    arrays.update({f"i/{n}/{k}": v for n, p in params.inputs.items() for k, v in p.items()})
    np.savez(Path(dump) / f"rank{group.rank}-epoch{count[0]}.npz", **arrays)
    count[0] += 1


run_recipe(check_file(path), "tiny", Path(out), dtype=dtype, progress=False, log=lambda *_: None, group=group,
           on_epoch=on_epoch)
"""


def _epochs(dump: Path, rank: int) -> list[dict[str, np.ndarray]]:
    out = []
    for i in range(len(list(dump.glob(f"rank{rank}-epoch*.npz")))):
        with np.load(dump / f"rank{rank}-epoch{i}.npz", allow_pickle=False) as saved:
            out.append({k: saved[k] for k in saved.files})
    return out


@pytest.mark.parametrize(("dtype", "atol"), [("float64", FLOAT64_ATOL), ("float32", FLOAT32_ATOL)])
def test_two_gloo_workers_give_the_parameters_of_one_process_after_every_epoch(tmp_path: Path, dtype: str,
                                                                                atol: float) -> None:
    """EM (mini-batch, early stopping, full-batch) and SGD (Adam) stages."""
    path = recipe(tmp_path)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    solo = subprocess.run([sys.executable, str(driver), str(path), str(tmp_path / "run1"), str(one), dtype],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "WORLD_SIZE": "1"})
    assert solo.returncode == 0, solo.stderr
    assert launch([str(path), str(tmp_path / "run2"), str(two), dtype], 2, program=[sys.executable, str(driver)]) == 0
    single, rank0, rank1 = _epochs(one, 0), _epochs(two, 0), _epochs(two, 1)
    assert len(single) == len(rank0) == len(rank1) == EPOCHS  # the same early stop
    worst = 0.0
    for a, b, c in zip(single, rank0, rank1, strict=True):
        assert a.keys() == b.keys() == c.keys()
        for key in a:
            np.testing.assert_array_equal(b[key], c[key])  # the workers hold the same parameters, bit for bit
            worst = max(worst, float(np.abs(a[key] - b[key]).max()))
    print(f"largest difference from one process, {dtype}: {worst:.3g}")
    assert worst <= atol
    made = [sorted(p.name for p in (tmp_path / run).iterdir()) for run in ("run1", "run2")]
    assert made[0] == made[1]  # rank 0 alone wrote the two-worker run's directory


def _params_close(a: Path, b: Path, atol: float) -> None:
    (_, pa), (_, pb) = load_model(a), load_model(b)
    for group, w in pa.weights.items():
        np.testing.assert_allclose(pb.weights[group], w, rtol=0, atol=atol)
    for node, p in pa.inputs.items():
        for key, value in p.items():
            np.testing.assert_allclose(pb.inputs[node][key], value, rtol=0, atol=atol)


def test_pcdsl_run_nproc_2_trains_like_one_process_and_only_rank_0_writes(tmp_path: Path) -> None:
    path = recipe(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    assert pcdsl("run", str(path), "--out", str(one), "-q", "--dtype", "float64").returncode == 0
    both = pcdsl("run", str(path), "--out", str(two), "-q", "--dtype", "float64", "--nproc", "2")
    assert both.returncode == 0, both.stderr
    assert both.stdout.count("tiny: test loglik = ") == 1  # one worker reports
    _params_close(one / "model.safetensors", two / "model.safetensors", FLOAT64_ATOL)
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    # evaluation sharded over two workers: the same score
    test = tmp_path / "data" / "tiny" / "tiny.test.data"
    scores = [pcdsl("eval", str(two / "model.safetensors"), "--data", str(test), "--dtype", "float64", *extra)
              for extra in ((), ("--nproc", "2"))]
    assert all(s.returncode == 0 for s in scores) and scores[1].stdout.count("average log-likelihood") == 1
    assert scores[0].stdout.replace("\n", "") == scores[1].stdout.replace("\n", "")


def test_a_dead_worker_stops_the_others_and_the_run_resumes_to_the_same_files(tmp_path: Path) -> None:
    path = recipe(tmp_path)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert pcdsl("run", str(path), "--out", str(whole), "-q", "--nproc", "2").returncode == 0
    for fault in ("batch:5@1", "write=train.ckpt:3@0"):  # a worker dies; rank 0 dies inside a checkpoint write
        rank = fault[-1]
        attempt = pcdsl("run", str(path), "--out", str(killed), "-q", "--nproc", "2", fault=fault)
        assert attempt.returncode == 128 + signal.SIGKILL, attempt.stderr
        assert f"worker {rank} of 2 was killed by SIGKILL; stopped the other workers. Run the same command again " \
               "to resume from the last checkpoint." in attempt.stderr
    last = pcdsl("run", str(path), "--out", str(killed), "-q", "--nproc", "2")
    assert last.returncode == 0, last.stderr
    for name in ("model.safetensors", "report.json"):
        assert (killed / name).read_bytes() == (whole / name).read_bytes()


def test_a_worker_that_loses_its_peer_says_so(tmp_path: Path) -> None:
    """Under torchrun (no launcher watching), the surviving worker stops with a clear message."""
    path = recipe(tmp_path)
    from pcdsl.launch import free_port

    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "PCDSL_FAULT": "batch:2@1", "PCDSL_DIST_TIMEOUT": "60"}
    procs = [subprocess.Popen([sys.executable, "-m", "pcdsl.cli", "run", str(path), "--out", str(tmp_path / "run"),
                               "-q"], cwd=ROOT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert procs[1].returncode == -signal.SIGKILL
    assert procs[0].returncode == 1
    err = outs[0][1]
    assert "worker 0 of 2 lost contact with the others" in err and "resume from the last checkpoint" in err


@pytest.mark.parametrize("variant", ["grow", pytest.param("unshared", marks=pytest.mark.slow)])
def test_a_distillation_shares_its_jobs_among_two_workers(tmp_path: Path, variant: str) -> None:
    """Growing's global clusters and unshared patch positions are jobs shared out among the
    workers (same files, bit for bit, as one process); the EM fits run data-parallel."""
    from test_distill_run import _recipe

    if variant == "grow":
        path = _recipe(tmp_path, latents="clusters = 2) | grow(to = 5, rounds = 2, workers = 1")
        same = ["grown.safetensors", "grown.npz"]  # the shared patch circuits then fit data-parallel
    else:
        path = _recipe(tmp_path)
        path.write_text(path.read_text().replace("shared = true", "shared = false"))
        same = [f"patches-{i}.safetensors" for i in range(4)]
    one, two = tmp_path / "one", tmp_path / "two"
    # one thread, as each of the two workers has: sums over threads add in another order
    solo = pcdsl("run", str(path), "--out", str(one), "-q", "--dtype", "float64", OMP_NUM_THREADS="1",
                 NUMBA_NUM_THREADS="1")
    assert solo.returncode == 0, solo.stderr
    both = pcdsl("run", str(path), "--out", str(two), "-q", "--dtype", "float64", "--nproc", "2")
    assert both.returncode == 0, both.stderr
    assert both.stdout.count("tiny: test bpd") == 1
    for name in ("teacher.safetensors", "latents.npz", *same):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    for name in ["latent.safetensors"] + (["patches.safetensors"] if variant == "grow" else []):
        _params_close(one / name, two / name, 1e-10)
    _params_close(one / "model.safetensors", two / "model.safetensors", 1e-10)
