"""Models: the fnet U-Net, a registry of architectures, and loaders."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelError
from .fnet_compat import is_fnet_checkpoint, load_fnet_checkpoint
from .model import Model
from .registry import ARCHITECTURES, build
from .unet import FnetUNet, fnet_receptive_radius

__all__ = [
    "ARCHITECTURES",
    "FnetUNet",
    "Model",
    "build",
    "fnet_receptive_radius",
    "load_fnet_checkpoint",
    "load_model",
]


def load_model(path: str | os.PathLike, *, output_label: str | None = None) -> Model:
    """Load a model from disk.

    Parameters
    ----------
    path
        A pytorch_fnet checkpoint (``model.p``, or the folder holding it, in either of
        pytorch_fnet's formats).
    output_label
        Label of the predicted channel, for checkpoints that carry none.

    Raises
    ------
    ModelError
        Nothing loadable at ``path``.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"no model at {path!s}; pass a pytorch_fnet model.p or its folder")
    if is_fnet_checkpoint(p):
        return load_fnet_checkpoint(p, output_label=output_label)
    raise ModelError(
        f"{path!s} is not a model zarrstain can load: expected a pytorch_fnet model.p or a "
        "folder holding one"
    )
