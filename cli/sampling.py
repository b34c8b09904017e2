"""Flags of diffusion models: sampler settings for ``predict``, classes for ``train``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

__all__ = ["class_training_options", "sampling_options", "sampling_settings"]

_CLASS = [
    click.option(
        "--class-map",
        "classes",
        default=None,
        type=click.Path(exists=True, dir_okay=False),
        help="Each scene's class: a CSV/TSV table well,class (or scene,class) or a JSON object.",
    ),
    click.option(
        "--class-key", default=None, help="Attribute of the field's or well's group holding it."
    ),
]

_SAMPLING = [
    click.option(
        "--sampler",
        default=None,
        type=click.Choice(["ddim", "ddpm"]),
        help="Diffusion sampler [the model's: ddim].",
    ),
    click.option("--steps", type=int, default=None, help="Sampling steps [the model's: 50]."),
    click.option("--eta", type=float, default=None, help="DDIM's noise (0: deterministic) [0]."),
    click.option("--samples", type=int, default=None, help="Samples per field: mean and std [1]."),
    click.option(
        "--keep-samples",
        is_flag=True,
        default=None,
        help="Also write each sample ('<label> sample k').",
    ),
    *_CLASS,
    click.option(
        "--class", "class_label", default=None, help="One class for every scene (overrides)."
    ),
    click.option(
        "--cfg-scale", type=float, default=None, help="Classifier-free guidance weight [0]."
    ),
    click.option("--guidance-model", "guidance", default=None, help="Noisy-image classifier."),
    click.option("--guidance-scale", type=float, default=None, help="Classifier guidance [0]."),
    click.option(
        "--guidance-class", default=None, help="Class guidance steers towards [the scene's]."
    ),
    click.option(
        "--scratch-every", type=int, default=None, help="Steps between stored states [5]."
    ),
]

_TRAINING = [
    *_CLASS,
    click.option(
        "--class-dropout",
        type=float,
        default=None,
        help="Share of patches trained without their class (a null class, for --cfg-scale).",
    ),
    click.option(
        "--ema", type=float, default=None, help="Weight average decay [diffusion: 0.999]."
    ),
    click.option("--backbone", default=None, help="--model control: the frozen backbone."),
    click.option(
        "--embed-backbone",
        is_flag=True,
        default=None,
        help="--model control: store the backbone's weights in the package too.",
    ),
    click.option(
        "--unconditional",
        is_flag=True,
        default=None,
        help="Pretrain a diffusion backbone on the targets alone (no --input).",
    ),
    # pix2pix (--model pix2pix): zarrstain.training.adversarial
    click.option("--generator", default=None, help="--model pix2pix: the generator [fnet3d]."),
    click.option(
        "--gan-loss",
        default=None,
        type=click.Choice(["bce", "lsgan"]),
        help="--model pix2pix: adversarial loss [bce].",
    ),
    click.option("--gan-weight", type=float, default=None, help="Its weight [1]."),
    click.option(
        "--reconstruction-loss",
        default=None,
        type=click.Choice(["mse", "l1"]),
        help="--model pix2pix: loss to the target [mse].",
    ),
    click.option("--reconstruction-weight", type=float, default=None, help="Its weight [1000]."),
    click.option(
        "--discriminator-layers", type=int, default=None, help="PatchGAN stride-2 layers [4]."
    ),
    click.option("--discriminator-width", type=int, default=None, help="PatchGAN width [64]."),
    click.option("--discriminator-lr", type=float, default=None, help="Its Adam lr [2e-4]."),
]


def _apply(options: list[Callable]) -> Callable:
    def decorate(f: Callable) -> Callable:
        for opt in reversed(options):
            f = opt(f)
        return f

    return decorate


#: decorators adding the flags
sampling_options = _apply(_SAMPLING)
class_training_options = _apply(_TRAINING)


def sampling_settings(flags: dict[str, Any]) -> dict[str, Any]:
    """The sampler flags as :class:`~zarrstain.options.PredictOptions` fields.

    ``--class LABEL`` is every scene's class, so it replaces ``--class-map``.
    """
    out = {k: v for k, v in flags.items() if k != "class_label"}
    if flags.get("class_label") is not None:
        out["classes"] = flags["class_label"]
    if not out.get("keep_samples"):
        out["keep_samples"] = None
    return out
