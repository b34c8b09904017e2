"""VisCy's UNeXt2 in plain torch: the network of VSCyto3D and VSNeuromast, from a checkpoint.

VisCy builds UNeXt2 from timm (a ConvNeXt-V2 encoder) and MONAI (pixel-shuffle upsampling, a
convolution block in the head). timm imports torchvision, which cannot be installed beside
every torch build (PyPI's torchvision does not import beside a local CPU torch), so zarrstain
rebuilds the same network here, with the same parameter names: a VisCy state dict loads
unchanged, and ``tests/models/viscy/test_unext2.py`` checks the forward against VisCy's own on a
fixture made with VisCy (``tests/fixtures/viscy/make_fixtures.py``).

Architecture (VisCy 0.4): a 3D stem convolution whose kernel spans ``kernel[0]`` planes with
stride = kernel folds the z stack into channels (2.5D); ConvNeXt-V2 stages (depthwise 7×7,
LayerNorm over channels, 1×1 MLP with GELU and Global Response Normalization), downsampling
×2 between stages; a decoder of pixel-shuffle ×2 and ConvNeXt-V2 stages with skip
connections; a head that pixel-shuffles ×2, unfolds channels into ``out_stack_depth + 2``
planes, a 3×3×3 convolution (no z padding) with instance norm and PReLU, a 1×1×1 convolution
and a last pixel shuffle ×2.

**Not local.** GRN divides by each channel's L2 norm over the whole (y, x) map, and the head's
instance norm uses the statistics of the whole map: an output pixel depends on every input
pixel of its planes. Tiling in y, x changes the result; the exact way to run it is one whole
field per block.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional

__all__ = [
    "Decoder",
    "GlobalResponseNorm",
    "LayerNorm2d",
    "PadPool",
    "Stage",
    "UNeXt2",
    "VoxelHead",
    "pixel_shuffle",
    "unext2_config",
]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) map (timm's ``LayerNorm2d``)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2's GRN: the non-local layer (a norm over all of H, W).

    On (N, C, H, W), or on (N, H, W, C) with ``channels_last`` (timm's two layouts).
    """

    def __init__(self, channels: int, channels_last: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.space, self.channel = ((1, 2), -1) if channels_last else ((2, 3), 1)
        self.shape = (1, 1, 1, -1) if channels_last else (1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x.norm(p=2, dim=self.space, keepdim=True)
        n = g / (g.mean(dim=self.channel, keepdim=True) + 1e-6)
        weight, bias = self.weight.view(self.shape), self.bias.view(self.shape)
        return x + torch.addcmul(bias, weight, x * n)


class PadPool(nn.Module):
    """MONAI's pixel-shuffle ``apply_pad_pool``: zeros before each axis, an s × s mean, stride 1.

    The nearest-neighbour part of Aitken et al.'s checkerboard-free sub-pixel convolution.
    """

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale
        return functional.avg_pool2d(functional.pad(x, (s - 1, 0, s - 1, 0)), s, stride=1)


def pixel_shuffle(scale: int, pool: bool) -> nn.Module:
    """MONAI's ``UpSample(mode="pixelshuffle", pre_conv=None)``, with or without its pad-pool."""
    if not pool:
        return nn.PixelShuffle(scale)
    return nn.Sequential(nn.PixelShuffle(scale), PadPool(scale))


class _Mlp(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.GELU()
        self.grn = GlobalResponseNorm(hidden)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.grn(self.act(self.fc1(x))))


class _Block(nn.Module):
    """A ConvNeXt-V2 block: depthwise 7×7, LayerNorm, MLP ×4 with GRN, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = LayerNorm2d(channels)
        self.mlp = _Mlp(channels, 4 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(self.conv_dw(x)))


class Stage(nn.Module):
    """A ConvNeXt stage: optional LayerNorm + convolution (``kernel`` = stride), then blocks
    (timm's ConvNeXt-V2 block, or another of one width: FCMAE's masked block)."""

    def __init__(
        self, in_channels: int, out_channels: int, depth: int, kernel: int, block: Any = None
    ) -> None:
        super().__init__()
        block = block or _Block
        if in_channels != out_channels or kernel > 1:
            self.downsample: nn.Module = nn.Sequential(
                LayerNorm2d(in_channels), nn.Conv2d(in_channels, out_channels, kernel, kernel)
            )
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*(block(out_channels) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class _Encoder(nn.Module):
    """timm's ConvNeXt-V2 ``features_only`` network with VisCy's stem convolution removed."""

    def __init__(self, dims: list[int], depths: list[int]) -> None:
        super().__init__()
        self.stem_1 = LayerNorm2d(dims[0])
        for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            previous = dims[max(i - 1, 0)]
            self.add_module(f"stages_{i}", Stage(previous, dim, depth, 1 if i == 0 else 2))
        self.n = len(dims)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem_1(x)
        features = []
        for i in range(self.n):
            x = getattr(self, f"stages_{i}")(x)
            features.append(x)
        return features


class _UpStage(nn.Module):
    def __init__(self, in_ch: int, skip: int, out_ch: int, depth: int) -> None:
        super().__init__()
        self.upsample = nn.PixelShuffle(2)
        self.conv = Stage(in_ch // 4 + skip, out_ch, depth, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.upsample(x), skip], dim=1))


class Decoder(nn.Module):
    def __init__(self, channels: list[int], depth: int) -> None:
        super().__init__()
        self.decoder_stages = nn.ModuleList(
            _UpStage(channels[i], channels[i] // 2, channels[i + 1], depth)
            for i in range(len(channels) - 1)
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[0]
        for skip, stage in zip(features[1:], self.decoder_stages, strict=True):
            x = stage(x, skip)
        return x


class _ConvNormAct(nn.Module):
    """MONAI's ``Convolution`` as VisCy's head uses it: conv, instance norm, PReLU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_ch, out_ch, 3, padding=(0, 1, 1))
        self.adn = nn.Sequential()
        self.adn.add_module("N", nn.InstanceNorm3d(out_ch))
        self.adn.add_module("A", nn.PReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adn(self.conv(x))


class VoxelHead(nn.Module):
    """VisCy's ``PixelToVoxelHead``."""

    def __init__(
        self, in_ch: int, out_ch: int, out_depth: int, expansion: int, pool: bool = False
    ) -> None:
        super().__init__()
        self.upsample = pixel_shuffle(2, pool)
        mid = out_ch * expansion * 4
        self.conv = nn.Sequential(
            _ConvNormAct(in_ch // 4 // (out_depth + 2), mid), nn.Conv3d(mid, out_ch * 4, 1)
        )
        self.out = nn.PixelShuffle(2)
        self.out_depth = out_depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.upsample(x)
        b, c, h, w = x.shape
        d = self.out_depth + 2
        x = self.conv(x.reshape(b, c // d, d, h, w)).transpose(1, 2)
        return self.out(x).transpose(1, 2)


class _Stem(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_ch, out_ch, kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        b, c, d, h, w = x.shape
        return x.reshape(b, c * d, h, w)


class UNeXt2(nn.Module):
    """VisCy's UNeXt2 (pixel-shuffle decoder, the configuration its published models use).

    Input (N, in_channels, in_stack_depth, Y, X) with Y, X multiples of
    :attr:`divisor`; output (N, out_channels, out_stack_depth, Y, X). Arguments as
    :func:`unext2_config` reads them from a state dict, except ``head_pool`` (VisCy's
    published VSCyto3D sets it; it has no weights, so only VisCy's ``model_config`` says).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        in_stack_depth: int,
        out_stack_depth: int,
        dims: list[int],
        depths: list[int],
        stem_kernel_size: tuple[int, int, int] = (5, 4, 4),
        decoder_conv_blocks: int = 2,
        head_expansion_ratio: int = 4,
        head_pool: bool = False,
    ) -> None:
        super().__init__()
        kernel = tuple(int(k) for k in stem_kernel_size)
        if in_stack_depth % kernel[0]:
            raise ValueError(
                f"in_stack_depth {in_stack_depth} is not a multiple of the stem's depth {kernel[0]}"
            )
        ratio = in_stack_depth // kernel[0]
        self.stem = _Stem(in_channels, dims[0] // ratio, kernel)  # type: ignore[arg-type]
        self.encoder_stages = _Encoder(list(dims), list(depths))
        channels = list(reversed(dims))
        channels[-1] = (out_stack_depth + 2) * out_channels * 4 * head_expansion_ratio
        self.decoder = Decoder(channels, decoder_conv_blocks)
        self.head = VoxelHead(
            channels[-1], out_channels, out_stack_depth, head_expansion_ratio, head_pool
        )
        self.in_stack_depth, self.out_stack_depth = in_stack_depth, out_stack_depth
        #: y, x sizes must be multiples of this: the stem's stride, then ×2 per stage
        self.divisor = kernel[-1] * 2 ** (len(dims) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder_stages(self.stem(x))
        return self.head(self.decoder(features[::-1]))


def unext2_config(state: Mapping[str, torch.Tensor], prefix: str = "model.") -> dict[str, Any]:
    """The :class:`UNeXt2` arguments a VisCy state dict implies, read from its tensors' shapes.

    VisCy's checkpoints do not always store their ``model_config`` (VisCy's own examples pass
    it to ``load_from_checkpoint``), so everything is derived from the weights: widths and
    blocks per stage, the stem's kernel and stack depth, the head's output channels, planes and
    expansion. Raises ``KeyError`` naming a missing tensor when the state is not a UNeXt2's.
    """

    def get(name: str) -> torch.Tensor:
        return state[prefix + name]

    def indices(pattern: str) -> set[int]:
        """The numbers ``(\\d+)`` takes in the keys matching ``pattern`` after the prefix."""
        regex = re.compile(re.escape(prefix) + pattern)
        return {int(m.group(1)) for k in state if (m := regex.match(k))}

    stages = sorted(indices(r"encoder_stages\.stages_(\d+)\."))
    if not stages:
        raise KeyError(prefix + "encoder_stages.stages_0")
    encoder = [f"encoder_stages.stages_{i}" for i in stages]
    dims = [int(get(f"{e}.blocks.0.conv_dw.weight").shape[0]) for e in encoder]
    depths = [len(indices(re.escape(e) + r"\.blocks\.(\d+)\.")) for e in encoder]
    stem = get("stem.conv.weight")  # (dims[0] // ratio, in_channels, kd, ky, kx)
    kernel = tuple(int(k) for k in stem.shape[2:])
    conv_in = get("head.conv.0.conv.weight")  # (mid, planes' channels, 3, 3, 3)
    conv_out = get("head.conv.1.weight")  # (out_channels · 4, mid, 1, 1, 1)
    out_channels = int(conv_out.shape[0]) // 4
    last_stage = f"decoder.decoder_stages.{len(stages) - 2}.conv"
    last = int(get(f"{last_stage}.blocks.0.conv_dw.weight").shape[0])
    return {
        "in_channels": int(stem.shape[1]),
        "out_channels": out_channels,
        "in_stack_depth": kernel[0] * dims[0] // int(stem.shape[0]),
        "out_stack_depth": last // 4 // int(conv_in.shape[1]) - 2,
        "dims": dims,
        "depths": depths,
        "stem_kernel_size": kernel,
        "decoder_conv_blocks": len(indices(re.escape(last_stage) + r"\.blocks\.(\d+)\.")),
        "head_expansion_ratio": int(conv_in.shape[0]) // (out_channels * 4),
    }
