"""Small torch building blocks for the teachers: masked attention blocks and the discretised logistic.

The attention mask is boolean and True where a query may look; masked keys get weight exactly
zero, which is what makes the MAE's locality exact rather than approximate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention from queries `h` to keys/values `kv` under a boolean mask."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not a multiple of {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        q = self.q(h).view(b, n, self.heads, d // self.heads).transpose(1, 2)
        k, v = self.kv(kv).view(b, kv.shape[1], 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # boolean mask: masked keys get weight exactly 0 (the MAE's locality test relies on it)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, n, d))  # type: ignore[no-any-return]


class Block(nn.Module):
    """Pre-norm transformer block. With `cross` the keys/values are a fixed second sequence (the
    MAE encoder's patch embeddings), so stacking blocks never widens what a token can see."""

    def __init__(self, dim: int, heads: int, ratio: int = 2, cross: bool = False) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim) if cross else None
        self.attn = Attention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, ratio * dim), nn.GELU(), nn.Linear(ratio * dim, dim))

    def forward(self, h: torch.Tensor, mask: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        q = self.norm_q(h)
        source = q if self.norm_kv is None or kv is None else self.norm_kv(kv)
        h = h + self.attn(q, source, mask)
        return h + self.mlp(self.norm_mlp(h))  # type: ignore[no-any-return]


def logistic_mixture_loglik(x: torch.Tensor, params: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """log P(x) under a mixture of discretised logistics (PixelCNN++ style), elementwise.

    x: integer values (..., D); params: (..., D, 3, M) holding mixture logits, means (in [-1, 1]
    space) and log scales; levels: (D,) the level count of each value. Level v covers
    [v - 1/2, v + 1/2] scaled into [-1, 1]; the end levels take the tails, so the probabilities of
    all levels sum to one."""
    logits, means, log_scales = params.unbind(dim=-2)
    log_scales = log_scales.clamp(min=-7.0)
    span = levels.to(params.dtype) - 1.0
    xf = (x.to(params.dtype) / span * 2.0 - 1.0).unsqueeze(-1)
    half = (1.0 / span).unsqueeze(-1)
    inv = torch.exp(-log_scales)
    upper, lower = inv * (xf - means + half), inv * (xf - means - half)
    # sigmoid(upper) - sigmoid(lower) = sigmoid(upper) sigmoid(-lower) (1 - exp(lower - upper)): a sum
    # of logs that stays accurate however narrow or far out the bin is (no underflow branch needed)
    has_upper = (x < (levels - 1)).to(params.dtype).unsqueeze(-1)  # the top level has no upper edge
    has_lower = (x > 0).to(params.dtype).unsqueeze(-1)
    log_bin = has_upper * F.logsigmoid(upper) + has_lower * F.logsigmoid(-lower)
    log_bin = log_bin + has_upper * has_lower * torch.log(-torch.expm1(-2.0 * half * inv))
    return torch.logsumexp(log_bin + F.log_softmax(logits, dim=-1), dim=-1)
