"""An example encoder for the `module` teacher (see docs/teachers.md): 4x4 patches, 8 features.

`module("teacher_module_example:make_encoder", weights = "encoder.safetensors")` in a recipe; the
factory takes no arguments and returns a torch module mapping (N, C, H, W) in [0, 1] to a
feature map (N, d, H / 4, W / 4). `make_tokens_encoder` returns (N, P, d) instead.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchEncoder(nn.Module):
    def __init__(self, channels: int = 1, dim: int = 8, patch: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x))


class TokensEncoder(PatchEncoder):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).flatten(2).transpose(1, 2)


class WrongShape(PatchEncoder):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).flatten(1)


def make_encoder() -> nn.Module:
    return PatchEncoder()


def make_tokens_encoder() -> nn.Module:
    return TokensEncoder()


def make_wrong_shape() -> nn.Module:
    return WrongShape()


def not_a_module() -> object:
    return "no"
