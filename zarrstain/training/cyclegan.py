"""CycleGAN (MMV_Im2Im's unpaired framework): learn input → target from scenes never paired.

``train(..., TrainConfig(model="cyclegan", generator="fnet2d", target_scenes=[...]))``
draws input patches from the scenes outside ``target_scenes`` and target patches from those
scenes, independently: the two sets need not show the same cells, nor be registered. Two
generators (G: input → target, the model the package holds and ``predict`` runs; F: target →
input) and two PatchGAN critics (D_t judges targets, D_i inputs; unconditional, each sees one
domain) train together, per step as MMV_Im2Im's ``cyclegan`` framework and Zhu et al.:

- generators: ``gan(D_t(G(a)), real) + gan(D_i(F(b)), real)``
  ``+ cycle_weight · (|F(G(a)) − a|₁ + |G(F(b)) − b|₁)``
  ``+ identity_weight · (|G(b) − b|₁ + |F(a) − a|₁)`` (the identity terms when inputs and
  targets count the same channels), one Adam over both;
- critics: ``½ (gan(D(real), real) + gan(D(fake), fake))`` each, the fakes replayed from a
  pool of ``pool_size`` earlier ones (half the time an older fake replaces the new one), one
  Adam over both.

MMV_Im2Im's defaults: least-squares GAN loss ×1, cycle L1 ×10, identity L1 ×2, a pool of 50,
4-layer critics of width 64. The second generator, the critics, their optimizer and the pools
are in the training state, so ``resume=True`` continues exactly; the pool's random choices come
from a generator seeded by (seed, step).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from zarrstain.models import create_model
from zarrstain.models.architecture import Architecture, BlockContext
from zarrstain.training.adversarial import GanSettings, PatchDiscriminator, gan_loss
from zarrstain.training.recipe import clip

__all__ = ["CycleGan", "FakePool"]


class FakePool:
    """The last ``size`` generated patches; a query returns, per patch, either it or (half the
    time, once full) a stored older one, which it replaces (Shrivastava et al.)."""

    def __init__(self, size: int) -> None:
        self.size, self.items = size, []

    def query(self, fakes: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if self.size == 0:
            return fakes
        out = []
        for fake in fakes.detach():
            if len(self.items) < self.size:
                self.items.append(fake.cpu().clone())
                out.append(fake)
            elif rng.random() < 0.5:
                k = int(rng.integers(len(self.items)))
                out.append(self.items[k].to(fake.device))
                self.items[k] = fake.cpu().clone()
            else:
                out.append(fake)
        return torch.stack(out)


class CycleGan:
    """The second generator, the two critics and their updates; the pix2pix ``Adversary``'s
    interface (``step``, ``optimizer``, ``label``, ``state_dict``), so the training loop runs
    either."""

    kind = "cyclegan"

    def __init__(
        self,
        settings: GanSettings,
        spec: Architecture,
        kwargs: dict[str, Any],
        labels: tuple[list[str], list[str]],
        patch: tuple[int, ...],
        device: torch.device | str,
        weights: tuple[float, float, int],
        seed: int,
    ) -> None:
        inputs, targets = labels
        self.settings, self.seed = settings, seed
        self.cycle_weight, self.identity_weight, pool = weights
        backward = create_model(spec.name, input_labels=targets, output_labels=inputs,
                                normalization="center", **kwargs)  # fmt: skip
        self.backward = backward.module.to(device)  # F: target → input
        dims = len(patch)
        self.critic_t = PatchDiscriminator(dims, len(targets), tuple(patch), settings.width,
                                           settings.layers).to(device)  # fmt: skip
        self.critic_i = PatchDiscriminator(dims, len(inputs), tuple(patch), settings.width,
                                           settings.layers).to(device)  # fmt: skip
        self.optimizer = torch.optim.Adam(
            itertools.chain(self.critic_t.parameters(), self.critic_i.parameters()),
            lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay,
        )  # fmt: skip
        self.pools = (FakePool(pool), FakePool(pool))
        self.same_channels = len(inputs) == len(targets)
        self.spec = spec

    def generator_parameters(self) -> list[torch.nn.Parameter]:
        """F's parameters: they train with G's, on G's optimizer."""
        return list(self.backward.parameters())

    def _run(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.spec.run(module, x, BlockContext.whole(x))

    def step(
        self,
        spec: Architecture,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        batch: tuple[torch.Tensor, ...],
        clip_grad_norm: float | None = None,
        step: int = 0,
    ) -> dict[str, float]:
        """One generator update (G and F), then one critic update; the losses of both."""
        a, b = batch[0], batch[1]  # inputs and targets, from unpaired scenes
        s = self.settings
        self.backward.train()
        critics = (self.critic_t, self.critic_i)
        for critic in critics:
            critic.requires_grad_(False)
        optimizer.zero_grad(set_to_none=True)
        fake_b, fake_a = self._run(module, a), self._run(self.backward, b)
        adversarial = gan_loss(s.loss, self.critic_t(fake_b), True) + gan_loss(
            s.loss, self.critic_i(fake_a), True
        )
        cycle = functional.l1_loss(self._run(self.backward, fake_b), a) + functional.l1_loss(
            self._run(module, fake_a), b
        )
        identity = torch.zeros((), device=a.device)
        if self.same_channels and self.identity_weight:
            identity = functional.l1_loss(self._run(module, b), b) + functional.l1_loss(
                self._run(self.backward, a), a
            )
        loss = s.weight * adversarial + self.cycle_weight * cycle + self.identity_weight * identity
        loss.backward()
        clip([*module.parameters(), *self.backward.parameters()], clip_grad_norm)
        optimizer.step()
        for critic in critics:
            critic.requires_grad_(True)
        self.optimizer.zero_grad(set_to_none=True)
        rng = np.random.default_rng([self.seed, step, 7])
        replay_b = self.pools[0].query(fake_b, rng)
        replay_a = self.pools[1].query(fake_a, rng)
        d_loss = 0.5 * (
            gan_loss(s.loss, self.critic_t(b), True)
            + gan_loss(s.loss, self.critic_t(replay_b.detach()), False)
        ) + 0.5 * (
            gan_loss(s.loss, self.critic_i(a), True)
            + gan_loss(s.loss, self.critic_i(replay_a.detach()), False)
        )
        d_loss.backward()
        clip([p for c in critics for p in c.parameters()], clip_grad_norm)
        self.optimizer.step()
        return {
            "loss": float(loss.detach()),
            "d_loss": float(d_loss.detach()),
            "adversarial": float(adversarial.detach()),
            "cycle": float(cycle.detach()),
            "identity": float(identity.detach()),
        }

    def label(self) -> str:
        """Names the loss in provenance."""
        return (
            f"cyclegan: {self.settings.loss.upper()} ×{self.settings.weight:g} + cycle L1 "
            f"×{self.cycle_weight:g} + identity L1 ×{self.identity_weight:g}"
        )

    def state_dict(self) -> dict[str, Any]:
        """F, the critics, their optimizer and the pools, for the training state."""

        def cpu(m: torch.nn.Module) -> dict[str, torch.Tensor]:
            return {k: v.cpu() for k, v in m.state_dict().items()}

        return {
            "kind": self.kind,
            "backward": cpu(self.backward),
            "critic_t": cpu(self.critic_t),
            "critic_i": cpu(self.critic_i),
            "optimizer": self.optimizer.state_dict(),
            "pools": [list(p.items) for p in self.pools],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        self.backward.load_state_dict(state["backward"])
        self.critic_t.load_state_dict(state["critic_t"])
        self.critic_i.load_state_dict(state["critic_i"])
        self.optimizer.load_state_dict(state["optimizer"])
        for pool, items in zip(self.pools, state["pools"], strict=True):
            pool.items = list(items)
