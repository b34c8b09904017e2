"""A lean inference copy of the fnet U-Net: same function, less memory per voxel.

Prediction runs this instead of :class:`~zarrstain.models.nets.unet.FnetUNet` (the architecture's
``inference_module``); training and model packages keep the original module tree.

- Eval-mode BatchNorm is an affine map per channel, folded into the preceding convolution's
  weights and bias, so no normalized copy of a feature map is ever allocated.
- ReLUs run in place.
- The concatenation (skip, up) before each level's second half is never built: a convolution
  over ``cat(skip, up)`` is the sum of two convolutions, one over each half of its input
  channels. The skip half is convolved as soon as the skip exists, so the skip is freed before
  the level descends; the up half is added in place afterwards.

Results equal the original module's to float32 rounding (sums run in another order); at the top
level the peak falls from about five feature maps of the top width alive at once to three.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from zarrstain.models.nets.unet import FnetUNet, _Level, _TwoConv

__all__ = ["lean_fnet"]


def _fold(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm, transposed: bool = False):
    """(weight, bias) of ``bn(conv(x))`` as one convolution."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shape = [1, -1] if transposed else [-1, 1]  # out channels: dim 1 of transposed weights
    weight = conv.weight * scale.reshape(*shape, *([1] * (conv.weight.dim() - 2)))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    bias = (bias - bn.running_mean) * scale + bn.bias
    return weight.detach().clone(), bias.detach().clone()


class _Conv(nn.Module):
    """A folded convolution (+ in-place ReLU) with the original's stride and padding."""

    def __init__(self, conv: nn.Module, bn=None, relu: bool = True, transposed: bool = False):
        super().__init__()
        weight, bias = (
            _fold(conv, bn, transposed)
            if bn is not None
            else (conv.weight.detach().clone(), conv.bias.detach().clone())
        )
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)
        self.stride, self.padding, self.relu = conv.stride, conv.padding, relu
        self.transposed = transposed
        ndim = weight.dim() - 2
        if transposed:
            self.fn = functional.conv_transpose3d if ndim == 3 else functional.conv_transpose2d
        else:
            self.fn = functional.conv3d if ndim == 3 else functional.conv2d

    def forward(self, x: torch.Tensor, accumulate: torch.Tensor | None = None) -> torch.Tensor:
        out = self.fn(x, self.weight, self.bias, stride=self.stride, padding=self.padding)
        if accumulate is not None:
            out = accumulate.add_(out)
        return out.relu_() if self.relu else out


class _LeanLevel(nn.Module):
    def __init__(self, level: _Level) -> None:
        super().__init__()
        self.depth = level.depth
        more: _TwoConv = level.sub_2conv_more
        self.more1 = _Conv(more.conv1, more.bn1)
        self.more2 = _Conv(more.conv2, more.bn2)
        if level.depth == 0:
            return
        less: _TwoConv = level.sub_2conv_less
        n = less.conv1.weight.shape[1] // 2  # input channels: skip first, then up
        weight, bias = _fold(less.conv1, less.bn1)
        self.less1_skip = _Conv(less.conv1, relu=False)
        self.less1_skip.weight = nn.Parameter(weight[:, :n].contiguous())
        self.less1_skip.bias = nn.Parameter(bias)
        self.less1_up = _Conv(less.conv1, relu=True)
        self.less1_up.weight = nn.Parameter(weight[:, n:].contiguous())
        self.less1_up.bias = nn.Parameter(torch.zeros_like(bias))
        self.less2 = _Conv(less.conv2, less.bn2)
        self.down = _Conv(level.conv_down, level.bn0)
        self.up = _Conv(level.convt, level.bn1, transposed=True)
        self.sub = _LeanLevel(level.sub_u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.more2(self.more1(x))
        del x
        if self.depth == 0:
            return skip
        partial = self.less1_skip(skip)  # the skip's share of the first convolution, now
        down = self.down(skip)
        del skip
        up = self.up(self.sub(down))
        del down
        out = self.less1_up(up, accumulate=partial)  # += the up half, then ReLU, in place
        del up, partial
        return self.less2(out)


class _LeanUNet(nn.Module):
    def __init__(self, net: FnetUNet) -> None:
        super().__init__()
        self.project = _Conv(net.project, relu=False) if hasattr(net, "project") else None
        self.levels = _LeanLevel(net.net_recurse)
        self.out = _Conv(net.conv_out, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.project is not None:
            x = self.project(x)
        return self.out(self.levels(x))


@torch.no_grad()
def lean_fnet(net: FnetUNet) -> nn.Module:
    """The lean inference copy of an fnet U-Net in eval mode (its own tensors, same device)."""
    if net.training:
        raise ValueError("lean_fnet folds eval-mode BatchNorm statistics; call net.eval() first")
    return _LeanUNet(net).eval().requires_grad_(False)
