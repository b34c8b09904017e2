"""Training: paired patch sampling from OME-Zarr stores, augmentation and the training loop.

The names load on first use (torch), so light modules of this package (the pix2pix options
the CLI reads, :mod:`.gan_options`) import without them.
"""

from __future__ import annotations

from zarrstain._lazy import attach

#: public name → the module defining it
_LAZY = {
    "PatchSampler": ".sampler",
    "Region": ".sampler",
    "TrainConfig": ".loop",
    "TrainResult": ".loop",
    "build_config": ".loop",
    "split_regions": ".sampler",
    "train": ".loop",
}

__all__ = [*_LAZY]


__getattr__, __dir__ = attach(__name__, _LAZY)
