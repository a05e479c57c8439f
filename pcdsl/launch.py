"""Local data-parallel workers: ``pcdsl run --nproc N`` (and ``pcdsl eval --nproc N``).

The launcher does what ``torchrun --standalone --nproc-per-node N`` does, with nothing beyond
the standard library: it starts N copies of the same ``pcdsl`` command, each told its place by
torchrun's environment variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``), and watches them. A worker that stops with an error or is killed stops the
others (SIGTERM, then SIGKILL), and the launcher says which one stopped and how to go on: run
the same command again, which resumes from the last checkpoint. Workers die with the
launcher (Linux: a parent-death signal), so killing the launcher kills the whole run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TextIO

GRACE_S = 10.0  # how long stopped workers get to exit before SIGKILL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def strip_option(argv: Sequence[str], flag: str) -> list[str]:
    """`argv` without ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def _die_with_parent() -> None:
    """In a worker, before exec: SIGKILL when the launcher dies (Linux; elsewhere a no-op)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _describe(status: int) -> str:
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"stopped with exit status {status}"


def launch(argv: Sequence[str], nproc: int, threads: int | None = None, *, command: str = "run",
           err: TextIO | None = None, program: Sequence[str] | None = None) -> int:
    """Run ``pcdsl ARGV`` as `nproc` local workers; returns the exit status of the run (0 when
    every worker succeeded, else the first failure's). `threads`: torch/BLAS threads per worker
    (default: the CPUs shared out among the workers). `program`: what to start instead of
    ``python -m pcdsl.cli`` (e.g. a script of one's own that calls :func:`pcdsl.run.run_recipe`)."""
    stream = err if err is not None else sys.stderr
    port = free_port()
    per_worker = threads or max(1, (os.cpu_count() or 1) // nproc)
    workers = []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                   LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS=str(per_worker), NUMBA_NUM_THREADS=str(per_worker))
        start = list(program) if program is not None else [sys.executable, "-m", "pcdsl.cli"]
        workers.append(subprocess.Popen([*start, *argv], env=env,
                                        preexec_fn=_die_with_parent if sys.platform == "linux" else None))
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def forward(signum: int, _frame: object) -> None:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signum)

    for s in previous:
        signal.signal(s, forward)
    try:
        return _watch(workers, command, stream)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _watch(workers: list[subprocess.Popen[bytes]], command: str, stream: TextIO) -> int:
    while True:
        statuses = [w.poll() for w in workers]
        failed = [(rank, s) for rank, s in enumerate(statuses) if s not in (None, 0)]
        if failed:
            rank, status = failed[0]
            _stop(workers)
            hint = "resume from the last checkpoint" if command == "run" else "start it afresh"
            print(f"pcdsl {command}: worker {rank} of {len(workers)} {_describe(status)}; stopped the other "
                  f"workers. Run the same command again to {hint}.", file=stream)
            return status if status > 0 else 128 - status
        if all(s == 0 for s in statuses):
            return 0
        time.sleep(0.05)


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        if w.poll() is None:
            w.terminate()
    deadline = time.monotonic() + GRACE_S
    for w in workers:
        try:
            w.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
