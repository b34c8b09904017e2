"""VisCy's older 2D and 2.5D U-Nets (``VSUNet`` architectures ``"2D"`` and ``"2.5D"``), plain torch.

Rebuilt with VisCy's parameter names (``down_conv_block_0.Conv2d_0``, ``batch_norm_0``,
``resid_conv`` ...), so a VisCy state dict loads unchanged;
``tests/models/viscy/test_viscy.py`` checks the forward against VisCy 0.4.1's on fixtures VisCy
made. VisCy's ``ConvBlock2D/3D`` with their
defaults: ``filter_steps="first"``, ``layer_order="can"`` (convolution, activation, batch
norm), zero "same" padding, ReLU, a residual sum (a 1 × 1 convolution when channels shrink,
zero channels prepended when they grow); average pooling down, bilinear (trilinear) upsampling
up. The 2.5D network convolves the z stack in its encoder and collapses it to
``out_stack_depth`` planes in its skip connections and bottom.

**Local**: eval-mode batch norm, pooling and interpolation are per-neighbourhood, so these
networks tile exactly; :func:`unet_radius` bounds their receptive radius.

Settings without weights of their own default as VisCy's do: ``residual`` (False) and, for
the 2D network, ``task`` (``"seg"``: a ReLU after the last convolution; ``"reg"``: linear; the
2.5D head's batch norm tells its task).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn import functional

__all__ = ["Unet2d", "Unet25d", "unet_config", "unet_radius"]


class ConvBlock(nn.Module):
    """VisCy's ``ConvBlock2D`` / ``ConvBlock3D`` with their default layer order and steps."""

    def __init__(self, nd: int, in_f: int, out_f: int, kernel: tuple[int, ...], repeats: int,
                 residual: bool, linear: bool = False, norm: bool = True) -> None:  # fmt: skip
        super().__init__()
        conv = nn.Conv2d if nd == 2 else nn.Conv3d
        bn = nn.BatchNorm2d if nd == 2 else nn.BatchNorm3d
        self.norms = [f"batch_norm_{i}" for i in range(repeats)] if norm else []
        for name in self.norms:
            self.add_module(name, bn(out_f))
        self.convs = [f"Conv{nd}d_{i}" for i in range(repeats)]
        pad = tuple(k // 2 for k in kernel)
        for i, name in enumerate(self.convs):
            self.add_module(name, conv(in_f if i == 0 else out_f, out_f, kernel, padding=pad))
        self.resid_conv = conv(in_f, out_f, 1)
        self.in_f, self.out_f, self.residual, self.linear = in_f, out_f, residual, linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = x
        for i, name in enumerate(self.convs):
            x = getattr(self, name)(x)
            if i < len(self.convs) - 1 or not self.linear:
                x = functional.relu(x)
            if self.norms:
                x = getattr(self, self.norms[i])(x)
        if not self.residual:
            return x
        if self.in_f > self.out_f:
            x0 = self.resid_conv(x0)
        elif self.in_f < self.out_f:  # zero channels before the input's
            zeros = x0.new_zeros((x0.shape[0], self.out_f - self.in_f, *x0.shape[2:]))
            x0 = torch.cat([zeros, x0], dim=1)
        return x0 + x


class _UNet(nn.Module):
    """What the two U-Nets share: the encoder and decoder blocks, and the path through them."""

    def _blocks(self, nd: int, in_channels: int, filters: list[int], k_down: tuple[int, ...],
                k_up: tuple[int, ...], repeats: int, residual: bool) -> None:  # fmt: skip
        n = len(filters) - 1
        down = [in_channels, *filters]
        up = [filters[-(i + 1)] + filters[-(i + 2)] for i in range(n)]
        for i in range(n):
            block = ConvBlock(nd, down[i], down[i + 1], k_down, repeats, residual)
            self.add_module(f"down_conv_block_{i}", block)
            block = ConvBlock(nd, up[i], down[-(i + 2)], k_up, repeats, residual)
            self.add_module(f"up_conv_block_{i}", block)
        self.num_blocks = n

    def _path(self, x: torch.Tensor, pool: Any, scale: Any, mode: str) -> torch.Tensor:
        skips = []
        for i in range(self.num_blocks):
            x = getattr(self, f"down_conv_block_{i}")(x)
            skips.append(self._skip(i, x))
            x = pool(x)
        x = self.bottom_transition_block(x)
        for i in range(self.num_blocks):
            x = functional.interpolate(x, scale_factor=scale, mode=mode, align_corners=False)
            x = getattr(self, f"up_conv_block_{i}")(torch.cat([x, skips[-(i + 1)]], 1))
        return self.terminal_block(x)

    def _skip(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return x


class Unet2d(_UNet):
    """VisCy's ``Unet2d``: (N, C, 1, Y, X) → (N, out, 1, Y, X), Y, X multiples of 2**blocks."""

    def __init__(self, in_channels: int, out_channels: int, num_filters: list[int],
                 kernel_size: tuple[int, int] = (3, 3), num_block_layers: int = 2,
                 residual: bool = False, task: str = "seg") -> None:  # fmt: skip
        super().__init__()
        k, r = tuple(kernel_size), num_block_layers
        self._blocks(2, in_channels, num_filters, k, k, r, residual)
        self.bottom_transition_block = ConvBlock(2, num_filters[-2], num_filters[-1], k, r,
                                                 residual)  # fmt: skip
        self.terminal_block = ConvBlock(2, num_filters[0], out_channels, k, 1, False,
                                        linear=task == "reg", norm=False)  # fmt: skip
        self.in_stack_depth = self.out_stack_depth = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = partial(functional.avg_pool2d, kernel_size=2)
        return self._path(x.squeeze(2), pool, 2, "bilinear").unsqueeze(2)


class Unet25d(_UNet):
    """VisCy's ``Unet25d``: (N, C, D, Y, X) → (N, out, out_stack_depth, Y, X); the z window
    collapses in the skip connections and the bottom."""

    def __init__(self, in_channels: int, out_channels: int, num_filters: list[int],
                 in_stack_depth: int = 5, out_stack_depth: int = 1,
                 kernel_size: tuple[int, int] = (3, 3), num_block_layers: int = 2,
                 residual: bool = False, task: str = "seg") -> None:  # fmt: skip
        super().__init__()
        kz = 1 + in_stack_depth - out_stack_depth
        k3, k1 = (3, *kernel_size), (1, *kernel_size)
        self._blocks(3, in_channels, num_filters, k3, k1, num_block_layers, residual)
        self.bottom_transition_block = nn.Conv3d(num_filters[-2], num_filters[-1], (kz, 1, 1))
        for i, f in enumerate(num_filters[:-1]):
            self.add_module(f"skip_conv_layer_{i}", nn.Conv3d(f, f, (kz, 1, 1)))
        reg = task == "reg"
        self.terminal_block = ConvBlock(3, num_filters[0], out_channels, (1, 3, 3), 1, False,
                                        linear=reg, norm=not reg)  # fmt: skip
        self.in_stack_depth, self.out_stack_depth = in_stack_depth, out_stack_depth

    def _skip(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"skip_conv_layer_{i}")(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = partial(functional.avg_pool3d, kernel_size=(1, 2, 2))
        return self._path(x, pool, (1, 2, 2), "trilinear")


def unet_radius(config: dict[str, Any]) -> int:
    """An upper bound of the y/x receptive radius: per level, the convolutions, the pooling
    (2^l) and the upsampling (two coarse pixels, 2^(l+1)); then the bottom and the head."""
    n = len(config["num_filters"]) - 1
    per_conv = int(config.get("kernel_size", (3, 3))[-1]) // 2
    r = per_conv * int(config.get("num_block_layers", 2))
    levels = sum(2 * r * 2**level + 2**level + 2 ** (level + 1) for level in range(n))
    return levels + r * 2**n + 1


def unet_config(state: Mapping[str, torch.Tensor], network: str, given: Mapping[str, Any],
                prefix: str = "model.") -> dict[str, Any]:  # fmt: skip
    """The :class:`Unet2d` / :class:`Unet25d` arguments a VisCy state dict implies.

    ``given`` (VisCy's ``model_config``) supplies what the weights cannot: ``residual``,
    ``task`` (2D) and ``out_stack_depth`` (2.5D). Raises ``KeyError`` naming a missing tensor.
    """
    nd = 2 if network == "2D" else 3

    def get(name: str) -> torch.Tensor:
        return state[prefix + name]

    n = len(
        {
            m.group(1)
            for k in state
            if (m := re.match(re.escape(prefix) + r"down_conv_block_(\d+)\.", k))
        }
    )
    if not n:
        raise KeyError(prefix + "down_conv_block_0")
    first = get(f"down_conv_block_0.Conv{nd}d_0.weight")
    filters = [int(get(f"down_conv_block_{i}.Conv{nd}d_0.weight").shape[0]) for i in range(n)]
    bottom = get(
        "bottom_transition_block.Conv2d_0.weight" if nd == 2 else "bottom_transition_block.weight"
    )
    layers = len({k for k in state if k.startswith(f"{prefix}down_conv_block_0.Conv{nd}d_")
                  and k.endswith(".weight")})  # fmt: skip
    config: dict[str, Any] = {
        "in_channels": int(first.shape[1]),
        "out_channels": int(get(f"terminal_block.Conv{nd}d_0.weight").shape[0]),
        "num_filters": [*filters, int(bottom.shape[0])],
        "kernel_size": [int(k) for k in first.shape[-2:]],
        "num_block_layers": layers,
        "residual": bool(given.get("residual", False)),
        "task": str(given.get("task", "seg")),
    }
    if nd == 3:  # the 2.5D head has batch norm unless it is linear ("reg"): the weights say
        has_norm = f"{prefix}terminal_block.batch_norm_0.weight" in state
        config["task"] = "seg" if has_norm else "reg"
        out = int(given.get("out_stack_depth", 1))
        config["out_stack_depth"] = out
        config["in_stack_depth"] = int(bottom.shape[2]) - 1 + out
    return config
