"""pix2pix's training settings (``zarrstain train --model pix2pix``), declared without torch.

An entry point of ``zarrstain.options`` under the name ``pix2pix``: the CLI makes their flags;
:class:`~zarrstain.training.TrainConfig` holds and checks them
(:mod:`zarrstain.training.adversarial`: MMV_Im2Im's label-free defaults).
"""

from __future__ import annotations

from zarrstain.models.schema import FamilyOptions, Option

__all__ = ["CYCLEGAN_OPTIONS", "GAN_LOSSES", "OPTIONS", "PAPER_RECIPE", "RECONSTRUCTION_LOSSES"]

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

#: ``TrainConfig.paper(model="pix2pix")``: MMV_Im2Im's label-free 3D pix2pix, as its
#: ``paper_configs/labelfree_3d_pix2pix_train.yaml`` sets it: an fnet generator of depth 4 and
#: 32 channels; Adam lr 2e-4, β (0.5, 0.999) and weight decay 5e-4 for generator and critic;
#: ``ExponentialLR(0.999)`` stepped per epoch; BCE + 1000 × MSE; a 4-layer PatchGAN of width 64
#: (instance norm); per device 2 images × 4 crops of 32×256×256 (batch 8), 10,000 epochs,
#: normalized around the center. An epoch is ``ceil(scenes × 4 / 8)`` steps, as MMV_Im2Im's
#: data loader counts one (:func:`zarrstain.training.recipe.in_steps`).
PAPER_RECIPE = {
    "generator": "fnet3d",
    "depth": 4,
    "mult_chan": 32,
    "lr": 2e-4,
    "betas": (0.5, 0.999),
    "weight_decay": 5e-4,
    "discriminator_lr": 2e-4,
    "discriminator_betas": (0.5, 0.999),
    "schedule": "step",
    "lr_gamma": 0.999,
    "decay_every": "epoch",
    "batch_size": 8,
    "patches_per_scene": 4,
    "patch": [32, 256, 256],
    "epochs": 10_000,
    "gan_loss": "bce",
    "gan_weight": 1.0,
    "reconstruction_loss": "mse",
    "reconstruction_weight": 1000.0,
    "discriminator_layers": 4,
    "discriminator_width": 64,
    "normalization": "center",
}

#: CycleGAN's settings (``zarrstain train --model cyclegan``, MMV_Im2Im's unpaired framework):
#: pix2pix's generator and critic settings, and its own losses' weights and fake pool
CYCLEGAN_OPTIONS = FamilyOptions(
    train=(
        *(o for o in OPTIONS.train if o.name not in ("reconstruction_loss",
                                                     "reconstruction_weight")),
        Option("cycle_weight", "float", minimum=0, help="Cycle-consistency L1 weight [10]."),
        Option("identity_weight", "float", minimum=0, help="Identity L1 weight [2]."),
        Option("pool_size", "int", minimum=0, help="Generated patches the critics replay [50]."),
    )
)  # fmt: skip
