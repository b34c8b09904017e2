"""The fnet U-Net (Ounkomol et al. 2018) in 2D and 3D, with pytorch_fnet's module tree.

The module and parameter names match pytorch_fnet's ``fnet_nn_2d`` / ``fnet_nn_3d_params`` nets
(``net_recurse.sub_u...``, ``conv_out``), so their state dicts load unchanged. Each level: two
3-convolutions (conv → BatchNorm → ReLU), a learned 2-stride downsampling convolution, the next
level, a 2-stride transposed convolution, concatenation with the skip (skip first) and two more
3-convolutions. Channels double per level from ``mult_chan``; the output is linear.
"""

from __future__ import annotations

from functools import cache

import torch
from torch import nn

__all__ = ["FnetUNet", "fnet_receptive_radius"]


def _layers(ndim: int) -> tuple[type, type, type]:
    if ndim == 2:
        return nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d
    if ndim == 3:
        return nn.Conv3d, nn.ConvTranspose3d, nn.BatchNorm3d
    raise ValueError(f"ndim must be 2 or 3, not {ndim}")


class _TwoConv(nn.Module):
    def __init__(self, ndim: int, n_in: int, n_out: int) -> None:
        super().__init__()
        conv, _, bn = _layers(ndim)
        self.conv1 = conv(n_in, n_out, kernel_size=3, padding=1)
        self.bn1 = bn(n_out)
        self.relu1 = nn.ReLU()
        self.conv2 = conv(n_out, n_out, kernel_size=3, padding=1)
        self.bn2 = bn(n_out)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(x)))


class _Level(nn.Module):
    def __init__(self, ndim: int, n_in: int, n_out: int, depth: int) -> None:
        super().__init__()
        conv, convt, bn = _layers(ndim)
        self.depth = depth
        self.sub_2conv_more = _TwoConv(ndim, n_in, n_out)
        if depth > 0:
            self.sub_2conv_less = _TwoConv(ndim, 2 * n_out, n_out)
            self.conv_down = conv(n_out, n_out, kernel_size=2, stride=2)
            self.bn0 = bn(n_out)
            self.relu0 = nn.ReLU()
            self.convt = convt(2 * n_out, n_out, kernel_size=2, stride=2)
            self.bn1 = bn(n_out)
            self.relu1 = nn.ReLU()
            self.sub_u = _Level(ndim, n_out, 2 * n_out, depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.sub_2conv_more(x)
        if self.depth == 0:
            return skip
        down = self.relu0(self.bn0(self.conv_down(skip)))
        up = self.relu1(self.bn1(self.convt(self.sub_u(down))))
        return self.sub_2conv_less(torch.cat((skip, up), dim=1))


class FnetUNet(nn.Module):
    """The fnet U-Net.

    Parameters
    ----------
    ndim
        Spatial dims: 2 (y, x) or 3 (z, y, x).
    depth
        Number of downsamplings; every spatial size must be a multiple of ``2**depth``.
    mult_chan
        Channels of the top level (doubled per level).
    in_channels, out_channels
        Input and output channels.
    projection
        When > 0, a learned per-pixel projection (1×1 convolution) of the input channels to
        this many channels comes first: In silico labeling's way of reading a z-stack given as
        channels (13 phase planes → a 2D stain). 0 keeps pytorch_fnet's module tree exactly.
    """

    def __init__(
        self,
        ndim: int = 3,
        depth: int = 4,
        mult_chan: int = 32,
        in_channels: int = 1,
        out_channels: int = 1,
        projection: int = 0,
    ) -> None:
        super().__init__()
        conv, _, _ = _layers(ndim)
        self.ndim, self.depth = ndim, depth
        if projection:
            self.project = conv(in_channels, projection, kernel_size=1)
            in_channels = projection
        self.net_recurse = _Level(ndim, in_channels, mult_chan, depth)
        self.conv_out = conv(mult_chan, out_channels, kernel_size=3, padding=1)

    @property
    def divisor(self) -> int:
        """Every spatial size of the input must be a multiple of this."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict the output channels of an (N, C, *spatial) tensor."""
        if hasattr(self, "project"):
            x = self.project(x)
        return self.conv_out(self.net_recurse(x))


@cache
def fnet_receptive_radius(depth: int) -> int:
    """Largest offset, in input voxels along one axis, that can influence an output voxel.

    Computed exactly by propagating index intervals back through the architecture for every
    output position modulo ``2**depth`` (the 2-stride layers make the field position
    dependent). For depth 4 this gives 108, the value measured on pytorch_fnet's net.
    """

    def level(d: int, lo: int, hi: int) -> tuple[int, int]:
        # input interval of one level's module for an output interval, in that level's units
        if d == 0:
            return lo - 2, hi + 2
        lo, hi = lo - 2, hi + 2  # sub_2conv_less
        skip = (lo - 2, hi + 2)  # the skip's sub_2conv_more
        sub_lo, sub_hi = level(d - 1, lo // 2, hi // 2)  # convt reads index // 2
        down = (2 * sub_lo - 2, 2 * sub_hi + 1 + 2)  # conv_down reads 2q, 2q+1; then more-convs
        return min(skip[0], down[0]), max(skip[1], down[1])

    radius = 0
    for p in range(2**depth):
        lo, hi = level(depth, p - 1, p + 1)  # conv_out
        radius = max(radius, p - lo, hi - p)
    return radius
