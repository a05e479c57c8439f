"""The distillation run directory: stage keys, cached outputs with their checksums, EM fits
that checkpoint and resume, and the hand-over of files from rank 0 to the other workers
(:mod:`pcdsl.distill.pipeline` runs the stages in it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcdsl.distill import lvd
from pcdsl.io.atomic import write_atomic
from pcdsl.io.atomic import write_json as _write_json
from pcdsl.io.rundir import LOCK, check_files, read_state, record
from pcdsl.ir.graph import CircuitGraph
from pcdsl.learn.parallel import SOLO, Group, pack, unpack
from pcdsl.learn.train import Epoch
from pcdsl.params import Parameters

Log = Callable[[str], object]


@dataclass
class RunDir:
    """The run directory: stage keys, cached outputs (with their sizes and checksums) and
    per-epoch checkpoints. The caller holds its lock (:class:`pcdsl.io.rundir.RunLock`)."""

    path: Path
    log: Log = print
    keys: dict[str, str] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    attempts: dict[str, dict[str, Any]] = field(default_factory=dict)  # stages started, not finished
    files: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # stage -> file -> size, sha256
    # data-parallel workers: rank 0 decides, reads and writes the run directory; the others keep
    # a private scratch folder as `path`, into which rank 0 hands them the files they need
    group: Group = SOLO

    @property
    def leader(self) -> bool:
        return self.group.rank == 0

    def __post_init__(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        saved = read_state(self.path / "stages.json")
        if saved is not None:
            self.keys, self.times = saved.get("keys", {}), saved.get("seconds", {})
            self.attempts, self.files = saved.get("attempts", {}), saved.get("files", {})

    def fresh(self, stage: str, key: str, *files: str) -> bool:
        """Whether `stage` already ran with `key` and its files are all there, as written (a
        file changed since is a :class:`pcdsl.io.rundir.RunDirError`, never used). Rank 0
        decides for every worker and hands them the files."""
        done = self._fresh(stage, key, files) if self.leader else False
        if self.group.size > 1:
            done = self.group.broadcast(b"1" if done else b"0" if self.leader else None) == b"1"
            if done:
                self.share(*files)
        return done

    def share(self, *files: str) -> None:
        """Rank 0's copies of `files` into every worker's folder."""
        if self.group.size == 1:
            return
        data = pack({f: (self.path / f).read_bytes() for f in files}) if self.leader else None
        received = unpack(self.group.broadcast(data))
        if not self.leader:
            for name, content in received.items():
                write_atomic(self.path / name, content)

    def _fresh(self, stage: str, key: str, files: tuple[str, ...]) -> bool:
        if self.keys.get(stage) is not None and self.keys[stage] != key:
            self.log(f"{stage}: the recipe or options changed since it ran; running it again")
            return False
        done = self.keys.get(stage) == key and all((self.path / f).exists() for f in files)
        if done:
            check_files(self.path, {f: r for f, r in self.files.get(stage, {}).items() if f in files})
            self.log(f"{stage}: cached ({', '.join(files)})")
        return done

    def start(self, stage: str, key: str) -> float:
        """Forget the stage's key before it writes anything (files a stopped attempt overwrote
        must never pass for the outputs of an earlier key); returns the seconds that earlier
        attempts at the same key spent on work they saved (up to their last file written)."""
        self.keys.pop(stage, None)
        self.files.pop(stage, None)
        earlier = self.attempts.get(stage, {})
        seconds = 0.0
        if earlier.get("key") == key:
            saved_until = max((f.stat().st_mtime for f in self.path.rglob("*")
                               if f.is_file() and f.name not in ("stages.json", LOCK)), default=earlier["started"])
            seconds = earlier["seconds"] + max(0.0, saved_until - earlier["started"])
        self.attempts[stage] = {"key": key, "started": time.time(), "seconds": seconds}
        self._save()
        return seconds

    def finish(self, stage: str, key: str, seconds: float, files: tuple[str, ...] = ()) -> None:
        self.keys[stage] = key
        self.times[stage] = seconds
        self.files[stage] = {f: record(self.path / f) for f in files}
        self.attempts.pop(stage, None)
        self._save()

    def _save(self) -> None:
        _write_json(self.path / "stages.json", {"keys": self.keys, "seconds": self.times, "attempts": self.attempts,
                                                "files": self.files})

    def fit(self, stage: str, key: str, graph: CircuitGraph, train: Callable[[lvd.Resume], Parameters],
            alone: bool = False) -> Parameters:
        """Run an EM fit that checkpoints (:mod:`pcdsl.learn.checkpoint`) after every epoch,
        and inside epochs every ``PCDSL_CHECKPOINT_SECONDS``, and resumes from its last
        checkpoint to the same result. The workers run it data-parallel from rank 0's
        checkpoint (only rank 0 keeps checkpoints), unless `alone` (a job of this worker's own)."""
        from pcdsl.learn.checkpoint import Checkpointer, decode

        group = SOLO if alone else self.group
        checkpoints = Checkpointer(self.path, stage, key, log=self.log)
        data = checkpoints.load() if group.rank == 0 else None
        data = group.broadcast(data or b"") if group.size > 1 else data
        snapshot = decode(data, where=str(self.path / f"{stage}.json")) if data else None
        if snapshot is not None:
            inside = f" and {snapshot.batch} mini-batches of the next" if snapshot.batch else ""
            self.log(f"{stage}: resuming after {checkpoints.epochs_done} epochs{inside}")

        def after_epoch(epoch: Epoch, _current: Parameters) -> None:
            valid = f", valid {epoch.valid_ll:.4f}" if epoch.valid_ll is not None else ""
            self.log(f"{stage}: stage {epoch.stage + 1} epoch {epoch.epoch + 1}: train {epoch.train_ll:.4f}{valid}")

        def attach(trainer: Any) -> None:
            if group.rank == 0:
                checkpoints.attach(trainer, after_epoch)

        return train(lvd.Resume(snapshot, attach, group))


def timed(run: RunDir, stage: str, key: str, work: Callable[[], None], *files: str, everyone: bool = False) -> None:
    """Run a stage's work; its seconds include what stopped attempts saved before they stopped;
    the stage vouches for `files` (sizes and checksums) once done. Work that is not for
    `everyone` runs on rank 0 alone, which then hands the other workers its files."""
    earlier = run.start(stage, key)
    started = time.perf_counter()
    if everyone or run.leader:
        work()
    if not everyone:
        run.share(*files)
    run.finish(stage, key, earlier + time.perf_counter() - started, files)
