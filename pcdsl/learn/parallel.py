"""Data parallelism on torch.distributed: worker groups, shards and all-reduced flows.

Every worker holds the same parameters and draws the same global batches (same seed, same
generator); each computes the flows of its shard of a batch, the flows are summed over the
workers (one all-reduce of one float64 buffer), and every worker applies the same update to
the same sums, so the parameters stay equal on every worker and equal to one process's up to
the order of summation. Gradients need no reduction of their own: SGD's gradient is linear in
the flows (:mod:`pcdsl.learn.sgd`), so summing flows sums gradients.

A single process is the group :data:`SOLO`, whose reductions do nothing. :func:`from_environment`
joins the group that ``torchrun`` (or ``pcdsl run --nproc``) describes in ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``: gloo on the CPU, NCCL on CUDA.
"""

from __future__ import annotations

import atexit
import json
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import numpy as np

from pcdsl.reference import Flows


class WorkerLost(RuntimeError):
    """A worker of the group stopped (or cannot be reached); the run cannot go on."""


class Group(Protocol):
    """The workers of a run. Reductions are collective: every worker calls them, in the same order."""

    @property
    def rank(self) -> int: ...

    @property
    def size(self) -> int: ...

    @property
    def reduced_bytes(self) -> int:
        """Bytes this worker passed to all-reduce, for the record."""

    def all_reduce(self, values: np.ndarray) -> np.ndarray:
        """The element-wise sum of `values` (float64) over the workers."""

    def broadcast(self, data: bytes | None, src: int = 0) -> bytes:
        """Rank `src`'s `data` on every worker (the others pass None)."""


@dataclass(frozen=True)
class Solo:
    """One process: reductions return their input (frozen: one instance serves everyone)."""

    rank: int = 0
    size: int = 1
    reduced_bytes: int = 0

    def all_reduce(self, values: np.ndarray) -> np.ndarray:
        return values

    def broadcast(self, data: bytes | None, src: int = 0) -> bytes:
        assert data is not None
        return data


SOLO = Solo()


@dataclass
class TorchGroup:
    """The default torch.distributed process group; tensors travel on `device` (a CUDA device
    for NCCL, the CPU for gloo)."""

    rank: int
    size: int
    device: Any = "cpu"
    reduced_bytes: int = 0
    _dist: Any = field(default=None, repr=False)

    def all_reduce(self, values: np.ndarray) -> np.ndarray:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(self.device)
        self._collective(lambda: self._dist.all_reduce(tensor))
        self.reduced_bytes += tensor.numel() * 8
        return np.asarray(tensor.cpu().numpy(), dtype=np.float64)

    def broadcast(self, data: bytes | None, src: int = 0) -> bytes:
        import torch

        size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64, device=self.device)
        self._collective(lambda: self._dist.broadcast(size, src))
        if self.rank == src:
            assert data is not None
            buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.device) if data else \
                torch.empty(0, dtype=torch.uint8, device=self.device)
        else:
            buffer = torch.empty(int(size.item()), dtype=torch.uint8, device=self.device)
        if int(size.item()):
            self._collective(lambda: self._dist.broadcast(buffer, src))
        return bytes(buffer.cpu().numpy().tobytes())

    def _collective(self, call: Any) -> None:
        try:
            call()
        except RuntimeError as exc:  # gloo and NCCL report a lost peer as a RuntimeError subclass
            raise WorkerLost(f"worker {self.rank} of {self.size} lost contact with the others ({_first_line(exc)}); "
                             "another worker has probably stopped") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def in_distributed_environment() -> bool:
    """Whether this process was started as one of several workers (torchrun, `pcdsl run --nproc`)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def from_environment(device: str = "cpu", timeout_s: float | None = None) -> Group:
    """The group this process belongs to: :data:`SOLO`, or the one described by torchrun's
    environment (joined here; gloo for CPU devices, NCCL for CUDA ones, each local worker on
    its own GPU, ``cuda:LOCAL_RANK``). `timeout_s` bounds how long a collective waits for a
    silent worker (default: ``PCDSL_DIST_TIMEOUT`` seconds, else 600)."""
    if not in_distributed_environment():
        return SOLO
    import torch.distributed as dist

    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cuda = device.startswith("cuda")
    where: Any = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu"
    if cuda:
        import torch

        local, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= gpus:
            raise WorkerLost(f"worker {rank} of {size} is local worker {local} and needs GPU cuda:{local}, but this "
                             f"host has {gpus} GPU{'s' if gpus != 1 else ''}: start at most {gpus} workers per host")
    if timeout_s is None:
        timeout_s = float(os.environ.get("PCDSL_DIST_TIMEOUT", "600"))
    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=size,
                                    timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as exc:
            raise WorkerLost(f"worker {rank} of {size} could not join the others at "
                             f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} "
                             f"({_first_line(exc)})") from None
        atexit.register(_leave, dist)  # a group left to the interpreter's exit aborts the process
    return TorchGroup(rank, size, where, _dist=dist)


def _leave(dist: Any) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device(group: Group, device: str) -> str:
    """The device a worker computes on: its own GPU for ``cuda`` (``cuda:LOCAL_RANK``)."""
    if group.size > 1 and device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def shard(rows: np.ndarray, group: Group) -> np.ndarray:
    """This worker's contiguous share of `rows` (sizes differ by at most one)."""
    if group.size == 1:
        return rows
    return np.array_split(rows, group.size)[group.rank]


def flatten(flows: Flows) -> tuple[np.ndarray, list[tuple[str, str, str, tuple[int, ...]]]]:
    """Every flow array in one float64 buffer (log-likelihood first), and how to cut it back."""
    parts, layout = [np.array([flows.log_likelihood], dtype=np.float64)], []
    for group in sorted(flows.weights):
        value = np.asarray(flows.weights[group], dtype=np.float64)
        parts.append(value.ravel())
        layout.append(("w", group, "", value.shape))
    for node in sorted(flows.inputs):
        for key in sorted(flows.inputs[node]):
            value = np.asarray(flows.inputs[node][key], dtype=np.float64)
            parts.append(value.ravel())
            layout.append(("i", node, key, value.shape))
    return np.concatenate(parts), layout


def unflatten(buffer: np.ndarray, layout: list[tuple[str, str, str, tuple[int, ...]]]) -> Flows:
    out = Flows(log_likelihood=float(buffer[0]))
    at = 1
    for kind, name, key, shape in layout:
        size = int(np.prod(shape))
        value = buffer[at:at + size].reshape(shape)
        at += size
        if kind == "w":
            out.weights[name] = value
        else:
            out.inputs.setdefault(name, {})[key] = value
    return out


def all_reduce_flows(flows: Flows, group: Group) -> Flows:
    """The flows summed over the workers (every worker's flows have the same layout)."""
    if group.size == 1:
        return flows
    buffer, layout = flatten(flows)
    return unflatten(group.all_reduce(buffer), layout)


def zero_flows(flows: Flows) -> Flows:
    """Flows of the same layout, all zero (a worker whose shard of a batch is empty)."""
    buffer, layout = flatten(flows)
    return unflatten(np.zeros_like(buffer), layout)


def all_gather_bytes(data: bytes, group: Group) -> list[bytes]:
    """Every worker's `data`, in rank order, on every worker."""
    return [group.broadcast(data if r == group.rank else None, src=r) for r in range(group.size)]


def pack(files: dict[str, bytes]) -> bytes:
    """Several named byte strings as one (a JSON index, then the contents): files on the wire."""
    index = json.dumps([[name, len(data)] for name, data in files.items()]).encode()
    return len(index).to_bytes(8, "little") + index + b"".join(files.values())


def unpack(data: bytes) -> dict[str, bytes]:
    length = int.from_bytes(data[:8], "little")
    out, at = {}, 8 + length
    for name, size in json.loads(data[8:8 + length]):
        out[name] = data[at:at + size]
        at += size
    return out


def all_reduce_sum(value: float, group: Group) -> float:
    """A number summed over the workers."""
    return value if group.size == 1 else float(group.all_reduce(np.array([value], dtype=np.float64))[0])
