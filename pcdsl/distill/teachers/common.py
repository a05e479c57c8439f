"""What the teachers share: option checking, image checks, patch tensors, training loops.

Images arrive as integer arrays (N, H, W, C) whose channel c takes values 0 .. levels[c] - 1; a
teacher sees them as floats in [-1, 1] (channel by channel), cut into a row-major grid of
non-overlapping ph x pw patches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np


class TeacherError(ValueError):
    """A teacher was asked for something it cannot do (bad option, bad images, bad file)."""


Log = Callable[[str], object]


@dataclass(frozen=True)
class Geometry:
    """Image shape (H, W, C), patch shape (ph, pw) and the level count of every channel."""

    image_shape: tuple[int, int, int]
    patch: tuple[int, int]
    levels: tuple[int, ...]

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_shape[0] // self.patch[0], self.image_shape[1] // self.patch[1]

    @property
    def patches(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def patch_dims(self) -> int:
        """Values in one patch: ph * pw * C."""
        return self.patch[0] * self.patch[1] * self.image_shape[2]

    @property
    def dims(self) -> int:
        h, w, c = self.image_shape
        return h * w * c


def make_geometry(image_shape: tuple[int, ...], patch: tuple[int, ...], levels: int | tuple[int, ...]) -> Geometry:
    """Check that the patches tile the image and that there is one level count per channel."""
    if len(image_shape) != 3 or any(int(s) < 1 for s in image_shape):
        raise TeacherError(f"image_shape must be (height, width, channels), got {tuple(image_shape)}")
    h, w, c = (int(s) for s in image_shape)
    if len(patch) != 2 or any(int(s) < 1 for s in patch):
        raise TeacherError(f"patch must be (height, width), got {tuple(patch)}")
    ph, pw = int(patch[0]), int(patch[1])
    if h % ph or w % pw:
        raise TeacherError(f"{ph}x{pw} patches do not tile {h}x{w} images; pick a patch size dividing both sides")
    per_channel = (int(levels),) * c if isinstance(levels, (int, np.integer)) else tuple(int(v) for v in levels)
    if len(per_channel) != c or any(v < 2 for v in per_channel):
        raise TeacherError(f"levels must be one count >= 2 or one per channel ({c}), got {levels}")
    return Geometry((h, w, c), (ph, pw), per_channel)


def read_options(cls: type, options: Mapping[str, Any], teacher: str) -> Any:
    """Build the dataclass `cls` from `options`, naming any unknown option or badly typed value."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TeacherError(f"teacher '{teacher}' has no option {', '.join(map(repr, unknown))}; "
                           f"its options are {', '.join(known)}")
    values = {}
    for name, value in options.items():
        want = type(known[name].default)
        if want is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or isinstance(value, bool) != (want is bool):
            raise TeacherError(f"teacher '{teacher}': option '{name}' must be a {want.__name__}, got {value!r}")
        values[name] = value
    return cls(**values)


def check_images(images: np.ndarray, geo: Geometry, what: str = "images") -> np.ndarray:
    """`images` as an (N, H, W, C) integer array within the levels, or a clear error."""
    images = np.asarray(images)
    if images.ndim == 3 and geo.image_shape[2] == 1:
        images = images[..., None]
    if images.ndim != 4 or images.shape[1:] != geo.image_shape:
        raise TeacherError(f"{what} must have shape (N, {', '.join(map(str, geo.image_shape))}), got {images.shape}")
    if images.dtype.kind not in "iu":
        raise TeacherError(f"{what} must hold integer pixel values, got dtype {images.dtype}")
    if len(images) == 0:
        raise TeacherError(f"{what} is empty")
    low, high = images.min(axis=(0, 1, 2)), images.max(axis=(0, 1, 2))
    for c, levels in enumerate(geo.levels):
        if low[c] < 0 or high[c] >= levels:
            raise TeacherError(f"{what}: channel {c} has values {low[c]} .. {high[c]}, outside 0 .. {levels - 1}")
    return images


def to_unit(images: np.ndarray, geo: Geometry) -> Any:
    """Integer images (N, H, W, C) -> float tensor (N, C, H, W) in [-1, 1]."""
    import torch

    scale = np.asarray(geo.levels, dtype=np.float32) - 1.0
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / scale * 2.0 - 1.0)
    return x.permute(0, 3, 1, 2).contiguous()


def patchify(x: Any, geo: Geometry) -> Any:
    """(N, C, H, W) -> (N, P, C*ph*pw): one row per patch, patches row-major, values (c, dy, dx)."""
    n, c, h, w = x.shape
    ph, pw = geo.patch
    rows, cols = h // ph, w // pw
    return x.reshape(n, c, rows, ph, cols, pw).permute(0, 2, 4, 1, 3, 5).reshape(n, rows * cols, c * ph * pw)


def neighbourhood_mask(geo: Geometry, radius: int = 1) -> np.ndarray:
    """Boolean (P, P): entry (i, j) is true when patch j lies in the (2r+1)^2 window around patch i."""
    rows, cols = geo.grid
    r, c = np.divmod(np.arange(rows * cols), cols)
    return (np.abs(r[:, None] - r[None, :]) <= radius) & (np.abs(c[:, None] - c[None, :]) <= radius)


def batches(n: int, size: int, generator: Any = None) -> Iterator[Any]:
    """Index tensors of `size` rows covering range(n), shuffled when a torch generator is given."""
    import torch

    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, size):
        yield order[start:start + size]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's global RNG seeded inside the block and restored after it (the caller's stays as it was)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def check_fit_inputs(images: np.ndarray, valid: np.ndarray | None,
                     geo: Geometry) -> tuple[np.ndarray, np.ndarray | None]:
    """The training images checked, and the validation images checked or None when absent or empty."""
    images = check_images(images, geo)
    return images, None if valid is None or len(valid) == 0 else check_images(valid, geo, "validation images")


def optimise(opt: Any, loss: Any) -> float:
    """One optimiser step on `loss`; its value."""
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def run_epochs(n: int, epochs: int, batch: int, opt: Any, lr: float, gen: Any, step: Callable[[Any], float],
               desc: str, progress: bool) -> Iterator[tuple[int, float]]:
    """Train for `epochs` over `n` rows in shuffled batches: `step(indices)` takes one optimiser step
    and returns the batch's loss; the learning rate follows :func:`cosine_lr`. Yields (epoch, mean
    loss) after each epoch, for the caller's message."""
    per_epoch = math.ceil(n / batch)
    done = 0
    for epoch in range(epochs):
        total = 0.0
        with progress_bar(per_epoch, f"{desc} {epoch + 1}/{epochs}", progress) as bar:
            for idx in batches(n, batch, gen):
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(done, epochs * per_epoch, lr)
                total += step(idx) * len(idx)
                done += 1
                bar.update(1)
        yield epoch, total / n


def cosine_lr(step: int, total: int, base: float, warmup: int = 50) -> float:
    """Linear warm-up (over at most a fifth of the run), then cosine decay to 5% of `base` (short
    runs converge better than at a flat rate)."""
    warmup = max(1, min(warmup, total // 5))
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t)))


def progress_bar(total: int, desc: str, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, disable=not progress)


class TrainedTeacher:
    """What the trained teachers share: options, configuration, a fitted flag, and a state made of
    their torch modules' tensors (each module's under its own prefix)."""

    name = ""

    def __init__(self, geo: Geometry, options: Any) -> None:
        self.geo, self.o = geo, options
        self.config: dict[str, Any] = {"options": asdict(options)}
        self.fitted = False

    def modules(self) -> dict[str, Any]:
        """prefix -> torch module, everything that :meth:`state` saves."""
        raise NotImplementedError

    def require_fit(self) -> None:
        if not self.fitted:
            raise TeacherError(f"the {self.name} teacher is not trained: call fit() or load a saved teacher first")

    def state(self) -> dict[str, np.ndarray]:
        out = {"fitted": np.array([int(self.fitted)], dtype=np.int64)}
        for prefix, module in self.modules().items():
            out.update(to_numpy_state(module, prefix))
        return out

    def load_state(self, tensors: dict[str, np.ndarray]) -> None:
        for prefix, module in self.modules().items():
            load_numpy_state(module, tensors, prefix)
            module.eval()
        self.fitted = bool(np.asarray(tensors.get("fitted", [0])).reshape(-1)[0])


def to_numpy_state(module: Any, prefix: str) -> dict[str, np.ndarray]:
    """A module's parameters and buffers as float32/int64 numpy arrays under `prefix/`."""
    return {f"{prefix}/{k}": v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def load_numpy_state(module: Any, tensors: Mapping[str, np.ndarray], prefix: str) -> None:
    """Load what :func:`to_numpy_state` wrote; a missing or misshapen tensor is a TeacherError."""
    import torch

    wanted = module.state_dict()
    state = {}
    for key, current in wanted.items():
        name = f"{prefix}/{key}"
        if name not in tensors:
            raise TeacherError(f"teacher state has no tensor '{name}'")
        value = np.asarray(tensors[name])
        if tuple(value.shape) != tuple(current.shape):
            raise TeacherError(f"teacher state '{name}' has shape {value.shape}, expected {tuple(current.shape)}")
        state[key] = torch.from_numpy(value.copy()).to(current.dtype)
    module.load_state_dict(state)
