"""What one sampling step works from, whichever the sampler."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from zarrstain.models.diffusion.schedules import Schedule

__all__ = ["Step"]


@dataclass(frozen=True)
class Step:
    """One step from diffusion step ``t`` to ``prev`` (-1: the clean sample).

    Attributes
    ----------
    schedule
        The noise schedule.
    options
        The run options (``eta``, ``guidance_scale``, ...).
    state
        x_t, (N·K, targets, …).
    x0, eps
        The denoiser's clean-sample and noise predictions for ``state``.
    t, prev
        This step and the next (-1 after the last).
    grad
        ∇ log p(class | x_t) of classifier guidance, or None.
    noise
        Position-keyed normal noise for a stochastic step, or None.
    """

    schedule: Schedule
    options: Mapping[str, Any]
    state: torch.Tensor
    x0: torch.Tensor
    eps: torch.Tensor
    t: int
    prev: int
    grad: torch.Tensor | None
    noise: torch.Tensor | None
