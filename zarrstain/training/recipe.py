"""The optimizer and learning-rate schedule of a training run (``TrainConfig``'s recipe).

Optimizers: ``"adam"`` (pytorch_fnet's), ``"adamw"`` (decoupled weight decay, VisCy's) and
``"sgd"`` (with momentum). Schedules multiply the base learning rate by a factor that is a
pure function of the step (:func:`lr_factor`), so a resumed run continues on exactly the
curve it left, with nothing to store:

- ``"constant"``;
- ``"step"``: × ``gamma`` every ``decay_every`` steps (torch's ``StepLR``);
- ``"exponential"``: × ``gamma`` per ``decay_every`` steps, smoothly (torch's
  ``ExponentialLR`` when ``decay_every`` is one step; MMV_Im2Im decays by 0.98 or 0.999 per
  epoch);
- ``"cosine"``: from the learning rate down to ``min_lr`` over the run, half a cosine
  (torch's ``CosineAnnealingLR``).

Runs described in epochs, as Lightning-based tools describe them (MMV_Im2Im, VisCy), are
turned into steps once the training scenes are known (:func:`in_steps`): an epoch is
``ceil(training scenes × patches_per_scene / batch_size)`` steps, MMV_Im2Im's definition (each
image of its data loader gives ``num_samples`` crops). ``epochs`` then replaces ``steps`` and
``decay_every="epoch"`` decays once per epoch: ``schedule="step"`` with ``decay_every="epoch"``
is Lightning's ``ExponentialLR`` stepped at every epoch's end.

Each may start with ``warmup_steps`` of linear warm-up from ``lr / warmup_steps`` (VisCy and
most transformer recipes warm up). Gradient clipping (``clip_grad_norm``) bounds the global
L2 norm of the gradients before each step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

from zarrstain.errors import ParameterError

__all__ = [
    "EPOCH",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "autocast",
    "check_recipe",
    "clip",
    "grad_scaler",
    "in_steps",
    "lr_factor",
    "make_optimizer",
    "recipe_label",
    "schedule_factor",
    "set_lr",
    "steps_per_epoch",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "step", "exponential", "cosine")
#: ``decay_every`` of a schedule that changes once per epoch
EPOCH = "epoch"
#: training precision: float32, or mixed precision (autocast; float16 with a gradient scaler)
PRECISIONS = ("float32", "bfloat16", "float16")


def lr_factor(
    step: int,
    *,
    schedule: str = "constant",
    steps: int = 1,
    warmup_steps: int = 0,
    decay_every: int = 1000,
    gamma: float = 0.1,
    min_factor: float = 0.0,
) -> float:
    """The factor of the base learning rate at optimizer step ``step`` (1 is the first).

    Parameters
    ----------
    step
        The step about to be taken, counting from 1.
    schedule
        One of :data:`SCHEDULES`.
    steps
        Steps of the whole run (the cosine's length).
    warmup_steps
        Linear warm-up: step ``k ≤ warmup_steps`` uses ``k / warmup_steps``.
    decay_every, gamma
        ``"step"``: × gamma every ``decay_every`` steps; ``"exponential"``: × gamma per
        ``decay_every`` steps, continuously.
    min_factor
        ``"cosine"``: the factor it ends at (``min_lr / lr``).
    """
    if warmup_steps and step <= warmup_steps:
        return step / warmup_steps
    k = step - warmup_steps - 1  # steps taken since the warm-up (0 at the first)
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return gamma ** (k // decay_every)
    if schedule == "exponential":
        return gamma ** (k / decay_every)
    if schedule == "cosine":
        span = max(1, steps - warmup_steps - 1)
        return min_factor + (1.0 - min_factor) * 0.5 * (
            1.0 + math.cos(math.pi * min(k, span) / span)
        )
    raise ValueError(f"schedule {schedule!r} is not one of {SCHEDULES}")


def make_optimizer(params: Iterable[Any], config: Any, lr: float | None = None) -> Any:
    """The optimizer ``config`` names over ``params`` (``lr``: instead of ``config.lr``)."""
    import torch

    lr = config.lr if lr is None else lr
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=lr, betas=tuple(config.betas), weight_decay=config.weight_decay)


def set_lr(optimizer: Any, lr: float) -> None:
    """Every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def schedule_factor(config: Any, step: int) -> float:
    """:func:`lr_factor` of a :class:`~zarrstain.training.TrainConfig` at ``step``."""
    return lr_factor(
        step,
        schedule=config.schedule,
        steps=config.steps,
        warmup_steps=config.warmup_steps,
        decay_every=config.decay_every,
        gamma=config.lr_gamma,
        min_factor=config.min_lr / config.lr,
    )


def clip(params: Iterable[Any], max_norm: float | None) -> float | None:
    """Clip the gradients' global L2 norm to ``max_norm``; the norm before (None: no clip)."""
    if max_norm is None:
        return None
    import torch

    grads = [p for p in params if p.grad is not None]
    return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))


def recipe_label(config: Any) -> str:
    """``"AdamW (weight decay 0.01), cosine schedule, 100 warm-up steps"``, for the card."""
    names = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}
    text = names[config.optimizer]
    if config.weight_decay:
        text += f" (weight decay {config.weight_decay:g})"
    if config.schedule != "constant":
        text += f", {config.schedule} schedule"
    if config.warmup_steps:
        text += f", {config.warmup_steps} warm-up steps"
    if config.clip_grad_norm is not None:
        text += f", gradients clipped to norm {config.clip_grad_norm:g}"
    if getattr(config, "precision", "float32") != "float32":
        text += f", {config.precision} mixed precision"
    return text


def steps_per_epoch(config: Any, scenes: int) -> int:
    """Steps of one epoch over ``scenes`` training scenes: each gives ``patches_per_scene``."""
    return max(1, math.ceil(scenes * config.patches_per_scene / config.batch_size))


def in_steps(config: Any, scenes: int) -> Any:
    """``config`` with its epochs counted in steps for ``scenes`` training scenes.

    ``epochs`` becomes ``steps`` (and is cleared), ``decay_every="epoch"`` a number of steps;
    a config counted in steps already is returned as it is.
    """
    if config.epochs is None and config.decay_every != EPOCH:
        return config
    epoch = steps_per_epoch(config, scenes)
    changes: dict[str, Any] = {}
    if config.epochs is not None:
        changes.update(steps=config.epochs * epoch, epochs=None)
    if config.decay_every == EPOCH:
        changes["decay_every"] = epoch
    return dataclasses.replace(config, **changes)


def check_recipe(config: Any, flag: Callable[[str], str]) -> None:
    """Refuse an optimizer, schedule or clipping ``config`` cannot use (``flag``: a setting's
    name as the user wrote it)."""
    for name, allowed in (
        ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("precision", PRECISIONS)
    ):  # fmt: skip
        if getattr(config, name) not in allowed:
            raise ParameterError(
                f"{flag(name)} {getattr(config, name)!r} is not one of {', '.join(allowed)}"
            )
    for name in ("weight_decay", "min_lr"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ParameterError(f"{flag(name)} must be a number ≥ 0, not {value!r}")
    _whole("warmup_steps", config.warmup_steps, flag, 0)
    _whole("patches_per_scene", config.patches_per_scene, flag, 1)
    if config.epochs is not None:
        _whole("epochs", config.epochs, flag, 1)
    if config.decay_every != EPOCH:
        _whole("decay_every", config.decay_every, flag, 1, f' or "{EPOCH}"')
    if not isinstance(config.lr_gamma, int | float) or not 0 < config.lr_gamma <= 1:
        raise ParameterError(f"{flag('lr_gamma')} must be in (0, 1], not {config.lr_gamma!r}")
    if config.schedule == "cosine" and config.min_lr >= config.lr:
        raise ParameterError(
            f"{flag('min_lr')} {config.min_lr} must be below lr ({config.lr}): the cosine "
            "schedule falls from lr to it"
        )
    norm = config.clip_grad_norm
    if norm is not None and (isinstance(norm, bool) or not isinstance(norm, int | float)
                             or not norm > 0):  # fmt: skip
        raise ParameterError(f"{flag('clip_grad_norm')} must be a positive number, not {norm!r}")
    if config.momentum != 0.9 and config.optimizer != "sgd":
        raise ParameterError(
            f"{flag('momentum')} is a setting of SGD; add "
            f"{flag('optimizer')} sgd, or drop it (Adam's are its betas)"
        )


def _whole(name: str, value: Any, flag: Callable[[str], str], least: int, alt: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ParameterError(f"{flag(name)} must be a whole number ≥ {least}{alt}, not {value!r}")


def autocast(device: Any, precision: str) -> Any:
    """The forward's context for ``precision``: torch's autocast for mixed precision."""
    import contextlib

    import torch

    if precision == "float32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float16
    return torch.autocast(torch.device(device).type, dtype=dtype)


def grad_scaler(device: Any, precision: str) -> Any:
    """A gradient scaler, active for float16 only (bfloat16 has float32's exponent range)."""
    import torch

    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "float16")
