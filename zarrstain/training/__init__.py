"""Training: paired patch sampling from OME-Zarr stores, augmentation and the training loop."""

from .loop import TrainConfig, TrainResult, build_config, train
from .sampler import PatchSampler, Region, split_regions

__all__ = [
    "PatchSampler",
    "Region",
    "TrainConfig",
    "TrainResult",
    "build_config",
    "split_regions",
    "train",
]
