"""The architecture a zarrstain bioimage.io package names for its ``pytorch_state_dict`` weights.

bioimage.io consumers (``bioimageio.core``, the zoo's CI) build it as
``ZarrstainNetwork(architecture="fnet", kwargs={...})`` from the package's description and
load the state dict into it: a registered zarrstain architecture's forward followed by its
output head's reduction, so the module computes the channels zarrstain writes, on a
normalized (N, C, [Z,] Y, X) batch whose sizes are multiples of the divisor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zarrstain.models.architecture import BlockContext
from zarrstain.models.registry import get_architecture

__all__ = ["ZarrstainNetwork"]


class ZarrstainNetwork(nn.Module):
    """A zarrstain architecture and its output head as one module (single-pass models).

    Parameters
    ----------
    architecture
        A registered architecture name (``"fnet"``, ...).
    kwargs
        The model card's keyword arguments for it.
    """

    def __init__(self, architecture: str, kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.spec = get_architecture(architecture)
        self.kwargs = dict(kwargs)
        self.module = self.spec.make_module(self.kwargs)
        self.head = self.spec.output_head(self.kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.reduce(self.spec.run(self.module, x, BlockContext.whole(x)))
