"""Checkpoints of a training fit in a run directory, so that a fit stopped at any moment (a
kill, a power loss) goes on to the very result it would have had.

One fit named NAME keeps, in its folder:

- ``NAME.ckpt-K.safetensors``: a :class:`pcdsl.learn.train.Snapshot` (parameters, best so far,
  generator state, the epoch's batch order and position in it, optimiser state), tensors plus
  a JSON header, never pickle. Every checkpoint gets a new name K;
- ``NAME.json``: the state. It names the one checkpoint it vouches for, with its size and
  SHA-256, and the length and SHA-256 of the metrics lines written so far. It is replaced
  atomically (:mod:`pcdsl.io.atomic`) only once the checkpoint and metrics are on disk, so a
  crash anywhere leaves a state whose files are whole; files it does not name are a stopped
  attempt's and are removed, metrics lines past its length are cut;
- the metrics file (its name given by the caller): one JSON line per finished epoch.

A checkpoint is written after every epoch and, inside mini-batch epochs, after a mini-batch
once ``every`` seconds passed since the last (``PCDSL_CHECKPOINT_SECONDS``, default 60; 0:
after every mini-batch). Where checkpoints fall changes nothing in the result.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pcdsl.io.atomic import append_durably, write_atomic, write_json
from pcdsl.io.model import parameter_tensors, parameters_from_tensors
from pcdsl.io.rundir import RunDirError, check_files, read_state, record
from pcdsl.learn.train import Epoch, Snapshot, Trainer
from pcdsl.params import Parameters

FORMAT = "pcdsl-checkpoint"
VERSION = 1


def default_interval() -> float:
    """Seconds between checkpoints inside an epoch: ``PCDSL_CHECKPOINT_SECONDS`` or 60."""
    text = os.environ.get("PCDSL_CHECKPOINT_SECONDS", "60")
    try:
        value = float(text)
    except ValueError:
        raise RunDirError(f"PCDSL_CHECKPOINT_SECONDS='{text}' is not a number of seconds") from None
    return max(value, 0.0)


# --- snapshots as bytes -----------------------------------------------------------------------------

def _put(tensors: dict[str, np.ndarray], prefix: str, params: Parameters) -> None:
    tensors.update({f"{prefix}/{k}": v for k, v in parameter_tensors(params).items()})


def _take(tensors: dict[str, np.ndarray], prefix: str, fixed: frozenset[str]) -> Parameters:
    params = parameters_from_tensors({k.partition("/")[2]: v for k, v in tensors.items()
                                      if k.partition("/")[0] == prefix})
    params.fixed = fixed
    return params


def encode(snapshot: Snapshot) -> bytes:
    """A snapshot as safetensors bytes (JSON header for the numbers, tensors for the arrays)."""
    from safetensors.numpy import save

    tensors: dict[str, np.ndarray] = {}
    _put(tensors, "params", snapshot.params)
    if snapshot.best is not None and snapshot.best[1] is not None:
        _put(tensors, "best", snapshot.best[1])
    if snapshot.order:
        tensors["order/rows"] = np.ascontiguousarray(np.concatenate(snapshot.order), dtype=np.int64)
        tensors["order/sizes"] = np.array([len(b) for b in snapshot.order], dtype=np.int64)
    if snapshot.optimizer is not None:
        for key, value in snapshot.optimizer[0].items():
            tensors[f"optimizer/{key}"] = np.ascontiguousarray(value)
    meta = {"format": FORMAT, "version": VERSION, "position": list(snapshot.position), "batch": snapshot.batch,
            "best": None if snapshot.best is None else snapshot.best[0],
            "best_is_params": snapshot.best is not None and snapshot.best[1] is None,
            "rng": snapshot.rng, "train_ll": snapshot.train_ll, "step": snapshot.step,
            "optimizer_t": None if snapshot.optimizer is None else snapshot.optimizer[1], "extra": snapshot.extra}
    # JSON writes floats by repr, which reads back to the same float: the resumed run is bit-identical
    return bytes(save(tensors, metadata={FORMAT: json.dumps(meta, sort_keys=True)}))


def decode(data: bytes, fixed: frozenset[str] = frozenset(), where: str = "checkpoint") -> Snapshot:
    """The snapshot :func:`encode` wrote (`fixed`: the parameters learning keeps, as in the
    run's own :class:`Parameters`)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        length = int.from_bytes(data[:8], "little")
        meta = json.loads(json.loads(data[8:8 + length])["__metadata__"][FORMAT])
        tensors = load(data)
    except (ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise RunDirError(f"{where} is not a readable pcdsl checkpoint ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise RunDirError(f"{where} is a checkpoint of another format or version ({meta.get('format')!r} "
                          f"{meta.get('version')!r}); remove the run directory to start afresh")
    params = _take(tensors, "params", fixed)
    best: tuple[float, Parameters | None] | None = None
    if meta["best"] is not None:
        best = (float(meta["best"]), None if meta["best_is_params"] else _take(tensors, "best", fixed))
    order: tuple[np.ndarray, ...] = ()
    if "order/rows" in tensors:
        order = tuple(np.split(tensors["order/rows"], np.cumsum(tensors["order/sizes"])[:-1]))
    optimizer = None
    if meta["optimizer_t"] is not None:
        arrays = {k.partition("/")[2]: v for k, v in tensors.items() if k.startswith("optimizer/")}
        optimizer = (arrays, int(meta["optimizer_t"]))
    return Snapshot(tuple(meta["position"]), params, best, meta["rng"], int(meta["batch"]), order,  # type: ignore[arg-type]
                    float(meta["train_ll"]), float(meta["step"]), optimizer, dict(meta["extra"]))


# --- a fit's files ---------------------------------------------------------------------------------

def _prefix_sha256(path: Path, size: int) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(size)).hexdigest()


class Checkpointer:
    """Keeps the progress of the fit `name` in `folder` (see the module docstring). `key` says
    what the fit is (recipe entries, seed, ...): a state of another key is not resumed."""

    def __init__(self, folder: Path, name: str, key: str, *, metrics: str | None = None,
                 every: float | None = None, log: Callable[[str], object] = print):
        self.folder, self.name, self.key = Path(folder), name, key
        self.state_file = self.folder / f"{name}.json"
        self.metrics = self.folder / (metrics or f"{name}.metrics.jsonl")
        self.every = default_interval() if every is None else every
        self.log = log
        self.epochs_done = 0
        self._state: dict[str, Any] = {}
        self._last = time.monotonic()

    def load(self) -> bytes | None:
        """The last checkpoint's bytes (None: nothing to resume), after checking every file the
        state vouches for; metrics lines and checkpoints of a stopped attempt are dropped."""
        state = read_state(self.state_file)
        if state is None or state.get("format") != FORMAT or state.get("key") != self.key:
            if state is not None:
                self.log(f"{self.name}: the saved progress is of other settings; starting this fit afresh")
            self._state = {}
            self._tidy(None)
            self.metrics.write_bytes(b"")
            return None
        check_files(self.folder, state["files"])
        metrics = state["metrics"]
        if not self.metrics.exists() and metrics["size"] == 0:
            self.metrics.write_bytes(b"")
        if not self.metrics.exists() or self.metrics.stat().st_size < metrics["size"] or \
                _prefix_sha256(self.metrics, metrics["size"]) != metrics["sha256"]:
            raise RunDirError(f"the run directory '{self.folder}' was changed outside pcdsl: {self.metrics.name} no "
                              "longer begins with the lines its state counts. Restore it, or remove the directory (or "
                              "choose another --out) to start afresh")
        with open(self.metrics, "r+b") as f:  # lines a stopped attempt wrote after its last state go
            f.truncate(metrics["size"])
        self._state, self.epochs_done = state, int(state["epochs_done"])
        self._tidy(state["checkpoint"])
        return (self.folder / state["checkpoint"]).read_bytes()

    def _tidy(self, keep: str | None) -> None:
        for path in self.folder.glob(f"{self.name}.ckpt-*.safetensors"):
            if path.name != keep:
                path.unlink(missing_ok=True)

    def attach(self, trainer: Trainer, after_epoch: Callable[[Epoch, Parameters], None] | None = None) -> None:
        """Checkpoint `trainer` after every epoch (after `after_epoch`, e.g. a log line) and,
        every `every` seconds, after a mini-batch."""
        def on_epoch(record: Epoch, current: Parameters) -> None:
            self.epochs_done += 1
            line = json.dumps(record.as_dict(), sort_keys=True) + "\n"
            append_durably(self.metrics, line.encode())  # before the state that counts it
            self.save(trainer.snapshot())
            if after_epoch is not None:
                after_epoch(record, current)

        def on_batch(current: Trainer) -> None:
            if time.monotonic() - self._last >= self.every:
                self.save(current.snapshot())

        trainer.on_epoch, trainer.on_batch = on_epoch, on_batch

    def save(self, snapshot: Snapshot) -> None:
        """Write a checkpoint, then the state naming it; then drop the one it replaces."""
        count = int(self._state.get("saves", 0)) + 1
        name = f"{self.name}.ckpt-{count}.safetensors"
        write_atomic(self.folder / name, encode(snapshot))
        size = self.metrics.stat().st_size if self.metrics.exists() else 0
        previous = self._state.get("checkpoint")
        self._state = {"format": FORMAT, "key": self.key, "saves": count, "epochs_done": self.epochs_done,
                       "checkpoint": name, "files": {name: record(self.folder / name)},
                       "metrics": {"size": size, "sha256": _prefix_sha256(self.metrics, size) if size else
                                   hashlib.sha256(b"").hexdigest()}}
        write_json(self.state_file, self._state)
        if previous and previous != name:
            (self.folder / previous).unlink(missing_ok=True)
        self._last = time.monotonic()

    def clear(self) -> None:
        """Forget the fit's progress (its result is kept elsewhere now)."""
        self._tidy(None)
        self.state_file.unlink(missing_ok=True)
