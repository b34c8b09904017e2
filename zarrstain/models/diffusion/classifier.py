"""A noise-conditioned, local classifier of fluorescence images, and classifier guidance.

Classifier guidance (Dhariwal & Nichol 2021, openai's guided-diffusion) steers a diffusion
sampler towards a class k by adding s·Σ·∇ log p(k | x_t) to the posterior mean, where the
classifier sees the noisy sample x_t at step t. Here the classifier is **local**: residual
blocks with per-voxel channel norms and no downsampling predict per-voxel class logits, and
log p(k | x_t) is the mean of the per-voxel log-probabilities over the whole field. Its
gradient at a voxel then depends only on voxels within twice the classifier's receptive radius
R_c, so a sampling pass with a halo of max(R_denoiser, 2·R_c) is still exact when tiled: the
per-voxel terms near a block's edge are wrong, but they reach only voxels within R_c of
themselves, inside the halo. The gradient is taken of the voxels' *sum* of log-probabilities
(the mean times the field's voxel count), so the scale s means the same for a 256² crop and a
whole 2048² field.

``zarrstain train --model classifier2d --target Membrane --class-map plate.classes.csv``
trains one on the target channels of a class-labelled plate (cross-entropy of every voxel's
logits against its scene's class, at a uniformly drawn noise step of the diffusion model's
schedule); ``predict`` with it writes per-class probabilities of clean images.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from zarrstain.errors import ParameterError, option
from zarrstain.models.architecture import Architecture, BlockContext, Geometry, Head
from zarrstain.models.cache import ModelHandle, placed_module
from zarrstain.models.diffusion.schedules import schedule_of
from zarrstain.models.model import Model
from zarrstain.models.nets.denoiser import ResBlock, _conv, _norm, timestep_embedding

__all__ = ["ClassifierArchitecture", "NoisyClassifier", "check_guidance", "guidance_gradient"]


class NoisyClassifier(nn.Module):
    """Per-voxel class logits of a noisy image at diffusion step t (no downsampling: local)."""

    def __init__(
        self,
        ndim: int = 2,
        in_channels: int = 1,
        classes: int = 2,
        width: int = 16,
        blocks: int = 3,
    ) -> None:
        super().__init__()
        conv = _conv(ndim)
        self.width = width
        emb = 4 * width
        self.time = nn.Sequential(nn.Linear(width, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.stem = conv(in_channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            [ResBlock(ndim, width, width, emb, "pixel") for _ in range(blocks)]
        )
        self.norm_out = _norm("pixel", width)
        self.conv_out = conv(width, classes, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.width).to(self.stem.weight.dtype))
        h = self.stem(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.conv_out(functional.silu(self.norm_out(h)))


class ClassifierArchitecture(Architecture):
    """``classifier`` (``classifier2d`` / ``classifier3d``): reads target channels, writes
    per-class probabilities; guides diffusion samplers. Radius 1 + 2·blocks, local."""

    name = "classifier"
    aliases = {"classifier2d": {"ndim": 2}, "classifier3d": {"ndim": 3}}  # noqa: RUF012
    loss_name = "cross-entropy (noisy images)"
    conditional = "required"

    def build(self, **kwargs: Any) -> nn.Module:
        return NoisyClassifier(
            ndim=int(kwargs.get("ndim", 2)),
            in_channels=int(kwargs.get("in_channels", 1)),
            classes=len(kwargs["class_names"]),
            width=int(kwargs.get("width", 16)),
            blocks=int(kwargs.get("blocks", 3)),
        )

    def channels(self, kwargs: dict[str, Any], n_inputs: int, n_outputs: int) -> dict[str, Any]:
        names = kwargs.get("class_names") or []
        if len(names) < 2:
            raise ParameterError(
                "a classifier needs at least two classes; give a class map "
                + option("classes=", "--class-map")
            )
        defaults = {"ndim": 2, "width": 16, "blocks": 3, "schedule": "linear",
                    "timesteps": 1000, "beta_start": 1e-4, "beta_end": 2e-2}  # fmt: skip
        return {**defaults, "in_channels": n_inputs, **kwargs, "class_names": list(names)}

    def geometry(self, kwargs: dict[str, Any]) -> Geometry:
        ndim = int(kwargs.get("ndim", 2))
        return Geometry(ndim, 1, ((1 + 2 * int(kwargs.get("blocks", 3)),) * ndim,))

    def heads(self, kwargs: dict[str, Any]) -> tuple[Head, ...]:
        return (Head("probability", dtype="float32"),)

    def run(self, module: nn.Module, x: torch.Tensor, context: BlockContext) -> torch.Tensor:
        """Class probabilities of clean images (step 0)."""
        t = torch.zeros(len(x), dtype=torch.long, device=x.device)
        return torch.softmax(module(x, t), dim=1)

    def train_kwargs(self, config: Any) -> dict[str, Any]:
        return dict(config.model_kwargs or {})

    def training_step(
        self, kwargs: dict[str, Any], module: nn.Module, batch: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """Cross-entropy of every voxel against its patch's class, on noised targets."""
        if len(batch) < 4:
            raise ParameterError(
                "training a classifier needs each scene's class; give "
                + option("classes=", "--class-map")
            )
        _, y, _, classes = batch[:4]
        schedule = schedule_of(kwargs)
        n = len(y)
        t = torch.randint(0, schedule.steps, (n,), device=y.device)
        ab = schedule.alpha_bar.to(y.device, torch.float32)[t].view(n, *(1,) * (y.dim() - 1))
        x_t = ab.sqrt() * y + (1 - ab).sqrt() * torch.randn_like(y)
        logits = module(x_t, t)
        labels = classes.view(n, *(1,) * (y.dim() - 2)).expand(n, *y.shape[2:])
        return functional.cross_entropy(logits, labels)


def check_guidance(classifier: Any, kwargs: Mapping[str, Any], label: str | None) -> None:
    """Refuse a classifier that cannot guide this diffusion model towards ``label``."""
    if not isinstance(classifier, Model) or classifier.architecture != "classifier":
        raise ParameterError(
            f"the guidance model must be a classifier (zarrstain train --model classifier2d), "
            f"not {getattr(classifier, 'architecture', type(classifier).__name__)!r}"
        )
    if classifier.in_channels != int(kwargs.get("out_channels", 1)):
        raise ParameterError(
            f"classifier {classifier.name} reads {classifier.in_channels} channel(s); the "
            f"diffusion model samples {kwargs.get('out_channels')}"
        )
    if classifier.spatial_dims != int(kwargs.get("ndim", 2)):
        raise ParameterError(
            f"classifier {classifier.name} is {classifier.spatial_dims}D; the diffusion model "
            f"is {kwargs.get('ndim')}D"
        )
    names = classifier.kwargs["class_names"]
    if label is None or label not in names:
        raise ParameterError(
            f"classifier guidance steers towards a class; give one of {', '.join(names)} "
            f"({option('class_label=', '--class / --class-map')}), not {label!r}"
        )


def guidance_gradient(
    options: Mapping[str, Any], x_t: torch.Tensor, t: int, context: BlockContext
) -> torch.Tensor:
    """∇ of the voxels' summed log p(k | x_t) for (N, targets, …) states (see the module)."""
    handle = options["guidance"]  # a model, or in a block the handle of one
    handle = handle if isinstance(handle, ModelHandle) else ModelHandle(handle)
    classifier, module = handle.get(), placed_module(handle, x_t.device)
    k = classifier.kwargs["class_names"].index(options["guidance_target"])
    with torch.inference_mode(False), torch.enable_grad():
        x = x_t.detach().clone().requires_grad_(True)
        steps = torch.full((len(x),), t, dtype=torch.long, device=x.device)
        logp = torch.log_softmax(module(x, steps).float(), dim=1)[:, k]
        (grad,) = torch.autograd.grad(logp.sum(), x)
    return grad.detach()
