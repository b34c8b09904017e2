"""Diffusion noise schedules, objectives and sampler steps (DDPM, DDIM), in float64 torch.

Forward process: ``x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε`` with ``ᾱ_t = Π_{s≤t} (1 − β_s)``.
A denoiser predicts ``ε`` (DDPM's objective), ``v = sqrt(ᾱ)·ε − sqrt(1 − ᾱ)·x_0`` (Salimans &
Ho 2022) or ``x_0``; :meth:`Schedule.to_x0_eps` converts any of them to both.

- Schedules: ``"linear"`` β from ``beta_start`` to ``beta_end`` (Ho et al.; Cross-Zamirski
  et al. use 1e-6 → 1e-2 over T = 2000), ``"cosine"`` (Nichol & Dhariwal 2021, s = 0.008, β
  clipped at 0.999); ``zero_snr=True`` rescales ᾱ so that the last step is pure noise (Lin
  et al. 2024), which v-prediction needs to train the terminal step.
- Steps: DDPM's ancestral step samples the posterior q(x_{t'} | x_t, x_0) with its variance
  β̃ ("fixed small"); DDIM's step is deterministic at η = 0 and equals DDPM's posterior
  variance at η = 1 when t' = t − 1. Both take the noise as an argument, so the engine supplies
  position-keyed noise (:mod:`zarrstain.noise`) and tiled sampling draws what the whole field
  would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from zarrstain.errors import ParameterError

__all__ = ["OBJECTIVES", "SCHEDULES", "Schedule", "make_schedule", "schedule_of", "timesteps"]

SCHEDULES = ("linear", "cosine")
OBJECTIVES = ("epsilon", "v", "x0")


def make_schedule(
    kind: str = "linear",
    steps: int = 1000,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 2e-2,
    zero_snr: bool = False,
) -> Schedule:
    """The β of ``steps`` diffusion steps.

    Raises
    ------
    ParameterError
        An unknown kind, fewer than 2 steps, or βs outside (0, 1).
    """
    if kind not in SCHEDULES:
        raise ParameterError(f"schedule {kind!r} is not one of {', '.join(SCHEDULES)}")
    if steps < 2:
        raise ParameterError(f"a diffusion schedule needs at least 2 steps, not {steps}")
    if kind == "linear":
        if not 0 < beta_start <= beta_end < 1:
            raise ParameterError(
                f"linear schedule betas {beta_start} → {beta_end} must rise within (0, 1)"
            )
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    else:
        s = 0.008

        def alpha_bar(t: float) -> float:
            return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2

        betas = torch.tensor(
            [
                min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999)
                for i in range(steps)
            ],
            dtype=torch.float64,
        )
    if zero_snr:
        betas = _zero_terminal_snr(betas)
    return Schedule(betas)


def _zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(ᾱ) so that it ends at 0 and starts where it did (Lin et al.)."""
    root = torch.cumprod(1 - betas, 0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    alpha_bar = root**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


@dataclass(frozen=True, eq=False)
class Schedule:
    """β per step (float64) and what follows from it."""

    betas: torch.Tensor

    @property
    def steps(self) -> int:
        return len(self.betas)

    @property
    def alpha_bar(self) -> torch.Tensor:
        """ᾱ_t, the signal fraction left after step t (0-based)."""
        return torch.cumprod(1 - self.betas, 0)

    def _ab(self, t: int) -> float:
        return float(self.alpha_bar[t]) if t >= 0 else 1.0  # before the first step: the data

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        """x_t from x_0 and the noise."""
        ab = self._ab(t)
        return math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps

    def target(self, objective: str, x0: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        """What a denoiser with this objective is trained to predict at step t."""
        _objective(objective)
        ab = self._ab(t)
        if objective == "epsilon":
            return eps
        if objective == "x0":
            return x0
        return math.sqrt(ab) * eps - math.sqrt(1 - ab) * x0

    def to_x0_eps(
        self, objective: str, prediction: torch.Tensor, x_t: torch.Tensor, t: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_0, ε) implied by a denoiser's prediction at step t."""
        _objective(objective)
        ab = self._ab(t)
        a, b = math.sqrt(ab), math.sqrt(1 - ab)
        if objective == "epsilon":
            return (x_t - b * prediction) / a, prediction
        if objective == "x0":
            return prediction, (x_t - a * prediction) / b
        return a * x_t - b * prediction, b * x_t + a * prediction

    def ddpm_step(
        self,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: int,
        noise: torch.Tensor | None,
        t_prev: int | None = None,
    ) -> torch.Tensor:
        """x_{t'} ~ q(x_{t'} | x_t, x_0): the posterior mean plus sqrt(β̃)·noise.

        ``t_prev`` (default t − 1) is the next step of a respaced chain (fewer steps than the
        schedule has: β between the two is 1 − ᾱ_t / ᾱ_t', as diffusers' DDPM computes it);
        −1 ends at the data, without noise.
        """
        prev = t - 1 if t_prev is None else t_prev
        mean = self.posterior_mean(x0, x_t, t, prev)
        if prev < 0 or noise is None:
            return mean
        return mean + math.sqrt(self.posterior_variance(t, prev)) * noise

    def posterior_mean(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: int, prev: int
    ) -> torch.Tensor:
        """The mean of q(x_prev | x_t, x_0)."""
        ab, ab_prev = self._ab(t), self._ab(prev)
        beta = 1 - ab / ab_prev
        return (math.sqrt(ab_prev) * beta / (1 - ab)) * x0 + (
            math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)
        ) * x_t

    def posterior_variance(self, t: int, prev: int) -> float:
        """β̃ = (1 − ᾱ_prev) / (1 − ᾱ_t) · (1 − ᾱ_t / ᾱ_prev): Σ of classifier guidance."""
        ab, ab_prev = self._ab(t), self._ab(prev)
        return (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)

    def ddim_step(
        self,
        x0: torch.Tensor,
        eps: torch.Tensor,
        t: int,
        t_prev: int,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_{t_prev} by DDIM (Song et al. 2021): deterministic at η = 0."""
        ab, ab_prev = self._ab(t), self._ab(t_prev)
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        direction = math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
        out = math.sqrt(ab_prev) * x0 + direction
        if sigma > 0 and noise is not None:
            out = out + sigma * noise
        return out


def timesteps(total: int, steps: int) -> list[int]:
    """``steps`` evenly spaced steps of ``total``, from the last (pure noise) down ("trailing"
    spacing, which with a zero-SNR schedule starts sampling from noise alone)."""
    if not 1 <= steps <= total:
        raise ParameterError(f"sampling steps must be in 1..{total}, not {steps}")
    return [round(total - i * total / steps) - 1 for i in range(steps)]


def _objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ParameterError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")


@lru_cache(maxsize=16)
def _schedule(kind: str, steps: int, start: float, end: float, zero_snr: bool) -> Schedule:
    return make_schedule(kind, steps, beta_start=start, beta_end=end, zero_snr=zero_snr)


def schedule_of(kwargs: Mapping[str, Any]) -> Schedule:
    """The noise schedule a diffusion model card describes."""
    return _schedule(
        str(kwargs.get("schedule", "linear")),
        int(kwargs.get("timesteps", 1000)),
        float(kwargs.get("beta_start", 1e-4)),
        float(kwargs.get("beta_end", 2e-2)),
        bool(kwargs.get("zero_snr", False)),
    )
