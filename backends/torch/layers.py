"""Lowering rules: one class per plan layer kind, each with the three passes
every query is built from: forward (sum- or max-product), flows (top-down
expected counts) and down (top-down choice of active units for MAP and
sampling). No Python loop over nodes: each layer is a few tensor ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pcdsl.plan import InputLayer, ProductLayer, SumLayer

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
MAX_CHUNK_ELEMENTS = 1 << 24  # bounds (batch, F, M, C) temporaries of max-product sums


@dataclass
class Batch:
    """Evidence on the device: category indices (missing -> 0), real values, missing mask."""

    index: torch.Tensor  # (B, V) long
    real: torch.Tensor  # (B, V) float
    missing: torch.Tensor  # (B, V) bool


class InputRule:
    def __init__(self, layer: InputLayer, device: torch.device, dtype: torch.dtype):
        self.layer = layer
        self.start, self.stop = layer.start, layer.stop
        self.var = torch.as_tensor(layer.var, device=device)
        self.params = {k: torch.as_tensor(v, device=device, dtype=dtype) for k, v in layer.params.items()}

    def values(self, batch: Batch, mode: str) -> torch.Tensor:
        missing = batch.missing[:, self.var]
        if self.layer.family == "categorical":
            lp = self.params["log_probs"]  # (U, K)
            flat = torch.arange(lp.shape[0], device=lp.device) * lp.shape[1] + batch.index[:, self.var]
            observed = lp.reshape(-1)[flat]
            free = lp.amax(dim=1) if mode == "max" else torch.zeros_like(lp[:, 0])
        else:
            mean, std = self.params["mean"], self.params["std"]
            z = (batch.real[:, self.var] - mean) / std
            observed = -0.5 * z * z - torch.log(std) - LOG_SQRT_2PI
            free = -torch.log(std) - LOG_SQRT_2PI if mode == "max" else torch.zeros_like(mean)
        return torch.where(missing, free.expand_as(observed), observed)

    def forward(self, buf: torch.Tensor, batch: Batch, mode: str) -> None:
        buf[:, self.start:self.stop] = self.values(batch, mode)

    def flows(self, buf: torch.Tensor, flow: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        f = flow[:, self.start:self.stop]  # (B, U)
        missing = batch.missing[:, self.var]
        if self.layer.family == "categorical":
            lp = self.params["log_probs"]
            units, k = lp.shape
            flat = torch.arange(units, device=lp.device) * k + batch.index[:, self.var]
            counts = torch.zeros(units * k, dtype=f.dtype, device=f.device)
            counts.index_add_(0, flat[~missing], f[~missing])
            free = (f * missing).sum(dim=0)
            return {"counts": counts.view(units, k) + free[:, None] * torch.exp(lp)}
        mean, std = self.params["mean"], self.params["std"]
        x = torch.where(missing, mean.expand_as(f), batch.real[:, self.var])
        xx = torch.where(missing, (mean * mean + std * std).expand_as(f), x * x)
        return {"n": f.sum(dim=0), "sx": (f * x).sum(dim=0), "sxx": (f * xx).sum(dim=0)}

    def down(self, active: torch.Tensor, buf: torch.Tensor, batch: Batch, out: torch.Tensor, mode: str,
             gen: torch.Generator | None) -> None:
        """Write a value for each missing variable whose input unit is active."""
        pick = (active[:, self.start:self.stop] > 0) & batch.missing[:, self.var]
        rows, units = pick.nonzero(as_tuple=True)
        if rows.numel() == 0:
            return
        if self.layer.family == "categorical":
            lp = self.params["log_probs"][units]  # (P, K)
            if mode == "sample":
                lp = lp + _gumbel(lp.shape, lp, gen)
            values = lp.argmax(dim=1).to(out.dtype)
        else:
            values = self.params["mean"][units]
            if mode == "sample":
                noise = torch.randn(values.shape, generator=gen, device=values.device, dtype=values.dtype)
                values = values + self.params["std"][units] * noise
        out[rows, self.var[units]] = values.to(out.dtype)


class ProductRule:
    def __init__(self, layer: ProductLayer, device: torch.device, dtype: torch.dtype):
        self.start, self.stop = layer.start, layer.stop
        self.index = torch.as_tensor(layer.index, device=device)
        self.flat = self.index.reshape(-1)

    def forward(self, buf: torch.Tensor, batch: Batch, mode: str) -> None:
        out = buf[:, self.index[:, 0]]
        for k in range(1, self.index.shape[1]):
            out += buf[:, self.index[:, k]]
        buf[:, self.start:self.stop] = out

    def _spread(self, target: torch.Tensor, parent: torch.Tensor) -> None:
        k = self.index.shape[1]
        target.index_add_(1, self.flat, parent.repeat_interleave(k, dim=1))

    def flows(self, buf: torch.Tensor, flow: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        self._spread(flow, flow[:, self.start:self.stop])
        return {}

    def down(self, active: torch.Tensor, buf: torch.Tensor, batch: Batch, out: torch.Tensor, mode: str,
             gen: torch.Generator | None) -> None:
        self._spread(active, active[:, self.start:self.stop])


class SumRule:
    def __init__(self, layer: SumLayer, device: torch.device, dtype: torch.dtype):
        self.layer = layer
        self.start, self.stop = layer.start, layer.stop
        self.index = torch.as_tensor(layer.index, device=device)
        self.weights = torch.as_tensor(layer.weights, device=device, dtype=dtype)  # (F, M, C)
        self.log_weights = torch.log(self.weights)
        self.fold, self.units, self.inputs = layer.shape

    def _inputs(self, buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = buf[:, self.index]  # (B, F, C)
        m = x.amax(dim=2, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all -inf stays -inf, never NaN
        return x, m

    def forward(self, buf: torch.Tensor, batch: Batch, mode: str) -> None:
        b = buf.shape[0]
        if mode == "max":
            out = torch.cat([self._max(buf[i:i + n]) for i, n in self._chunks(b)], dim=0)
        else:
            x, m = self._inputs(buf)
            e = torch.exp(x - m).transpose(0, 1)  # (F, B, C)
            s = torch.bmm(e, self.weights.transpose(1, 2))  # (F, B, M)
            out = torch.log(s).transpose(0, 1) + m  # (B, F, M)
        buf[:, self.start:self.stop] = out.reshape(b, -1)

    def _chunks(self, b: int) -> list[tuple[int, int]]:
        step = max(1, MAX_CHUNK_ELEMENTS // max(1, self.fold * self.units * self.inputs))
        return [(i, min(step, b - i)) for i in range(0, b, step)]

    def _max(self, buf: torch.Tensor) -> torch.Tensor:
        x = buf[:, self.index]  # (b, F, C)
        return (self.log_weights[None] + x[:, :, None, :]).amax(dim=3)

    def flows(self, buf: torch.Tensor, flow: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        b = buf.shape[0]
        x, m = self._inputs(buf)
        value = buf[:, self.start:self.stop].view(b, self.fold, self.units)
        f = flow[:, self.start:self.stop].view(b, self.fold, self.units)
        # r = f * p(x_n)^-1 scaled by exp(m): the parent's flow per unit of its value
        r = torch.where(torch.isfinite(value), f * torch.exp(m - value), torch.zeros_like(f)).transpose(0, 1)
        e = torch.exp(x - m).transpose(0, 1)  # (F, B, C)
        child = e * torch.bmm(r, self.weights)  # (F, B, C)
        flow.index_add_(1, self.index.reshape(-1), child.transpose(0, 1).reshape(b, -1))
        return {"weights": self.weights * torch.bmm(r.transpose(1, 2), e)}  # (F, M, C)

    def down(self, active: torch.Tensor, buf: torch.Tensor, batch: Batch, out: torch.Tensor, mode: str,
             gen: torch.Generator | None) -> None:
        """Activate, for each active sum unit, its best (map) or a drawn (sample) input."""
        b = buf.shape[0]
        a = active[:, self.start:self.stop].view(b, self.fold, self.units) > 0
        any_active = a.any(dim=2)  # (B, F): at most one active unit per group in a valid circuit
        unit = a.to(torch.uint8).argmax(dim=2)  # (B, F)
        fold = torch.arange(self.fold, device=buf.device)[None, :].expand_as(unit)
        scores = self.log_weights[fold, unit] + buf[:, self.index]  # (B, F, C)
        if mode == "sample":
            scores = scores + _gumbel(scores.shape, scores, gen)
        choice = scores.argmax(dim=2)  # (B, F)
        slot = self.index[fold, choice]
        active.scatter_add_(1, slot, any_active.to(active.dtype))


def _gumbel(shape: torch.Size | tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(shape, generator=gen, device=like.device, dtype=like.dtype)
    tiny = torch.finfo(like.dtype).tiny
    exponential = -torch.log(u.clamp_min(tiny))
    return -torch.log(exponential.clamp_min(tiny))


RULES = {InputLayer: InputRule, ProductLayer: ProductRule, SumLayer: SumRule}
