"""DDIM's step (Song et al. 2021; η = 0: deterministic); with classifier guidance, its score
form: ε − sqrt(1 − ᾱ_t)·s·∇ log p(class | x_t), and x0 recomputed from it."""

from __future__ import annotations

import math

import torch

from zarrstain.models.diffusion.samplers.base import Step

__all__ = ["step"]


def step(s: Step) -> torch.Tensor:
    """The next state (x_prev) of a DDIM step with the run's η."""
    x0, eps = s.x0, s.eps
    if s.grad is not None:
        alpha_bar = s.schedule._ab(s.t)
        eps = eps - math.sqrt(1 - alpha_bar) * s.options["guidance_scale"] * s.grad
        x0 = (s.state - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)
    return s.schedule.ddim_step(x0, eps, s.t, s.prev, s.options["eta"], s.noise)
