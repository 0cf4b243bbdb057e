"""Stand-in networks of HTDemucs's shape for the engine (`WindowedSeparator.use_network`)."""

from __future__ import annotations

import torch
from torch import nn


class IdentityNetwork(nn.Module):
    """Every source is the window's input itself, a view, at no cost: the engine must give
    back its input (a known answer), benchmarks time the engine's own work, and encoders
    downstream get real music rather than silence, which LAME would encode for almost nothing."""

    def __init__(self, sources: int) -> None:
        super().__init__()
        self.sources = sources

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        b, c, n = mix.shape
        return mix[:, None].expand(b, self.sources, c, n)
