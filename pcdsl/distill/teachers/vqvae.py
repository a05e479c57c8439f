"""The VQ-VAE teacher: one code per patch, a per-patch decoder, an autoregressive prior over codes.

Layout, all on the patch grid (a ph x pw patch is one grid cell holding C*ph*pw values):

- encoder: a linear layer per patch, a residual 3x3 convolution over the grid (so a patch's vector
  sees its 8 neighbours), a residual linear layer, a linear layer to `dim`;
- vector quantisation with an EMA codebook, commitment loss, and dead codes restarted on random
  encoder outputs of the current batch;
- decoder: per-patch linear layers only (`patch_decoder = independent`: each patch decoded from
  its own code) or a 3x3 first layer (`neighbourhood`), giving a mixture of discretised logistics
  per value;
- prior: a causal transformer over the codes in raster order, trained after the VQ-VAE on the
  training images' codes.

bits/dim = (-log p_prior(z) - log p(x | z)) / (H W C ln 2) with z the encoder's codes: the number a
VQ-VAE user reports (an upper bound on -log2 p(x) / dims of the model's marginal).

Features are the encoder's pre-quantisation vectors: k-means on them can split a code's patches
further (progressive growing needs that), which code embeddings, at most `codes` distinct points,
cannot. `features = code` gives the embeddings instead.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pcdsl.distill.teachers.common import (
    Geometry,
    Log,
    TeacherError,
    TrainedTeacher,
    check_fit_inputs,
    check_images,
    optimise,
    patchify,
    run_epochs,
    seeded,
    to_unit,
)
from pcdsl.distill.teachers.layers import Block, logistic_mixture_loglik

RESTART_EVERY = 20  # training steps between dead-code checks


@dataclass(frozen=True)
class VQVAEOptions:
    patch_decoder: str = "independent"  # or "neighbourhood": the decoder's first layer is 3x3
    codes: int = 256
    dim: int = 64
    epochs: int = 3
    lr: float = 1e-3
    seed: int = 0
    hidden: int = 96  # width of encoder and decoder
    mixtures: int = 4  # logistic components per value
    commitment: float = 0.25
    decay: float = 0.99  # EMA codebook
    batch: int = 128
    prior_epochs: int = 3
    prior_dim: int = 64
    prior_layers: int = 2
    prior_heads: int = 4
    prior_lr: float = 2e-3
    features: str = "encoder"  # or "code": the quantised embedding

    def __post_init__(self) -> None:
        if self.patch_decoder not in ("independent", "neighbourhood"):
            raise TeacherError(f"vqvae: patch_decoder must be independent or neighbourhood, got {self.patch_decoder!r}")
        if self.features not in ("encoder", "code"):
            raise TeacherError(f"vqvae: features must be encoder or code, got {self.features!r}")
        for name in ("codes", "dim", "epochs", "hidden", "mixtures", "batch", "prior_epochs", "prior_dim",
                     "prior_layers", "prior_heads"):
            if getattr(self, name) < (2 if name == "codes" else 1):
                raise TeacherError(f"vqvae: {name} must be at least {2 if name == 'codes' else 1}")
        if self.prior_dim % self.prior_heads:
            raise TeacherError(f"vqvae: prior_dim ({self.prior_dim}) must be a multiple of prior_heads")
        if not (self.lr > 0 and self.prior_lr > 0 and 0 < self.decay < 1 and self.commitment >= 0 and self.seed >= 0):
            raise TeacherError("vqvae: lr and prior_lr must be > 0, decay in (0, 1), commitment >= 0, seed >= 0")


class Residual(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)  # type: ignore[no-any-return]


class Neighbours(nn.Module):
    """(N, P, c) -> (N, P, 9c): each patch's vector beside its 8 neighbours' (zeros off the grid).
    Followed by a linear layer this is a 3x3 convolution over the patch grid; as one matrix
    product it is several times faster on a CPU than a convolution on a 7x7 map."""

    def __init__(self, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, p, c = x.shape
        rows, cols = self.grid
        padded = F.pad(x.reshape(n, rows, cols, c), (0, 0, 1, 1, 1, 1))
        shifted = [padded[:, dr:dr + rows, dc:dc + cols] for dr in range(3) for dc in range(3)]
        return torch.cat(shifted, dim=-1).reshape(n, p, 9 * c)


class VQVAENet(nn.Module):
    """Encoder, codebook and decoder, on patch rows (N, P, values): linear layers act per patch."""

    codebook: torch.Tensor
    ema_count: torch.Tensor
    ema_sum: torch.Tensor

    def __init__(self, geo: Geometry, o: VQVAEOptions) -> None:
        super().__init__()
        d, h = geo.patch_dims, o.hidden
        self.encoder = nn.Sequential(
            nn.Linear(d, h), Residual(nn.Sequential(nn.GELU(), Neighbours(geo.grid), nn.Linear(9 * h, h))),
            Residual(nn.Sequential(nn.GELU(), nn.Linear(h, h))), nn.GELU(), nn.Linear(h, o.dim))
        first: nn.Module = nn.Linear(o.dim, h)
        if o.patch_decoder == "neighbourhood":
            first = nn.Sequential(Neighbours(geo.grid), nn.Linear(9 * o.dim, h))
        last = nn.Linear(h, d * 3 * o.mixtures)
        self.decoder = nn.Sequential(first, Residual(nn.Sequential(nn.GELU(), nn.Linear(h, h))), nn.GELU(), last)
        with torch.no_grad():  # components start spread over the range and narrow (scale ~ range / 40)
            bias = last.bias.view(d, 3, o.mixtures)
            bias.zero_()
            bias[:, 1] = torch.linspace(-0.8, 0.8, o.mixtures) if o.mixtures > 1 else 0.0
            bias[:, 2] = -3.0
        self.register_buffer("codebook", torch.zeros(o.codes, o.dim))
        self.register_buffer("ema_count", torch.zeros(o.codes))
        self.register_buffer("ema_sum", torch.zeros(o.codes, o.dim))
        self.mixtures = o.mixtures

    def encode(self, x: torch.Tensor, geo: Geometry) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> pre-quantisation vectors (N, P, dim)."""
        return self.encoder(patchify(x, geo))  # type: ignore[no-any-return]

    def quantise(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code of every row of z (..., dim)."""
        flat = z.reshape(-1, z.shape[-1])
        dist = (flat * flat).sum(1, keepdim=True) - 2 * flat @ self.codebook.T + (self.codebook ** 2).sum(1)
        return dist.argmin(1).view(z.shape[:-1])

    def decode(self, zq: torch.Tensor, geo: Geometry) -> torch.Tensor:
        """(N, P, dim) -> logistic-mixture parameters (N, P, C*ph*pw, 3, M)."""
        out = self.decoder(zq)
        return out.reshape(out.shape[0], out.shape[1], geo.patch_dims, 3, self.mixtures)  # type: ignore[no-any-return]


class Prior(nn.Module):
    """A causal transformer over the P codes of an image in raster order."""

    causal: torch.Tensor

    def __init__(self, codes: int, patches: int, o: VQVAEOptions) -> None:
        super().__init__()
        self.tokens = nn.Embedding(codes + 1, o.prior_dim)  # the last token starts every sequence
        self.position = nn.Parameter(torch.randn(patches, o.prior_dim) * 0.02)
        self.blocks = nn.ModuleList(Block(o.prior_dim, o.prior_heads) for _ in range(o.prior_layers))
        self.norm = nn.LayerNorm(o.prior_dim)
        self.head = nn.Linear(o.prior_dim, codes)
        self.register_buffer("causal", torch.ones(patches, patches, dtype=torch.bool).tril(), persistent=False)
        self.start = codes

    def loglik(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) in nats for every row of z (N, P)."""
        shifted = torch.cat([torch.full_like(z[:, :1], self.start), z[:, :-1]], dim=1)
        h = self.tokens(shifted) + self.position
        for block in self.blocks:
            h = block(h, self.causal)
        logp = self.head(self.norm(h)).log_softmax(-1)
        return logp.gather(-1, z.unsqueeze(-1)).squeeze(-1).sum(1)


class VQVAETeacher(TrainedTeacher):
    """See the module docstring."""

    name = "vqvae"
    o: VQVAEOptions

    def __init__(self, geo: Geometry, options: VQVAEOptions) -> None:
        super().__init__(geo, options)
        with seeded(options.seed):
            self.net = VQVAENet(geo, options)
            self.prior = Prior(options.codes, geo.patches, options)
        self.levels = torch.tensor([v for v in geo.levels for _ in range(geo.patch[0] * geo.patch[1])])

    def modules(self) -> dict[str, nn.Module]:
        return {"vqvae": self.net, "prior": self.prior}

    # -- training -------------------------------------------------------------------------------

    def fit(self, images: np.ndarray, valid: np.ndarray | None, *, progress: bool = True, log: Log = print) -> None:
        images, valid = check_fit_inputs(images, valid, self.geo)
        gen = torch.Generator().manual_seed(self.o.seed)
        with seeded(self.o.seed):
            start = time.perf_counter()
            self._fit_vqvae(images, valid, gen, progress, log)
            codes = self.codes(images)
            log(f"vqvae: encoder, codebook and decoder trained in {time.perf_counter() - start:.0f} s")
            start = time.perf_counter()
            self._fit_prior(codes, None if valid is None else self.codes(valid), gen, progress, log)
            log(f"vqvae: prior trained in {time.perf_counter() - start:.0f} s")
        self.fitted = True
        if valid is not None:
            log(f"vqvae: validation bits/dim {self._bpd(valid):.4f}")

    def _fit_vqvae(self, images: np.ndarray, valid: np.ndarray | None, gen: torch.Generator, progress: bool,
                   log: Log) -> None:
        net, o = self.net, self.o
        opt = torch.optim.Adam(net.parameters(), lr=o.lr)
        self._wins, self._steps = torch.zeros(o.codes, dtype=torch.int64), 0
        restarts, used = 0, torch.zeros(o.codes, dtype=torch.bool)

        def step(idx: torch.Tensor) -> float:
            nonlocal restarts
            loss, z, codes = self._vq_loss(images[idx.numpy()], gen)
            value = optimise(opt, loss)
            restarts += self._restart_dead(z.detach(), codes, gen)
            used[codes.flatten()] = True
            return value

        net.train()
        for epoch, loss in run_epochs(len(images), o.epochs, o.batch, opt, o.lr, gen, step, "vqvae", progress):
            msg = (f"vqvae epoch {epoch + 1}/{o.epochs}: loss {loss:.4f}, "
                   f"{int(used.sum())}/{o.codes} codes used, {restarts} restarted")
            if valid is not None:
                msg += f", validation reconstruction bits/dim {self._recon_bpd(valid):.4f}"
            log(msg)
            restarts = 0
            used.zero_()
        net.eval()

    def _vq_loss(self, chunk: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One training step's loss (nats per value + commitment); updates the EMA codebook."""
        net, geo = self.net, self.geo
        x = to_unit(chunk, geo)
        z = net.encode(x, geo)
        flat = z.detach().reshape(-1, z.shape[-1])
        if float(net.ema_count.sum()) == 0:  # first batch: codes start on encoder outputs
            self._init_codebook(flat, gen)
        codes = net.quantise(z.detach())
        zq = net.codebook[codes]
        self._ema_update(flat, codes.flatten())
        params = net.decode(z + (zq - z).detach(), geo)  # straight-through
        target = patchify(torch.from_numpy(np.ascontiguousarray(chunk).astype(np.int64)).permute(0, 3, 1, 2), geo)
        nll = -logistic_mixture_loglik(target, params, self.levels).mean()
        return nll + self.o.commitment * F.mse_loss(z, zq), z, codes

    def _init_codebook(self, flat: torch.Tensor, gen: torch.Generator) -> None:
        pick = torch.randint(len(flat), (self.o.codes,), generator=gen)
        self.net.codebook.copy_(flat[pick] + 1e-3 * torch.randn(self.o.codes, flat.shape[1], generator=gen))
        self.net.ema_sum.copy_(self.net.codebook)
        self.net.ema_count.fill_(1.0)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        net, decay, k = self.net, self.o.decay, self.o.codes
        onehot = F.one_hot(codes, k).to(flat.dtype)  # a matmul, not index_add: deterministic
        net.ema_count.mul_(decay).add_(onehot.sum(0), alpha=1 - decay)
        net.ema_sum.mul_(decay).add_(onehot.T @ flat, alpha=1 - decay)
        n = net.ema_count.sum()
        smoothed = (net.ema_count + 1e-5) / (n + k * 1e-5) * n
        net.codebook.copy_(net.ema_sum / smoothed.unsqueeze(1))

    @torch.no_grad()
    def _restart_dead(self, z: torch.Tensor, codes: torch.Tensor, gen: torch.Generator) -> int:
        """Codes that won no vector in the last RESTART_EVERY steps move to random encoder outputs of
        this batch (a fast test: the EMA counts of unused codes take hundreds of steps to fade)."""
        net = self.net
        self._wins += torch.bincount(codes.flatten(), minlength=self.o.codes)
        self._steps += 1
        if self._steps % RESTART_EVERY:
            return 0
        dead = (self._wins == 0).nonzero().flatten()
        self._wins.zero_()
        if len(dead) == 0:
            return 0
        flat = z.reshape(-1, z.shape[-1])
        fresh = flat[torch.randint(len(flat), (len(dead),), generator=gen)]
        net.codebook[dead] = fresh
        net.ema_sum[dead] = fresh * float(net.ema_count.mean())
        net.ema_count[dead] = net.ema_count.mean()
        return len(dead)

    def _fit_prior(self, codes: torch.Tensor, valid: torch.Tensor | None, gen: torch.Generator, progress: bool,
                   log: Log) -> None:
        o, prior = self.o, self.prior
        opt = torch.optim.AdamW(prior.parameters(), lr=o.prior_lr, weight_decay=0.01)

        def step(idx: torch.Tensor) -> float:
            return optimise(opt, -prior.loglik(codes[idx]).mean())

        prior.train()
        for epoch, loss in run_epochs(len(codes), o.prior_epochs, o.batch, opt, o.prior_lr, gen, step, "vqvae prior",
                                      progress):
            msg = f"vqvae prior epoch {epoch + 1}/{o.prior_epochs}: {loss / math.log(2):.3f} bits/image"
            if valid is not None:
                msg += f", validation {self._prior_bits(valid):.3f} bits/image"
            log(msg)
        prior.eval()

    # -- queries ----------------------------------------------------------------------------------

    @torch.no_grad()
    def codes(self, images: np.ndarray, batch: int = 512) -> torch.Tensor:
        """The code of every patch, (N, P) int64."""
        out = [self.net.quantise(self.net.encode(to_unit(images[s:s + batch], self.geo), self.geo))
               for s in range(0, len(images), batch)]
        return torch.cat(out)

    @torch.no_grad()
    def features(self, images: np.ndarray, batch: int = 512) -> np.ndarray:
        self.require_fit()
        images = check_images(images, self.geo)
        out = []
        for s in range(0, len(images), batch):
            z = self.net.encode(to_unit(images[s:s + batch], self.geo), self.geo)
            out.append((self.net.codebook[self.net.quantise(z)] if self.o.features == "code" else z).numpy())
        return np.concatenate(out).astype(np.float32, copy=False)

    def bpd(self, images: np.ndarray) -> float:
        self.require_fit()
        return self._bpd(check_images(images, self.geo))

    @torch.no_grad()
    def _loglik_parts(self, images: np.ndarray, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: log p(x | z) and log p(z), in nats."""
        rec, pri = [], []
        for s in range(0, len(images), batch):
            chunk = images[s:s + batch]
            z = self.net.encode(to_unit(chunk, self.geo), self.geo)
            codes = self.net.quantise(z)
            params = self.net.decode(self.net.codebook[codes], self.geo)
            target = patchify(torch.from_numpy(chunk.astype(np.int64)).permute(0, 3, 1, 2), self.geo)
            rec.append(logistic_mixture_loglik(target, params, self.levels).sum((1, 2)))
            pri.append(self.prior.loglik(codes))
        return torch.cat(rec), torch.cat(pri)

    def _bpd(self, images: np.ndarray) -> float:
        rec, pri = self._loglik_parts(images)
        return float(-(rec + pri).double().mean()) / (self.geo.dims * math.log(2))

    def _recon_bpd(self, images: np.ndarray) -> float:
        rec, _ = self._loglik_parts(images)
        return float(-rec.double().mean()) / (self.geo.dims * math.log(2))

    @torch.no_grad()
    def _prior_bits(self, codes: torch.Tensor, batch: int = 512) -> float:
        total = sum(float(self.prior.loglik(codes[s:s + batch]).double().sum()) for s in range(0, len(codes), batch))
        return -total / len(codes) / math.log(2)
