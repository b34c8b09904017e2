"""An exponential moving average of a module's weights (diffusion models sample with it)."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Averaged copy of ``module``: after each step, ``avg ← d·avg + (1 − d)·weights``.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after n updates, so short runs
    are not dominated by the initial weights. Buffers (BatchNorm statistics) are copied.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(module).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = float(decay), 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Fold the module's current weights into the average."""
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        for avg, p in zip(self.module.parameters(), module.parameters(), strict=True):
            avg.lerp_(p.detach(), 1 - d)
        for avg, b in zip(self.module.buffers(), module.buffers(), strict=True):
            avg.copy_(b)
