"""A conditional denoising U-Net for image-to-image diffusion, local by default.

The layout follows Palette / ADM (Saharia et al. 2022; Dhariwal & Nichol 2021), the network of
Cross-Zamirski et al.'s class-guided Cell Painting model: the condition channels (brightfield)
are concatenated with the noisy targets; residual blocks carry a time embedding and, optionally,
a class embedding, both applied as an adaptive scale and shift after the block's second
normalization (AdaGN); channels multiply per level, strided convolutions go down, nearest
upsampling and a convolution go up, one skip per level.

Locality decides whether tiling is exact (see :mod:`zarrstain.engine.tiling`). The default
``norm="pixel"`` normalizes each voxel over its channels (a LayerNorm per voxel, as ConvNeXt's)
and uses no attention, so every layer is local and the receptive radius
(:func:`denoiser_receptive_radius`) bounds what a block must see. ``norm="group"`` (GroupNorm
over the whole input) and ``attention="global"`` (self-attention over every voxel at the
lowest level) are the published ADM layout: not local, run one whole field per block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

import torch
from torch import nn
from torch.nn import functional

__all__ = ["NORMS", "Denoiser", "denoiser_receptive_radius", "timestep_embedding"]

#: ``norm`` values: per-voxel channel norm (local) or GroupNorm (ADM's; not local)
NORMS = ("pixel", "group")
ATTENTION = ("none", "global")


def _conv(ndim: int) -> type[nn.Module]:
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, not {ndim}")
    return nn.Conv2d if ndim == 2 else nn.Conv3d


class PixelNorm(nn.Module):
    """LayerNorm over the channels of each voxel, with a learned per-channel scale and shift."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = (x - mean) / torch.sqrt(var + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "pixel":
        return PixelNorm(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {kind!r}")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding (N, dim) of timesteps (N,), as in ADM and diffusers."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs.to(t.device)[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return functional.pad(emb, (0, dim % 2))


class ResBlock(nn.Module):
    """norm → SiLU → conv3 → norm · (1 + scale) + shift → SiLU → conv3, plus the input."""

    def __init__(self, ndim: int, n_in: int, n_out: int, emb: int, norm: str) -> None:
        super().__init__()
        conv = _conv(ndim)
        self.norm1 = _norm(norm, n_in)
        self.conv1 = conv(n_in, n_out, 3, padding=1)
        self.emb = nn.Linear(emb, 2 * n_out)
        self.norm2 = _norm(norm, n_out)
        self.conv2 = conv(n_out, n_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (ADM)
        nn.init.zeros_(self.conv2.bias)
        self.skip = conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(functional.silu(self.norm1(x)))
        scale, shift = self.emb(functional.silu(emb)).chunk(2, dim=1)
        shape = (*scale.shape, *(1,) * (x.dim() - 2))
        h = self.norm2(h) * (1 + scale.view(shape)) + shift.view(shape)
        return self.skip(x) + self.conv2(functional.silu(h))


class GlobalAttention(nn.Module):
    """Single-head self-attention over every voxel (ADM's; not local)."""

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.norm = _norm(norm, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, *spatial = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (N, voxels, C)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        h = functional.scaled_dot_product_attention(q, k, v)
        return x + self.out(h).transpose(1, 2).reshape(n, c, *spatial)


class Denoiser(nn.Module):
    """Conditional denoiser: (condition, noisy target, step[, class]) → ε, v or x0.

    Parameters
    ----------
    ndim
        2 (y, x) or 3 (z, y, x).
    in_channels
        Condition channels (0 for an unconditional model).
    out_channels
        Target channels (the noisy input and the prediction).
    width
        Channels of the first level (ADM/Palette: 64).
    mults
        Channel multiplier per level (published: 1, 2, 4, 8); ``len(mults) - 1`` downsamplings.
    blocks
        Residual blocks per level and path (published: 2).
    norm
        ``"pixel"`` (local) or ``"group"`` (GroupNorm, not local).
    attention
        ``"none"`` (local) or ``"global"`` (self-attention at the lowest level, not local).
    classes
        Number of class labels (0: no class embedding). With ``null_class`` one more
        embedding, the "no class" of classifier-free guidance, has index ``classes``.
    """

    def __init__(
        self,
        ndim: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        width: int = 32,
        mults: Sequence[int] = (1, 2, 2),
        blocks: int = 1,
        norm: str = "pixel",
        attention: str = "none",
        classes: int = 0,
        null_class: bool = False,
    ) -> None:
        super().__init__()
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, not {attention!r}")
        conv = _conv(ndim)
        emb = 4 * width
        self.width, self.levels, self.blocks = width, len(mults), blocks
        self.in_channels, self.out_channels = in_channels, out_channels
        self.time = nn.Sequential(nn.Linear(width, emb), nn.SiLU(), nn.Linear(emb, emb))
        n_classes = classes + (1 if null_class else 0)
        self.classes = nn.Embedding(n_classes, emb) if n_classes else None
        self.stem = conv(in_channels + out_channels, width, 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        channels, widths = width, []
        for i, m in enumerate(mults):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(ResBlock(ndim, channels, width * m, emb, norm))
                channels = width * m
            self.down.append(level)
            widths.append(channels)
            if i < len(mults) - 1:
                self.downsample.append(conv(channels, channels, 3, stride=2, padding=1))
        self.mid = nn.ModuleList([ResBlock(ndim, channels, channels, emb, norm) for _ in range(2)])
        self.attention = GlobalAttention(channels, norm) if attention == "global" else None
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(mults))):
            level = nn.ModuleList()
            for b in range(blocks):
                n_in = channels + widths[i] if b == 0 else width * mults[i]
                level.append(ResBlock(ndim, n_in, width * mults[i], emb, norm))
            channels = width * mults[i]
            self.up.append(level)
            if i > 0:
                self.upsample.append(conv(channels, width * mults[i - 1], 3, padding=1))
                channels = width * mults[i - 1]
        self.norm_out = _norm(norm, width)
        self.conv_out = conv(width, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def divisor(self) -> int:
        """Every spatial size of the input must be a multiple of this."""
        return 2 ** (self.levels - 1)

    def embed(self, t: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
        """The (N, 4·width) embedding of steps (N,) and class indices (N,) or None."""
        emb = self.time(timestep_embedding(t, self.width).to(self.stem.weight.dtype))
        if self.classes is not None and classes is not None:
            emb = emb + self.classes(classes)
        return emb

    def encode(self, h: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The down path and the middle blocks: (the lowest level's features, the skips)."""
        skips = []
        for i, level in enumerate(self.down):
            for block in level:
                h = block(h, emb)
            skips.append(h)
            if i < self.levels - 1:
                h = self.downsample[i](h)
        for block in self.mid:
            h = block(h, emb)
            if self.attention is not None and block is self.mid[0]:
                h = self.attention(h)
        return h, skips

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        classes: torch.Tensor | None = None,
        control: tuple[list[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The objective's prediction for ``x`` = (condition, noisy target) channels.

        ``t`` (N,) are the diffusion steps, ``classes`` (N,) class indices (or None: no class
        embedding added, for models trained without classes). ``control``: residuals a
        control branch adds to each skip and to the middle blocks' output (ControlNet).
        """
        return self.conv_out(self.features(x, t, classes, control))

    def features(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        classes: torch.Tensor | None = None,
        control: tuple[list[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The features the output convolution reads (quantile heads read them too)."""
        emb = self.embed(t, classes)
        h, skips = self.encode(self.stem(x), emb)
        if control is not None:
            skips = [s + c for s, c in zip(skips, control[0], strict=True)]
            h = h + control[1]
        for j, level in enumerate(self.up):
            h = torch.cat([h, skips.pop()], dim=1)
            for block in level:
                h = block(h, emb)
            if j < self.levels - 1:
                h = self.upsample[j](functional.interpolate(h, scale_factor=2, mode="nearest"))
        return functional.silu(self.norm_out(h))


@cache
def denoiser_receptive_radius(levels: int, blocks: int) -> int:
    """Largest offset along one axis from which an input voxel can influence an output voxel.

    Exact, by propagating index intervals back through the network for every output position
    modulo the divisor (the strided layers make the field position dependent), as
    :func:`~zarrstain.models.fnet_receptive_radius` does for fnet. A residual block reads ±2
    voxels of its level, a strided 3-convolution reads 2q − 1 … 2q + 1, upsampling then a
    3-convolution reads (p − 1) // 2 … (p + 1) // 2 of the level below.
    """
    last = levels - 1

    def level(i: int, lo: int, hi: int) -> tuple[int, int]:
        # input interval, in level i's units, of level i's output interval [lo, hi]
        lo, hi = lo - 2 * blocks, hi + 2 * blocks  # the up path's blocks
        if i == last:  # the mid blocks, then the down path's blocks
            return lo - 4 - 2 * blocks, hi + 4 + 2 * blocks
        sub = level(i + 1, (lo - 1) // 2, (hi + 1) // 2)  # upsample + 3-conv
        down = (2 * sub[0] - 1, 2 * sub[1] + 1)  # the strided convolution
        lo, hi = min(lo, down[0]), max(hi, down[1])  # with the skip
        return lo - 2 * blocks, hi + 2 * blocks  # the down path's blocks

    radius = 0
    for p in range(2**last):
        lo, hi = level(0, p - 1, p + 1)  # conv_out
        radius = max(radius, p - (lo - 1), (hi + 1) - p)  # the stem
    return radius
