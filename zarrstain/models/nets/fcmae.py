"""VisCy's FullyConvolutionalMAE in plain torch: VSCyto2D's network (VisCy's ``UNeXt2_2D``).

The masked autoencoder's dense (unmasked) forward, which is what prediction runs: a stem
that projects a 2D plane (``Conv2d``) or a z stack folded into channels (``Conv3d``, stride =
kernel) to feature maps with a channels-last LayerNorm; ConvNeXt-V2 stages whose blocks are
VisCy's ``MaskedConvNeXtV2Block`` (depthwise 7 × 7 without bias, LayerNorm and a linear MLP
with GRN on channels-last features); the UNeXt2 decoder; and a head that pixel-shuffles by
the stem's stride with MONAI's pad-pool and unfolds the channels into planes (or, with
``head_conv``, UNeXt2's :class:`~zarrstain.models.nets.unext2.VoxelHead`). Parameter names are
VisCy's, so a VisCy state dict loads unchanged; ``tests/models/viscy/test_viscy.py`` checks the
forward against VisCy's own (``tests/fixtures/viscy/make_fixtures.py``).

Not local, like UNeXt2: GRN normalises over the whole (y, x) map.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from zarrstain.models.nets.unext2 import (
    Decoder,
    GlobalResponseNorm,
    Stage,
    VoxelHead,
    pixel_shuffle,
)

__all__ = ["FullyConvolutionalMAE", "fcmae_config"]


class _Mlp(nn.Module):
    """timm's ``GlobalResponseNormMlp`` on channels-last features (linear layers)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.grn = GlobalResponseNorm(hidden, channels_last=True)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.grn(self.act(self.fc1(x))))


class _Block(nn.Module):
    """VisCy's ``MaskedConvNeXtV2Block`` without a mask (in = out channels, stride 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels, bias=False)
        self.layernorm = nn.LayerNorm(channels)
        self.mlp = _Mlp(channels, 4 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.layernorm(self.dwconv(x).permute(0, 2, 3, 1)))
        return x + y.permute(0, 3, 1, 2)


class _Stem(nn.Module):
    """VisCy's ``MaskedAdaptiveProjection``: a plane by ``conv2d``, a stack by ``conv3d``."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: tuple[int, int, int], in_stack_depth: int
    ) -> None:
        super().__init__()
        ratio = in_stack_depth // kernel[0]
        self.conv3d = nn.Conv3d(in_ch, out_ch // ratio, kernel, stride=kernel)
        self.conv2d = nn.Conv2d(in_ch, out_ch, kernel[1:], stride=kernel[1:])
        self.norm = nn.LayerNorm(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] > 1:
            x = self.conv3d(x)
            b, c, d, h, w = x.shape
            x = x.reshape(b, c * d, h, w)
        else:
            x = self.conv2d(x.squeeze(2))
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _Encoder(nn.Module):
    def __init__(self, in_ch: int, blocks: list[int], dims: list[int], kernel: tuple[int, int, int],
                 in_stack_depth: int) -> None:  # fmt: skip
        super().__init__()
        self.stem = _Stem(in_ch, dims[0], kernel, in_stack_depth)
        chs = [dims[0], *dims]
        self.stages = nn.ModuleList(
            Stage(chs[i], chs[i + 1], n, 1 if i == 0 else 2, _Block) for i, n in enumerate(blocks)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class _ShuffleHead(nn.Module):
    """VisCy's ``PixelToVoxelShuffleHead``: pixel shuffle by the stem's stride, pad-pool."""

    def __init__(self, out_ch: int, out_depth: int, scale: int) -> None:
        super().__init__()
        self.upsample = pixel_shuffle(scale, pool=True)
        self.out_channels, self.out_depth = out_ch, out_depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.upsample(x)
        b, _, h, w = x.shape
        return x.reshape(b, self.out_channels, self.out_depth, h, w)


class FullyConvolutionalMAE(nn.Module):
    """VisCy's ``FullyConvolutionalMAE`` for prediction (``pretraining=False``, no masking).

    Input (N, in_channels, in_stack_depth, Y, X) with Y, X multiples of :attr:`divisor`;
    output (N, out_channels, in_stack_depth, Y, X). Arguments as :func:`fcmae_config` reads
    them from a state dict (``head_conv_pool``, which has no weights, from VisCy's config).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        encoder_blocks: list[int],
        dims: list[int],
        stem_kernel_size: tuple[int, int, int] = (5, 4, 4),
        in_stack_depth: int = 5,
        decoder_conv_blocks: int = 1,
        head_conv: bool = False,
        head_conv_expansion_ratio: int = 4,
        head_conv_pool: bool = True,
    ) -> None:
        super().__init__()
        kz, ky, kx = (int(k) for k in stem_kernel_size)
        kernel = (kz, ky, kx)
        self.encoder = _Encoder(
            in_channels, list(encoder_blocks), list(dims), kernel, in_stack_depth
        )
        channels = list(reversed(dims))
        if head_conv:
            channels[-1] = (in_stack_depth + 2) * in_channels * 4 * head_conv_expansion_ratio
        else:
            channels[-1] = out_channels * in_stack_depth * kernel[-1] ** 2
        self.decoder = Decoder(channels, decoder_conv_blocks)
        if head_conv:
            self.head: nn.Module = VoxelHead(
                channels[-1],
                out_channels,
                in_stack_depth,
                head_conv_expansion_ratio,
                head_conv_pool,
            )
        else:
            self.head = _ShuffleHead(out_channels, in_stack_depth, kernel[-1])
        self.in_stack_depth = self.out_stack_depth = in_stack_depth
        #: y, x sizes must be multiples of this: the stem's stride, then ×2 per stage
        self.divisor = kernel[-1] * 2 ** (len(dims) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)[::-1]))


def fcmae_config(state: Mapping[str, torch.Tensor], prefix: str = "model.") -> dict[str, Any]:
    """The :class:`FullyConvolutionalMAE` arguments a VisCy state dict implies (from shapes).

    Raises ``KeyError`` naming a missing tensor when the state is not an FCMAE's.
    """

    def get(name: str) -> torch.Tensor:
        return state[prefix + name]

    def count(pattern: str) -> int:
        regex = re.compile(re.escape(prefix) + pattern)
        return len({m.group(1) for k in state if (m := regex.match(k))})

    n = count(r"encoder\.stages\.(\d+)\.")
    if not n:
        raise KeyError(prefix + "encoder.stages.0")
    dims = [int(get(f"encoder.stages.{i}.blocks.0.dwconv.weight").shape[0]) for i in range(n)]
    blocks = [count(rf"encoder\.stages\.{i}\.blocks\.(\d+)\.") for i in range(n)]
    stem = get("encoder.stem.conv3d.weight")  # (dims[0] // ratio, in_channels, kd, ky, kx)
    kernel = tuple(int(k) for k in stem.shape[2:])
    depth = kernel[0] * dims[0] // int(stem.shape[0])
    last_stage = f"decoder.decoder_stages.{n - 2}.conv"
    last = int(get(f"{last_stage}.blocks.0.conv_dw.weight").shape[0])
    head_conv = prefix + "head.conv.0.conv.weight" in state
    if head_conv:
        out_channels = int(get("head.conv.1.weight").shape[0]) // 4
        expansion = int(get("head.conv.0.conv.weight").shape[0]) // (out_channels * 4)
    else:
        out_channels, expansion = last // (depth * kernel[-1] ** 2), 4
    return {
        "in_channels": int(stem.shape[1]),
        "out_channels": out_channels,
        "encoder_blocks": blocks,
        "dims": dims,
        "stem_kernel_size": kernel,
        "in_stack_depth": depth,
        "decoder_conv_blocks": count(re.escape(last_stage) + r"\.blocks\.(\d+)\."),
        "head_conv": head_conv,
        "head_conv_expansion_ratio": expansion,
    }
