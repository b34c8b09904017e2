"""pix2pix's training settings (``zarrstain train --model pix2pix``), declared without torch.

An entry point of ``zarrstain.options`` under the name ``pix2pix``: the CLI makes their flags;
:class:`~zarrstain.training.TrainConfig` holds and checks them
(:mod:`zarrstain.training.adversarial`: MMV_Im2Im's label-free defaults).
"""

from __future__ import annotations

from zarrstain.models.schema import FamilyOptions, Option

__all__ = ["GAN_LOSSES", "OPTIONS", "RECONSTRUCTION_LOSSES"]

GAN_LOSSES = ("bce", "lsgan")
RECONSTRUCTION_LOSSES = ("mse", "l1")

OPTIONS = FamilyOptions(
    train=(
        Option("generator", help="The generator [fnet3d]."),
        Option("gan_loss", choices=GAN_LOSSES, help="Adversarial loss [bce]."),
        Option("gan_weight", "float", minimum=0, help="Its weight [1]."),
        Option(
            "reconstruction_loss", choices=RECONSTRUCTION_LOSSES, help="Loss to the target [mse]."
        ),
        Option("reconstruction_weight", "float", minimum=0, help="Its weight [1000]."),
        Option("discriminator_layers", "int", minimum=1, help="PatchGAN stride-2 layers [4]."),
        Option("discriminator_width", "int", minimum=1, help="PatchGAN width [64]."),
        Option("discriminator_lr", "float", minimum=0, help="Its Adam lr [2e-4]."),
        Option("discriminator_betas", "floats", minimum=0, help="Its Adam betas [0.5,0.999]."),
    )
)
