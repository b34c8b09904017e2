"""What a sampled model writes: its samples' mean and std, or FluoGen's three quantile chains.

A diffusion sampler carries several states per voxel through its passes: K independent
samples (:class:`SamplesHead` reduces them to their mean and standard deviation), or, for a
model with quantile heads, three *chains* from the same initial noise (FluoGen's recipe):

- chain 0 is driven by the median prediction of the objective (v or ε);
- chain 1 by its upper quantile (1 − α/2), chain 2 by its lower quantile (α/2).

The objective enters the clean estimate with a negative sign (x0 = √ᾱ·x_t − √(1−ᾱ)·v, and
x0 = (x_t − √(1−ᾱ)·ε)/√ᾱ), and each sampler step's next state decreases with it, so the chain
driven by the *upper* quantile of v ends at the *lower* bound of the image: the ordering is
reversed (:data:`DRIVERS`). At a shared state the bounds are ordered by construction (the
heads are the median ∓ a softplus), and all chains start from the same noise; but their
states drift apart, and at a few voxels a bound's chain ends on the wrong side of the
median's (about 3 % in the tests' small model). There the bound keeps its distance from the
median on the right side (lower = median − |chain − median|): the bounds are always ordered,
and the interval keeps the chains' spread. (Collapsing a crossed bound onto the median would
leave zero-width sides that no RCPS scale λ can widen.) The interval is then calibrated like
any quantile head's (``zarrstain calibrate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional

from zarrstain.models.architecture import Head
from zarrstain.models.heads import OutputHead, QuantileHead, _masked_mean, _pinball

__all__ = ["CHAINS", "DRIVERS", "QuantileChainsHead", "SamplesHead", "drive", "quantile_loss"]

#: the chains of a quantile-head sampler: the median, the lower bound, the upper bound
CHAINS = 3
#: per chain, the prediction that drives it (0 median, 1 lower, 2 upper quantile of the
#: objective): the image's lower bound comes from the objective's upper quantile
DRIVERS = (0, 2, 1)


@dataclass(frozen=True)
class SamplesHead(OutputHead):
    """K samples per target → their mean, standard deviation (K > 1) and, kept, the samples.

    The raw channels are sample-major (sample k, target j at k·targets + j), as the sampler
    stacks them; the outputs are target-major like every head's. The std is the unbiased
    sample standard deviation (ddof 1): the generative uncertainty.
    """

    kind: str = "samples"
    loss_name: str = "MSE (diffusion objective)"
    samples: int = 1
    keep: bool = False

    @property
    def raw_channels(self) -> int:
        return self.samples

    @property
    def outputs(self) -> tuple[Head, ...]:
        heads = [Head("value")]
        if self.samples > 1:
            heads.append(Head("std", " std", dtype="float32"))
        if self.keep:
            heads += [Head("value", f" sample {k}") for k in range(self.samples)]
        return tuple(heads)

    def reduce(self, raw: torch.Tensor) -> torch.Tensor:
        n, c = raw.shape[:2]
        per = raw.reshape(n, self.samples, c // self.samples, *raw.shape[2:])
        parts = [per.mean(1)]
        if self.samples > 1:
            parts.append(per.std(1, correction=1))
        if self.keep:
            parts += list(per.unbind(1))
        return torch.stack(parts, 2).reshape(n, -1, *raw.shape[2:])

    def to_kwargs(self) -> dict[str, Any] | None:
        return None  # run options, not part of the card


@dataclass(frozen=True)
class QuantileChainsHead(QuantileHead):
    """The three chains' clean images → median, lower, upper (ordered, then calibrated).

    Stored in a card exactly as a :class:`~zarrstain.models.heads.QuantileHead` (``kind``
    ``"quantiles"``, ``alpha``, ``calibration``), so ``calibrate`` and ``evaluate`` treat it
    as one. The raw channels are chain-major (chain c, target j at c·targets + j).
    """

    loss_name: str = "MSE + pinball (objective)"

    def reduce(self, raw: torch.Tensor) -> torch.Tensor:
        n, c = raw.shape[:2]
        median, low, high = raw.float().reshape(n, CHAINS, c // CHAINS, *raw.shape[2:]).unbind(1)
        out = []
        for i in range(c // CHAINS):
            m = median[:, i : i + 1]
            lower = m - (low[:, i : i + 1] - m).abs()
            upper = m + (high[:, i : i + 1] - m).abs()
            if self.calibration is not None:
                lower, upper = self.calibration.apply(m, lower, upper, i)
            out += [m, lower, upper]
        return torch.cat(out, 1)

    def loss(self, raw, target, mask=None):
        return quantile_loss(raw, target, mask, self.alpha)


def bounded(pred: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """(median, lower, upper) of the objective, head-major (N, 3·targets, …).

    ``pred`` is the output convolution's median (N, targets, …), ``bounds`` the quantile heads'
    raw (N, 2·targets, …): the bounds are the median ∓ a softplus, so they never cross.
    """
    down, up = bounds.chunk(2, 1)
    return torch.cat([pred, pred - functional.softplus(down), pred + functional.softplus(up)], 1)


def drive(pred: torch.Tensor, chains: int) -> torch.Tensor:
    """Per row of a (N·chains, 3·targets, …) head-major prediction, the quantile driving it.

    Rows are chain-minor (row r is chain r mod ``chains``), as the sampler flattens its states.
    """
    m, c = pred.shape[:2]
    per = pred.reshape(m, CHAINS, c // CHAINS, *pred.shape[2:])
    which = torch.tensor([DRIVERS[r % chains] for r in range(m)], device=pred.device)
    return per[torch.arange(m, device=pred.device), which]


def quantile_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, alpha: float
) -> torch.Tensor:
    """The median's squared error plus the bounds' pinball losses at α/2 and 1 − α/2.

    On the objective (v or ε), per voxel, as FluoGen trains its uncertainty heads.
    """
    n_targets = target.shape[1]
    median, lower, upper = pred.split(n_targets, 1)
    diff = target - median
    per = diff**2 + _pinball(alpha / 2, target - lower) + _pinball(1 - alpha / 2, target - upper)
    return _masked_mean(per, mask)
