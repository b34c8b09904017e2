"""VisCy's training loss: ``MixedLoss`` = 0.5 × L1 + 0.5 × (1 − MS-SSIM), 2.5D.

As VisCy computes it (``viscy.translation.evaluation_metrics.ms_ssim_25d``, after
torchmetrics): SSIM with a uniform window of the stack's whole depth × 11 × 11 (valid
convolution: no padding), constants (0.01 · R)² and (0.03 · R)² with R the target's maximum
(VisCy's ``data_range=target.max()``), over five scales weighted (0.0448, 0.2856, 0.3001,
0.2363, 0.1333), each scale halving y and x by 2 × 2 averages but never z; in a loss the
contrast terms and the last SSIM are clamped to ≥ 1e-4 (VisCy's ``clamp=True``). The
smallest y/x a five-scale SSIM with an 11 × 11 window accepts is 11 × 2⁴ = 176 pixels: VisCy
trains on 256 × 256 or larger patches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional

__all__ = ["BETAS", "mixed_loss", "ms_ssim_25d"]

BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_FLOOR = 1e-4


def _ssim_and_cs(
    x: torch.Tensor, y: torch.Tensor, window: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per batch item: mean SSIM and mean contrast-sensitivity over a uniform ``window``."""
    data_range = y.max()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    channels = x.shape[1]
    kernel = x.new_full((channels, 1, *window), 1.0 / (window[0] * window[1] * window[2]))

    def mean(a: torch.Tensor) -> torch.Tensor:
        return functional.conv3d(a, kernel, groups=channels)

    mu_x, mu_y = mean(x), mean(y)
    var_x = mean(x * x) - mu_x * mu_x
    var_y = mean(y * y) - mu_y * mu_y
    cov = mean(x * y) - mu_x * mu_y
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    ssim = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1) * cs
    n = x.shape[0]
    return ssim.reshape(n, -1).mean(1), cs.reshape(n, -1).mean(1)


def ms_ssim_25d(
    prediction: torch.Tensor,
    target: torch.Tensor,
    window: tuple[int, int] = (11, 11),
    clamp: bool = False,
    betas: Sequence[float] = BETAS,
) -> torch.Tensor:
    """Multi-scale SSIM of (N, C, Z, Y, X) stacks (the whole depth in one window), averaged
    over the batch."""
    if prediction.dim() == 4:  # (N, C, Y, X): one plane
        prediction, target = prediction.unsqueeze(2), target.unsqueeze(2)
    smallest = window[0] * 2 ** (len(betas) - 1)
    if min(prediction.shape[-2:]) < smallest:
        raise ValueError(
            f"MS-SSIM over {len(betas)} scales with a {window[0]}×{window[1]} window needs "
            f"patches of at least {smallest}×{smallest} pixels, not "
            f"{prediction.shape[-2]}×{prediction.shape[-1]}"
        )
    prediction, target = prediction.float(), target.float()
    terms = []
    for level in range(len(betas)):
        ssim, cs = _ssim_and_cs(prediction, target, (prediction.shape[2], *window))
        terms.append(cs.clamp(min=_FLOOR) if clamp else cs)
        if level < len(betas) - 1:  # y and x halved, never z
            prediction = functional.avg_pool3d(prediction, (1, 2, 2))
            target = functional.avg_pool3d(target, (1, 2, 2))
    terms[-1] = ssim.clamp(min=_FLOOR) if clamp else ssim
    stacked = torch.stack(terms)
    weights = torch.tensor(list(betas), device=stacked.device).view(-1, 1)
    return torch.prod(stacked**weights, dim=0).mean()


def mixed_loss(
    prediction: torch.Tensor, target: torch.Tensor, l1: float = 0.5, ms_dssim: float = 0.5
) -> torch.Tensor:
    """VisCy's ``MixedLoss(l1_alpha=0.5, l2_alpha=0, ms_dssim_alpha=0.5)``."""
    loss = l1 * functional.l1_loss(prediction, target)
    return loss + ms_dssim * (1 - ms_ssim_25d(prediction, target, clamp=True))
