"""The `pixels` teacher (the ablation): no training, a patch's feature is its raw pixel values."""

from __future__ import annotations

import numpy as np

from pcdsl.distill.teachers.common import Geometry, Log, check_images


class PixelsTeacher:
    """Features (N, P, C*ph*pw): the patch's values as float32, in the data's own units, ordered
    (channel, row, column) within the patch."""

    name = "pixels"

    def __init__(self, geo: Geometry) -> None:
        self.geo = geo
        self.config: dict[str, object] = {"options": {}}

    def fit(self, images: np.ndarray, valid: np.ndarray | None, *, progress: bool = True, log: Log = print) -> None:
        check_images(images, self.geo)  # nothing to learn; bad images still fail here, early

    def features(self, images: np.ndarray, batch: int = 512) -> np.ndarray:
        images = check_images(images, self.geo)
        n, (h, w, c), (ph, pw) = len(images), self.geo.image_shape, self.geo.patch
        blocks = images.reshape(n, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 5, 2, 4)
        return blocks.reshape(n, self.geo.patches, self.geo.patch_dims).astype(np.float32)

    def bpd(self, images: np.ndarray) -> None:
        return None

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, tensors: dict[str, np.ndarray]) -> None:
        pass
