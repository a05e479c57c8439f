"""The MAE teacher: a small masked autoencoder whose feature for patch i sees only its 3x3 neighbourhood.

Encoder: each patch is embedded (linear, plus a learned position); a token's state starts at its
own embedding and each of `layers` blocks lets it attend to the EMBEDDINGS (not the states) of the
patches in its 3x3 window. Because keys and values are always the fixed embeddings, depth never
widens the window: the feature of patch i is a function of the patches around i alone, by
construction. While training, a fraction `mask` of the patches of each image is hidden: their
embeddings become a learned mask token, and no token may attend to a hidden neighbour.

Decoder (training only): full self-attention over all encoder outputs, predicting the pixels of
the hidden patches (mean squared error in [-1, 1] units, hidden patches only, as in He et al.).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pcdsl.distill.teachers.common import (
    Geometry,
    Log,
    TeacherError,
    TrainedTeacher,
    check_fit_inputs,
    check_images,
    neighbourhood_mask,
    optimise,
    patchify,
    run_epochs,
    seeded,
    to_unit,
)
from pcdsl.distill.teachers.layers import Block


@dataclass(frozen=True)
class MAEOptions:
    mask: float = 0.75
    dim: int = 64
    epochs: int = 3
    seed: int = 0
    lr: float = 2e-3
    batch: int = 128
    layers: int = 2  # encoder blocks (all local)
    decoder_layers: int = 2
    heads: int = 4

    def __post_init__(self) -> None:
        if not 0.0 < self.mask < 1.0:
            raise TeacherError(f"mae: mask must be a fraction strictly between 0 and 1, got {self.mask}")
        for name in ("dim", "epochs", "batch", "layers", "decoder_layers", "heads"):
            if getattr(self, name) < 1:
                raise TeacherError(f"mae: {name} must be at least 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise TeacherError(f"mae: dim ({self.dim}) must be a multiple of heads ({self.heads})")
        if not (self.lr > 0 and self.seed >= 0):
            raise TeacherError("mae: lr must be > 0 and seed >= 0")


class MAENet(nn.Module):
    local: torch.Tensor
    everything: torch.Tensor

    def __init__(self, geo: Geometry, o: MAEOptions) -> None:
        super().__init__()
        p, d = geo.patches, o.dim
        self.embed = nn.Linear(geo.patch_dims, d)
        self.position = nn.Parameter(torch.randn(p, d) * 0.02)
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.encoder = nn.ModuleList(Block(d, o.heads, cross=True) for _ in range(o.layers))
        self.norm = nn.LayerNorm(d)
        self.bridge = nn.Linear(d, d)
        self.decoder_position = nn.Parameter(torch.randn(p, d) * 0.02)
        self.decoder = nn.ModuleList(Block(d, o.heads) for _ in range(o.decoder_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, geo.patch_dims)
        self.register_buffer("local", torch.from_numpy(neighbourhood_mask(geo)), persistent=False)
        self.register_buffer("everything", torch.ones(p, p, dtype=torch.bool), persistent=False)

    def encode(self, tokens: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """Patch rows (N, P, C*ph*pw) -> features (N, P, dim); `visible` (N, P) hides patches."""
        e = self.embed(tokens) + self.position
        mask = self.local
        if visible is not None:
            e = torch.where(visible.unsqueeze(-1), e, self.mask_token + self.position)
            own = torch.eye(len(self.local), dtype=torch.bool)
            mask = (self.local & (visible.unsqueeze(1) | own)).unsqueeze(1)  # (N, 1, P, P): every head
        h = e
        for block in self.encoder:
            h = block(h, mask, kv=e)
        return self.norm(h)  # type: ignore[no-any-return]

    def reconstruct(self, features: torch.Tensor) -> torch.Tensor:
        h = self.bridge(features) + self.decoder_position
        for block in self.decoder:
            h = block(h, self.everything)
        return self.head(self.decoder_norm(h))  # type: ignore[no-any-return]


class MAETeacher(TrainedTeacher):
    """See the module docstring."""

    name = "mae"
    o: MAEOptions

    def __init__(self, geo: Geometry, options: MAEOptions) -> None:
        super().__init__(geo, options)
        with seeded(options.seed):
            self.net = MAENet(geo, options)

    def modules(self) -> dict[str, nn.Module]:
        return {"mae": self.net}

    def fit(self, images: np.ndarray, valid: np.ndarray | None, *, progress: bool = True, log: Log = print) -> None:
        images, valid = check_fit_inputs(images, valid, self.geo)
        o, net = self.o, self.net
        gen = torch.Generator().manual_seed(o.seed)
        with seeded(o.seed):
            opt = torch.optim.AdamW(net.parameters(), lr=o.lr, weight_decay=0.05)
            net.train()

            def step(idx: torch.Tensor) -> float:
                return optimise(opt, self._loss(images[idx.numpy()], gen))

            for epoch, loss in run_epochs(len(images), o.epochs, o.batch, opt, o.lr, gen, step, "mae", progress):
                msg = f"mae epoch {epoch + 1}/{o.epochs}: hidden-patch mse {loss:.4f}"
                if valid is not None:
                    msg += f", validation {self._valid_loss(valid):.4f}"
                log(msg)
            net.eval()
        self.fitted = True

    def _hidden(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n, P) bool: True for the visible patches, exactly round(mask * P) hidden per image."""
        p = self.geo.patches
        hide = min(max(round(self.o.mask * p), 1), p - 1) if p > 1 else 0
        ranks = torch.rand(n, p, generator=gen).argsort(dim=1).argsort(dim=1)
        return ranks >= hide

    def _loss(self, chunk: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        tokens = patchify(to_unit(chunk, self.geo), self.geo)
        visible = self._hidden(len(chunk), gen)
        pred = self.net.reconstruct(self.net.encode(tokens, visible))
        hidden = (~visible).unsqueeze(-1).to(pred.dtype)
        err = ((pred - tokens) ** 2 * hidden).sum() / (hidden.sum() * tokens.shape[-1]).clamp(min=1)
        return err

    @torch.no_grad()
    def _valid_loss(self, valid: np.ndarray, batch: int = 512) -> float:
        gen = torch.Generator().manual_seed(self.o.seed + 1)  # the same hidden patches every epoch
        self.net.eval()
        total = sum(float(self._loss(valid[s:s + batch], gen)) * len(valid[s:s + batch])
                    for s in range(0, len(valid), batch))
        self.net.train()
        return total / len(valid)

    @torch.no_grad()
    def features(self, images: np.ndarray, batch: int = 512) -> np.ndarray:
        self.require_fit()
        images = check_images(images, self.geo)
        out = [self.net.encode(patchify(to_unit(images[s:s + batch], self.geo), self.geo)).numpy()
               for s in range(0, len(images), batch)]
        return np.concatenate(out).astype(np.float32, copy=False)

    def bpd(self, images: np.ndarray) -> None:
        return None  # an MAE has no likelihood
