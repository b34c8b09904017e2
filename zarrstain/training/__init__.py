"""Training: paired patch sampling from OME-Zarr stores, augmentation and the training loop.

The names load on first use (torch), so light modules of this package (the pix2pix options
the CLI reads, :mod:`.gan_options`) import without them.
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name not in _LAZY:  # submodules load through the import system
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
