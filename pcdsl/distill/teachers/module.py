"""The `module` teacher: a user's own torch encoder.

`module("pkg.mod:factory", weights = "file.safetensors")` imports `pkg.mod` (it must be importable:
installed, or on PYTHONPATH), calls `factory()` with no arguments and expects a `torch.nn.Module`.
The module receives a float32 tensor (N, C, H, W) with every channel scaled to [0, 1]
(value / (levels - 1)) and returns either (N, P, d), one row per patch in row-major order, or a
feature map (N, d, rows, cols) with rows = H / ph and cols = W / pw. `weights`, if given, is a
safetensors file of its state dict (loaded strictly). The teacher is used as it is: `fit` trains
nothing. Its weights are saved with the teacher, so a run directory is complete without them.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pcdsl.distill.teachers.common import Geometry, Log, TeacherError, check_images, load_numpy_state


@dataclass(frozen=True)
class ModuleOptions:
    factory: str = ""  # "pkg.mod:function"
    weights: str = ""  # a safetensors file of the module's state dict, or "" for none

    def __post_init__(self) -> None:
        mod, _, func = self.factory.partition(":")
        if not mod or not func:
            raise TeacherError(f"module teacher: factory must look like 'package.module:function', got "
                               f"{self.factory!r}")


def load_factory(spec: str) -> Callable[[], Any]:
    mod_name, _, func_name = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as exc:  # noqa: BLE001 - any import failure of user code is the user's to see
        raise TeacherError(f"module teacher: cannot import '{mod_name}' ({type(exc).__name__}: {exc}); "
                           "install it or put its folder on PYTHONPATH") from None
    factory = getattr(mod, func_name, None)
    if not callable(factory):
        raise TeacherError(f"module teacher: '{mod_name}' has no function '{func_name}'")
    return factory  # type: ignore[no-any-return]


def read_weights(path: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (OSError, SafetensorError) as exc:
        raise TeacherError(f"module teacher: cannot read weights '{path}': {exc}") from None


class ModuleTeacher:
    """See the module docstring."""

    name = "module"

    def __init__(self, geo: Geometry, options: ModuleOptions) -> None:
        self.geo, self.o = geo, options
        if options.weights and not Path(options.weights).is_file():
            raise TeacherError(f"module teacher: weights file '{options.weights}' does not exist")
        # the weights' content, not their location, is part of the identity (the state carries them)
        digest = hashlib.sha256(Path(options.weights).read_bytes()).hexdigest() if options.weights else ""
        self.config = {"options": {**asdict(options), "weights": digest}}
        module = load_factory(options.factory)()
        if not isinstance(module, torch.nn.Module):
            raise TeacherError(f"module teacher: {options.factory}() returned {type(module).__name__}, "
                               "not a torch.nn.Module")
        self.module = module.eval()
        if options.weights:
            weights = read_weights(options.weights)
            try:
                self.module.load_state_dict(weights)
            except RuntimeError as exc:
                raise TeacherError(f"module teacher: weights '{options.weights}' do not fit "
                                   f"{options.factory}(): {exc}") from None

    def fit(self, images: np.ndarray, valid: np.ndarray | None, *, progress: bool = True, log: Log = print) -> None:
        check_images(images, self.geo)
        log(f"module teacher {self.o.factory}: used as given, nothing to train")

    @torch.no_grad()
    def features(self, images: np.ndarray, batch: int = 512) -> np.ndarray:
        images = check_images(images, self.geo)
        scale = np.asarray(self.geo.levels, dtype=np.float32) - 1.0
        out = []
        for s in range(0, len(images), batch):
            x = torch.from_numpy(images[s:s + batch].astype(np.float32) / scale).permute(0, 3, 1, 2).contiguous()
            out.append(self._per_patch(self.module(x), len(x)))
        return np.concatenate(out).astype(np.float32, copy=False)

    def _per_patch(self, y: Any, n: int) -> np.ndarray:
        rows, cols = self.geo.grid
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else None
        if shape is not None and len(shape) == 4 and shape[0] == n and shape[2:] == (rows, cols):
            y = y.flatten(2).transpose(1, 2)
        elif shape is None or len(shape) != 3 or shape[:2] != (n, rows * cols):
            raise TeacherError(f"module teacher {self.o.factory}: for {n} images it must return a tensor "
                               f"(N, {rows * cols}, d) or (N, d, {rows}, {cols}); got "
                               f"{shape if shape is not None else type(y).__name__}")
        return y.detach().float().numpy()  # type: ignore[no-any-return]

    def bpd(self, images: np.ndarray) -> None:
        return None

    def state(self) -> dict[str, np.ndarray]:
        return {f"module/{k}": v.detach().float().numpy().copy() if v.dtype == torch.bfloat16
                else v.detach().numpy().copy() for k, v in self.module.state_dict().items()}

    def load_state(self, tensors: dict[str, np.ndarray]) -> None:
        load_numpy_state(self.module, tensors, "module")
        self.module.eval()
