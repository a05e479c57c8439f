"""Teachers: images in, one feature vector per patch out (plus bits/dim where there is a likelihood).

Every teacher takes integer images (N, H, W, C) whose channel c holds values 0 .. levels[c] - 1,
cut into a row-major grid of non-overlapping ph x pw patches, P = (H / ph) * (W / pw), and gives
features (N, P, d) float32. Kinds (see each module for the design):

- ``vqvae`` (:mod:`.vqvae`): VQ-VAE with an independent per-patch decoder, a discretised logistic
  likelihood and an autoregressive prior over the codes; ``bpd`` is its own bits/dim;
- ``mae`` (:mod:`.mae`): masked autoencoder, a patch's feature sees its 3x3 neighbourhood only;
- ``pixels`` (:mod:`.pixels`): no teacher, raw patch values;
- ``module`` (:mod:`.module`): a user's torch encoder, ``options = {"factory": "pkg.mod:fn",
  "weights": "file.safetensors"}``.

Training is seeded (``seed`` option) and leaves torch's global RNG as it was; the caller sets
torch's thread count. A teacher file is one safetensors file (no pickle), its configuration in
the metadata, so :func:`load_teacher` refuses a file made for other settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pcdsl.distill.teachers.common import TeacherError, make_geometry, read_options
from pcdsl.io.atomic import write_atomic

__all__ = ["KINDS", "Teacher", "TeacherError", "load_teacher", "make_teacher", "save_teacher"]

FORMAT, VERSION = "pcdsl-teacher", 1


@runtime_checkable
class Teacher(Protocol):
    name: str
    config: dict[str, Any]  # what identifies the teacher (options with defaults filled in, geometry)

    def fit(self, images: np.ndarray, valid: np.ndarray | None, *, progress: bool = True,
            log: Callable[[str], object] = print) -> None:
        """Train on `images` (N, H, W, C); `valid` only for progress messages."""

    def features(self, images: np.ndarray, batch: int = 512) -> np.ndarray:
        """(N, P, d) float32: one vector per patch."""

    def bpd(self, images: np.ndarray) -> float | None:
        """The teacher's own bits per dimension on `images` (mean over images), or None."""

    def state(self) -> dict[str, np.ndarray]:
        """Every array needed to restore the teacher."""

    def load_state(self, tensors: dict[str, np.ndarray]) -> None:
        """Restore from :meth:`state`'s arrays."""


def _vqvae(geo: Any, options: Mapping[str, Any]) -> Teacher:
    from pcdsl.distill.teachers.vqvae import VQVAEOptions, VQVAETeacher

    return VQVAETeacher(geo, read_options(VQVAEOptions, options, "vqvae"))


def _mae(geo: Any, options: Mapping[str, Any]) -> Teacher:
    from pcdsl.distill.teachers.mae import MAEOptions, MAETeacher

    return MAETeacher(geo, read_options(MAEOptions, options, "mae"))


def _pixels(geo: Any, options: Mapping[str, Any]) -> Teacher:
    from pcdsl.distill.teachers.pixels import PixelsTeacher

    if options:
        raise TeacherError(f"teacher 'pixels' takes no options, got {', '.join(map(repr, options))}")
    return PixelsTeacher(geo)


def _module(geo: Any, options: Mapping[str, Any]) -> Teacher:
    from pcdsl.distill.teachers.module import ModuleOptions, ModuleTeacher

    if "factory" not in options:
        raise TeacherError("module teacher: give the factory, e.g. module(\"my_pkg.encoders:make\")")
    return ModuleTeacher(geo, read_options(ModuleOptions, options, "module"))


KINDS: dict[str, Callable[[Any, Mapping[str, Any]], Teacher]] = {
    "vqvae": _vqvae, "mae": _mae, "pixels": _pixels, "module": _module,
}


def make_teacher(kind: str, options: Mapping[str, Any], image_shape: tuple[int, int, int],
                 patch: tuple[int, int], levels: int | tuple[int, ...] = 256) -> Teacher:
    """An untrained teacher of `kind` for images of `image_shape` (H, W, C) cut into `patch`
    (ph, pw) patches, each channel with `levels` values. Unknown kinds or options, patches that
    do not tile the image, and bad values raise :class:`TeacherError`."""
    if kind not in KINDS:
        raise TeacherError(f"unknown teacher '{kind}'; the teachers are {', '.join(KINDS)}")
    geo = make_geometry(image_shape, patch, levels)
    teacher = KINDS[kind](geo, dict(options))
    teacher.config = {"kind": kind, **teacher.config, "image_shape": list(geo.image_shape),
                      "patch": list(geo.patch), "levels": list(geo.levels)}
    return teacher


def save_teacher(path: str | Path, teacher: Teacher) -> Path:
    """Write `teacher` to one safetensors file (atomically), its configuration in the metadata."""
    from safetensors.numpy import save

    tensors = {k: np.ascontiguousarray(v) for k, v in teacher.state().items()}
    meta = {"format": FORMAT, "version": VERSION, "config": teacher.config}
    path = Path(path)
    write_atomic(path, save(tensors, metadata={"pcdsl": json.dumps(meta, sort_keys=True)}))
    return path


def load_teacher(path: str | Path, kind: str, options: Mapping[str, Any], image_shape: tuple[int, int, int],
                 patch: tuple[int, int], levels: int | tuple[int, ...] = 256) -> Teacher:
    """The teacher saved at `path`, which must have been made with these settings (else
    :class:`TeacherError` naming what differs, so a stale cache is never used)."""
    from safetensors import SafetensorError, safe_open

    teacher = make_teacher(kind, options, image_shape, patch, levels)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {})["pcdsl"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError, KeyError, ValueError) as exc:
        raise TeacherError(f"'{path}' is not a pcdsl teacher file: {exc}") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise TeacherError(f"'{path}': unsupported teacher format {meta.get('format')} version {meta.get('version')}")
    saved = meta.get("config", {})
    if saved != json.loads(json.dumps(teacher.config)):
        diff = sorted(_differences(saved, teacher.config))
        raise TeacherError(f"'{path}' holds a teacher made with other settings ({'; '.join(diff)})")
    teacher.load_state(tensors)
    return teacher


def _differences(saved: Mapping[str, Any], wanted: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: file {a!r}, asked {b!r}")
    return out
