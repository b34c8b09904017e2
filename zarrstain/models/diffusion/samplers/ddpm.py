"""DDPM's ancestral step (Ho et al. 2020): the posterior mean, plus its variance's noise; with
classifier guidance, guided-diffusion's shifted mean μ + s·Σ·∇ log p(class | x_t)."""

from __future__ import annotations

import math

import torch

from zarrstain.models.diffusion.samplers.base import Step

__all__ = ["step"]


def step(s: Step) -> torch.Tensor:
    """The next state (x_prev) of an ancestral DDPM step."""
    mean = s.schedule.posterior_mean(s.x0, s.state, s.t, s.prev)
    if s.grad is not None:
        mean = (
            mean + s.options["guidance_scale"] * s.schedule.posterior_variance(s.t, s.prev) * s.grad
        )
    if s.noise is None:
        return mean
    return mean + math.sqrt(s.schedule.posterior_variance(s.t, s.prev)) * s.noise
