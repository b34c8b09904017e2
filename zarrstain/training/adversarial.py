"""pix2pix (MMV_Im2Im's adversarial training): a PatchGAN critic beside any generator.

``train(..., TrainConfig(model="pix2pix", generator="fnet2d"))`` trains the generator (any
registered architecture that maps the inputs to one value per target) against a conditional
PatchGAN discriminator that sees (input, target) or (input, prediction) pairs and scores each
patch as real or generated. Per step, as MMV_Im2Im's ``pix2pix_basic`` loss and Isola et al.:

- discriminator: ``½ (gan(D(x, y), real) + gan(D(x, G(x)), fake))``, its own Adam;
- generator: ``gan_weight · gan(D(x, G(x)), real) + reconstruction_weight · rec(G(x), y)``.

``gan`` is BCE on logits (MMV_Im2Im's default) or least squares (LSGAN); ``rec`` MSE (MMV_Im2Im's
label-free recipe, weight 1000) or L1 (pix2pix's, weight 100). The discriminator only trains:
model packages hold the generator alone, so prediction runs the generator's architecture as
any other model of it (same tiling, same locality); the discriminator and its optimizer are in
the training state, so ``resume=True`` continues exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from zarrstain.errors import ParameterError, option
from zarrstain.models.architecture import Architecture, BlockContext
from zarrstain.training.gan_options import GAN_LOSSES, RECONSTRUCTION_LOSSES
from zarrstain.training.recipe import clip

__all__ = ["GAN_LOSSES", "RECONSTRUCTION_LOSSES", "Adversary", "GanSettings", "PatchDiscriminator"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GanSettings:
    """The adversarial part of a pix2pix run (``TrainConfig.gan``; its defaults are there)."""

    loss: str
    weight: float
    reconstruction: str
    reconstruction_weight: float
    layers: int
    width: int
    lr: float
    betas: tuple[float, float]
    weight_decay: float = 0.0  # the generator's (TrainConfig.weight_decay), as MMV_Im2Im's

    def label(self) -> str:
        """Names the loss in provenance: ``"pix2pix: BCE ×1 + MSE ×1000"``."""
        return (
            f"pix2pix: {self.loss.upper()} ×{self.weight:g} + "
            f"{self.reconstruction.upper()} ×{self.reconstruction_weight:g}"
        )


def _axis_layer(size: int, halve: bool) -> tuple[int, int, int, int]:
    """(kernel, stride, padding, size after) of one axis: 4/2/1 halves, 4/1/1 takes one off.

    An axis too short for that (a shallow z stack) gets a size-keeping 3/1/1 instead, so the
    critic works on anisotropic patches (MMV_Im2Im's 3D critics assume deep stacks).
    """
    if halve and size >= 8:
        return 4, 2, 1, size // 2
    if not halve and size >= 4:
        return 4, 1, 1, size - 1
    return 3, 1, 1, size


class PatchDiscriminator(nn.Module):
    """pix2pix's N-layer PatchGAN for 2D or 3D patches: one real/fake logit per patch region.

    ``layers`` stride-2 convolutions (width, 2×, 4×, 8× capped), instance norm and leaky ReLU
    (slope 0.2), one stride-1 convolution, then a one-channel convolution of logits.

    Parameters
    ----------
    spatial_dims
        2 or 3.
    in_channels
        Input plus target channels (the critic is conditional: it sees both).
    patch
        The training patch's spatial size: axes too short to halve are not halved.
    width, layers
        Channels of the first convolution, and the number of stride-2 convolutions.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        patch: tuple[int, ...],
        width: int = 64,
        layers: int = 4,
    ) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        norm = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
        sizes = list(patch)
        stack: list[nn.Module] = []
        channels = in_channels
        for i in range(layers + 1):  # layers halving convolutions, then one of stride 1
            halve = i < layers
            geometry = [_axis_layer(s, halve) for s in sizes]
            sizes = [g[3] for g in geometry]
            out = width * min(2**i, 8)
            stack.append(conv(channels, out, *(tuple(g[j] for g in geometry) for j in range(3))))
            if i > 0:
                stack.append(norm(out))
            stack.append(nn.LeakyReLU(0.2, inplace=True))
            channels = out
        geometry = [_axis_layer(s, False) for s in sizes]
        stack.append(conv(channels, 1, *(tuple(g[j] for g in geometry) for j in range(3))))
        self.net = nn.Sequential(*stack)
        for m in self.modules():  # pix2pix's initialisation: N(0, 0.02)
            if isinstance(m, nn.Conv2d | nn.Conv3d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def gan_loss(kind: str, logits: torch.Tensor, real: bool) -> torch.Tensor:
    """BCE on logits, or least squares (LSGAN), against the label ``real`` (1) or fake (0)."""
    target = torch.full_like(logits, 1.0 if real else 0.0)
    if kind == "lsgan":
        return functional.mse_loss(logits, target)
    return functional.binary_cross_entropy_with_logits(logits, target)


def check_generator(spec: Architecture, kwargs: dict[str, Any], model: str) -> None:
    """Refuse generators pix2pix cannot train: it needs one value per target from one forward."""
    head = spec.output_head(kwargs)
    own_step = type(spec).training_step is not Architecture.training_step
    if head.kind != "value" or spec.stochastic or own_step or spec.geometry(kwargs).passes != 1:
        raise ParameterError(
            f"pix2pix trains a generator that maps the inputs to one value per target in one "
            f"forward; {model!r} ({spec.name}, head {head.kind!r}) is not one; choose "
            f"{option('generator=', '--generator')} fnet2d, fnet3d or a plain architecture"
        )


class Adversary:
    """The discriminator, its optimizer and the two updates of one pix2pix step."""

    #: what trained beside the generator (recorded in the training state, checked on resume)
    kind = "pix2pix"

    def __init__(
        self,
        settings: GanSettings,
        spatial_dims: int,
        in_channels: int,
        patch: tuple[int, ...],
        device: torch.device | str,
    ) -> None:
        self.settings = settings
        self.discriminator = PatchDiscriminator(
            spatial_dims, in_channels, tuple(patch), settings.width, settings.layers
        ).to(device)
        self.optimizer = torch.optim.Adam(
            self.discriminator.parameters(),
            lr=settings.lr,
            betas=settings.betas,
            weight_decay=settings.weight_decay,
        )

    def _reconstruction(self, fake: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.settings.reconstruction == "l1":
            return functional.l1_loss(fake, y)
        return functional.mse_loss(fake, y)

    def step(
        self,
        spec: Architecture,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        batch: tuple[torch.Tensor, ...],
        clip_grad_norm: float | None = None,
        step: int = 0,
    ) -> dict[str, float]:
        """One discriminator update, then one generator update; the losses of both
        (``step``: the run's, unused: pix2pix draws no random numbers of its own).

        ``"loss"`` is the generator's total (what training logs and checkpoints), beside
        ``"d_loss"``, ``"adversarial"`` and ``"reconstruction"``.
        """
        x, y, mask = batch[:3]
        if not bool(mask.all()):
            raise ParameterError(
                "pix2pix's discriminator sees every target of a patch; train on scenes that "
                "hold every target (a scene lacks one)"
            )
        s = self.settings
        critic = self.discriminator
        fake = spec.run(module, x, BlockContext.whole(x))
        critic.requires_grad_(True)
        self.optimizer.zero_grad(set_to_none=True)
        d_loss = 0.5 * (
            gan_loss(s.loss, critic(torch.cat([x, y], 1)), True)
            + gan_loss(s.loss, critic(torch.cat([x, fake.detach()], 1)), False)
        )
        d_loss.backward()
        clip(critic.parameters(), clip_grad_norm)
        self.optimizer.step()
        critic.requires_grad_(False)  # the generator's update leaves the critic's weights be
        optimizer.zero_grad(set_to_none=True)
        adversarial = gan_loss(s.loss, critic(torch.cat([x, fake], 1)), True)
        reconstruction = self._reconstruction(fake, y)
        loss = s.weight * adversarial + s.reconstruction_weight * reconstruction
        loss.backward()
        clip(module.parameters(), clip_grad_norm)
        optimizer.step()
        return {
            "loss": float(loss.detach()),
            "d_loss": float(d_loss.detach()),
            "adversarial": float(adversarial.detach()),
            "reconstruction": float(reconstruction.detach()),
        }

    def label(self) -> str:
        """Names the loss in provenance: ``"pix2pix: BCE ×1 + MSE ×1000"``."""
        return self.settings.label()

    def state_dict(self) -> dict[str, Any]:
        """The discriminator's weights and its optimizer's state, for the training state."""
        return {
            "kind": self.kind,
            "discriminator": {k: v.cpu() for k, v in self.discriminator.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
