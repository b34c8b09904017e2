"""The diffusion samplers, one module each: a sampler turns one denoiser prediction into the
next state. Each module's ``step`` takes the same arguments (:class:`Step`); ``STEPS`` finds
it by the name a run option gives (``sampler="ddim"``)."""

from __future__ import annotations

from zarrstain.models.diffusion.samplers import ddim, ddpm
from zarrstain.models.diffusion.samplers.base import Step

__all__ = ["STEPS", "Step"]

#: sampler name → its step (the names are :data:`zarrstain.models.diffusion.options.SAMPLERS`)
STEPS = {"ddim": ddim.step, "ddpm": ddpm.step}
