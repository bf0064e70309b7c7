"""Layers that compute what torch's own do, faster on CPUs."""

from __future__ import annotations

import torch
from torch import nn

_STATES = 1 << 16  # 16 random bits decide each element


class FastDropout(nn.Dropout):
    """nn.Dropout whose mask takes 16 random bits per element, four elements per 64-bit draw.

    torch's bernoulli_ draws one random number per element: about 8 ms of a 75 ms training step for the
    590k-element mask after the seed network's conv layers on a 2-core CPU, against under 1 ms here
    (bench/, in-process A/B: steps 6% faster). The drop probability is rounded to a multiple of 1/65536
    (exact for 0.25 and 0.5); kept values are scaled by 1 / (1 - p), as nn.Dropout does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        dropped = round(self.p * _STATES)
        if dropped >= _STATES:
            return x * 0.0
        n = x.numel()
        words = torch.randint(-(1 << 63), (1 << 63) - 1, ((n + 3) // 4,), dtype=torch.int64)
        keep = words.view(torch.int16)[:n].view(x.shape) >= dropped - _STATES // 2  # int16 spans [-32768, 32767]
        return x * keep * (_STATES / (_STATES - dropped))
