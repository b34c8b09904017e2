"""A VisCy network (fine-tuned or not) written back in VisCy's checkpoint layout.

A Lightning-style checkpoint: ``state_dict`` with VisCy's ``model.*`` keys, and
``hyper_parameters`` with ``architecture`` and ``model_config`` (VisCy's own, with its
backbone's name, when the network came from a VisCy checkpoint; else the configuration read
from the weights), beside a card (``<name>.json``: channel labels, normalization) that
:func:`zarrstain.load_model` reads with it. zarrstain's reader loads it back exactly (tested);
VisCy's ``VSUNet.load_from_checkpoint`` reads the same keys (not run here: VisCy does not
install beside this project's torch).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from zarrstain.errors import ModelError, ParameterError
from zarrstain.models.model import Model

__all__ = ["export_viscy_checkpoint"]


def export_viscy_checkpoint(
    model: Model, path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write ``model`` (a ``viscy`` model) as ``path`` (``.ckpt``) and its card beside it.

    Raises
    ------
    ModelError
        A model of another family.
    ParameterError
        ``path`` exists and ``overwrite`` is False, or is not a ``.ckpt`` file name.
    """
    out = Path(path)
    if model.architecture != "viscy":
        raise ModelError(
            f"{model.name} is a {model.architecture!r} model; only VisCy networks export to "
            "VisCy's checkpoint layout (use --format torchscript or bioimageio)"
        )
    if out.suffix != ".ckpt":
        raise ParameterError(f"a VisCy checkpoint is a .ckpt file, not {out.name}")
    card = out.with_suffix(".json")
    if not overwrite and (out.exists() or card.exists()):
        raise ParameterError(f"{out} exists; choose another --out or pass --overwrite")
    kwargs = model.kwargs
    state = {k: v.detach().cpu() for k, v in model.module.state_dict().items()}
    checkpoint = {
        "state_dict": state,
        "hyper_parameters": {
            "architecture": kwargs["network"],
            "model_config": kwargs.get("viscy_model_config") or kwargs["config"],
        },
        "epoch": 0,
        "global_step": 0,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    torch.save(checkpoint, tmp)
    tmp.replace(out)
    card.write_text(json.dumps({
        "name": model.name,
        "input_labels": list(model.input_labels),
        "output_labels": list(model.output_labels),
        "normalization": model.normalization,
        "architecture": kwargs["network"],
        "model_config": {k: v for k, v in (kwargs.get("viscy_model_config") or {}).items()
                         if k in ("head_pool", "head_conv_pool")},
    }, indent=2) + "\n")  # fmt: skip
    return out
